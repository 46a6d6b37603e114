// Parity of the text branch with the PyTorch oracle (tiny config): the text encoder from the token ids, and
// the context decoder fed with the golden text_encoder output and the golden backbone embeddings.
#include <chrono>
#include <cstdio>

#include "graph/model/modules.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

using graph::Executor;
using graph::Graph;
using model::Builder;
using model::ValueId;

constexpr double kTol = 1e-5;

TEST(TextParity, TextEncoder) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  const auto& cfg = g.config;
  model::WeightStore weights(g.weights_path());
  Graph graph;
  Builder b(graph, weights);
  const ValueId ids = graph.constant(
      "texts", weights.get_raw("texts", DType::i64, {cfg.num_classes, cfg.text.context_length}));
  graph.mark_output(model::build_text_encoder(b, cfg, ids));
  Executor ex(graph, Device::cpu());
  const auto t0 = std::chrono::steady_clock::now();
  ex.run();
  std::printf("text encoder: %zu nodes, %.1f ms\n", graph.nodes().size(),
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  test::expect_matches_golden(g, ex, "text_encoder", "text_encoder", kTol);
}

TEST(TextParity, ContextDecoder) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  const auto& cfg = g.config;
  model::WeightStore weights(g.weights_path());
  Graph graph;
  Builder b(graph, weights);
  const Tensor global = g.golden->view("backbone.global_embedding");
  const Tensor visual = g.golden->view("backbone.visual_embedding");
  const int64_t batch = global.dim(0);

  // The text features once per image, as the model feeds them.
  const Tensor encoded = g.golden->view("text_encoder");
  Tensor text = Tensor::empty({batch, encoded.dim(1), encoded.dim(2)}, DType::f32);
  for (int64_t i = 0; i < batch; ++i) text.slice_rows(i, i + 1).copy_from(encoded);
  const ValueId text_v = graph.constant("text_encoder", text);
  const ValueId global_v = graph.input("backbone.global_embedding", global.shape());
  const ValueId visual_v = graph.input("backbone.visual_embedding", visual.shape());
  model::build_context_decoder(b, cfg, text_v, global_v, visual_v);

  const char* const kCompared[] = {"context_decoder.memory_proj", "context_decoder.text_proj",
                                   "context_decoder.decoder.0.cross_attn", "context_decoder.decoder.0",
                                   "context_decoder.out_proj", "context_decoder", "text_embeddings"};
  for (const char* name : kCompared) graph.mark_output(graph.at(name));
  Executor ex(graph, Device::cpu());
  ex.set_input("backbone.global_embedding", global);
  ex.set_input("backbone.visual_embedding", visual);
  const auto t0 = std::chrono::steady_clock::now();
  ex.run();
  std::printf("context decoder: %zu nodes, %.1f ms\n", graph.nodes().size(),
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  for (const char* name : kCompared) test::expect_matches_golden(g, ex, name, name, kTol);
}

}  // namespace
}  // namespace mfuser
