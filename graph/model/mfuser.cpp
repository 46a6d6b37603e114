#include "graph/model/mfuser.h"

#include "graph/executor.h"
#include "graph/model/modules.h"

namespace mfuser::model {

MfuserModel::MfuserModel(const std::string& weights_path, ModelConfig config)
    : MfuserModel(WeightStore(weights_path), std::move(config)) {}

MfuserModel::MfuserModel(WeightStore weights, ModelConfig config) : weights_(std::move(weights)), config_(std::move(config)) {
  Graph text_graph;
  Builder tb(text_graph, weights_);
  const ValueId ids = text_graph.constant(
      "texts", weights_.get_raw("texts", DType::i64, {config_.num_classes, config_.text.context_length}));
  const ValueId text = build_text_encoder(tb, config_, ids);
  text_graph.mark_output(text);
  // Building one crop graph touches every weight: report all missing/extra/mis-shaped tensors now, at load.
  build_with(1, config_.image_size, config_.image_size, Tensor::zeros({1, config_.num_classes, config_.text.embed_dim}, DType::f32),
             DType::f32);
  weights_.finish();

  graph::Executor executor(text_graph, Device::cpu());
  executor.run();
  text_features_ = executor.get(text_graph.value(text).name).to(Device::cpu());
}

std::unique_ptr<graph::Graph> MfuserModel::build(int64_t batch, int64_t height, int64_t width, DType storage) {
  return build_with(batch, height, width, text_features_, storage);
}

std::unique_ptr<graph::Graph> MfuserModel::build_with(int64_t batch, int64_t height, int64_t width,
                                                      const Tensor& text_features, DType storage) {
  auto g = std::make_unique<Graph>();
  Builder b(*g, weights_, storage);
  const ValueId image = g->input("image", {batch, 3, height, width}, storage);
  const BackboneOutputs backbone = build_backbone(b, config_, image);

  // The text features, one copy per crop (the context decoder refines them per image).
  const int64_t classes = config_.num_classes, dim = config_.text.embed_dim;
  Tensor text = Tensor::empty({batch, classes, dim}, DType::f32);
  for (int64_t i = 0; i < batch; ++i)
    text.slice_rows(i, i + 1).copy_from(text_features);
  const ValueId text_v = b.constant("text_encoder", text);

  const ValueId text_embeddings =
      build_context_decoder(b, config_, text_v, backbone.global_embedding, backbone.visual_embedding);
  const HeadOutputs head = build_decode_head(b, config_, backbone.features, text_embeddings);
  g->mark_output(b.resize_bilinear(head.semantic, height, width, "logits"));
  return g;
}

}  // namespace mfuser::model
