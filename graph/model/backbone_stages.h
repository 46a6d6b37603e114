// The stages of build_backbone (backbone.cpp), exposed so that parity tests can feed each stage the oracle's
// own inputs. fp32 round-off grows through the fused layers: the oracle's fp32 result itself differs from an
// fp64 run by up to ~4e-5 at the last adapters of the tiny config, so only stage-by-stage comparisons can be
// held to 1e-5.
#pragma once

#include <array>

#include "graph/model/modules.h"

namespace mfuser::model {

// The two token streams, batch-first [B, 1 + gh*gw, width] each (class token first).
struct BackboneStreams {
  ValueId clip_x = kNoValue;
  ValueId dino_x = kNoValue;
};

// image [B, 3, H, W] (CLIP-normalized) -> CLIP tokens after ln_pre, DINOv2 tokens with pos_embed added.
BackboneStreams build_backbone_embed(Builder& b, const ModelConfig& cfg, ValueId image);

// CLIP block `layer`, DINOv2 block `layer`, then the fusion through adapter[layer] and adapter_proj1/2[layer].
BackboneStreams build_backbone_layer(Builder& b, const ModelConfig& cfg, const BackboneStreams& in, int layer);

// FPN on the fused maps of the streams after the out_indices layers (`taps`), and the embeddings from the
// streams after the last layer; gh x gw is the patch grid.
BackboneOutputs build_backbone_outputs(Builder& b, const ModelConfig& cfg, const std::array<BackboneStreams, 4>& taps,
                                       const BackboneStreams& last, int64_t gh, int64_t gw);

}  // namespace mfuser::model
