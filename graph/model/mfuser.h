// MfuserModel: MFuser-CLIP inference from a safetensors checkpoint.
//
// Loading checks every tensor of the checkpoint against what the config implies (all problems reported in
// one error, by name) and runs the text encoder once: the class-name text features do not depend on the
// image, so every crop graph gets them as a constant. `build` then makes the graph for one crop batch shape;
// the caller runs it with a graph::Executor on the device of its choice.
#pragma once

#include <memory>
#include <string>

#include "graph/graph.h"
#include "graph/model/config.h"
#include "graph/model/weights.h"

namespace mfuser::model {

class MfuserModel {
 public:
  MfuserModel(const std::string& weights_path, ModelConfig config);
  MfuserModel(WeightStore weights, ModelConfig config);  // e.g. WeightStore::synthesize(seed)

  // Graph with input "image" [batch, 3, height, width] (CLIP-normalized) and output "logits"
  // [batch, num_classes, height, width]: the crop logits of the official encode_decode. `storage` is the
  // float type of weights and activations: f32 or bf16 (for CUDA; the CPU runs it widened, as a reference: see
  // builder.h and graph/executor.h); the executor casts the input image to it.
  std::unique_ptr<graph::Graph> build(int64_t batch, int64_t height, int64_t width, DType storage = DType::f32);

  const ModelConfig& config() const { return config_; }
  const Tensor& text_features() const { return text_features_; }  // [1, num_classes, embed_dim]
  const WeightStore& weights() const { return weights_; }

 private:
  std::unique_ptr<graph::Graph> build_with(int64_t batch, int64_t height, int64_t width, const Tensor& text_features,
                                           DType storage);

  WeightStore weights_;
  ModelConfig config_;
  Tensor text_features_;
};

}  // namespace mfuser::model
