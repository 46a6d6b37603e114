// The model configuration of MFuser-CLIP, read from the JSON written next to the weights
// (tools/configs/*.json, or the converter's config.json). Sizes that only the checkpoint knows (FFN widths)
// are read from tensor shapes by the builders instead.
#pragma once

#include <string>
#include <vector>

#include "loaders/config.h"

namespace mfuser::model {

// Training-mode regularization (optional JSON keys, the official values by default; see Builder::dropout):
// vision.drop_path_rate (CLIP blocks' DropPath, linspace(0, rate, layers) per block), adapter.proj_drop
// (every MVFuser's output), context_decoder.dropout (the MTEnhancer's).
struct VisionConfig {
  int width = 1024, layers = 24, heads = 16, output_dim = 768;
  std::vector<int> out_indices = {7, 11, 15, 23};
  double drop_path_rate = 0.1;
};

struct TextConfig {
  int context_length = 5, n_contexts = 5, width = 768, layers = 12, heads = 12, embed_dim = 768;
  int vocab_size = 49408;
};

struct ContextDecoderConfig {
  int width = 256, heads = 4, layers = 1;
  double dropout = 0.1;
};

struct AdapterConfig {
  int d_state = 16, d_conv = 3;
  double proj_drop = 0.1;
};

struct DecodeHeadConfig {
  int feat_channels = 256, num_heads = 8, num_levels = 3, num_points = 4;
  int encoder_layers = 6, decoder_layers = 9, gn_groups = 32, pos_feats = 128;
  // FFN widths: the checkpoint's shapes decide (see Builder::stored_dim); these serve synthesized weights.
  int encoder_ffn = 2048, decoder_ffn = 2048;
  // Training loss point sampling (optional JSON keys; the official values by default).
  int train_num_points = 12544;
  double oversample_ratio = 3.0, importance_sample_ratio = 0.75;
};

struct ModelConfig {
  std::string description;
  int image_size = 512, patch_size = 16, num_classes = 19;
  std::vector<std::string> class_names;
  VisionConfig vision;
  AdapterConfig adapter;
  TextConfig text;
  ContextDecoderConfig context_decoder;
  DecodeHeadConfig decode_head;
  float tau = 0.07f;
  int slide_crop = 512, slide_stride = 341;

  int grid() const { return image_size / patch_size; }  // patches per side: 32 at 512
  int tokens() const { return grid() * grid() + 1; }    // + the class token: 1025

  static ModelConfig load(const std::string& path);
  static ModelConfig from(const Config& config);
};

}  // namespace mfuser::model
