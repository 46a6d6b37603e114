// Parity of the decode head with the PyTorch oracle (tiny config), fed with the golden backbone features and
// text embeddings: every recorded decode_head.* module, all predictions, and the crop logits.
#include <chrono>
#include <cstdio>

#include "graph/model/modules.h"
#include "kernels/layout/layout.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

using graph::Executor;
using graph::Graph;
using model::Builder;
using model::ValueId;

constexpr double kTol = 1e-5;
const std::vector<int> kSeqFirst = {1, 0, 2};  // golden [L, B, C] -> ours [B, L, C]

TEST(HeadParity, DecodeHead) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  const auto& cfg = g.config;
  const auto& dh = cfg.decode_head;
  model::WeightStore weights(g.weights_path());
  Graph graph;
  Builder b(graph, weights);

  std::array<ValueId, 4> features;
  for (int i = 0; i < 4; ++i) {
    const std::string name = str_cat("backbone.features.", i);
    features[size_t(i)] = graph.input(name, g.golden->view(name).shape());
  }
  const ValueId text = graph.input("text_embeddings", g.golden->view("text_embeddings").shape());
  const model::HeadOutputs head = model::build_decode_head(b, cfg, features, text);
  const Tensor img = g.inputs->view("img");
  graph.mark_output(b.resize_bilinear(head.semantic, img.dim(2), img.dim(3), "logits"));

  // (our value, golden name, golden permutation)
  std::vector<std::tuple<std::string, std::string, std::vector<int>>> compared;
  const std::string p = "decode_head.pixel_decoder";
  for (int i = 0; i < dh.num_levels; ++i) {
    compared.push_back({str_cat(p, ".input_convs.", i), str_cat(p, ".input_convs.", i), {}});
    compared.push_back({str_cat(p, ".memory.", i), str_cat(p, ".memory.", i), {}});
  }
  compared.push_back({p + ".text_proj", p + ".text_proj", {}});
  for (int j = 0; j < dh.encoder_layers; ++j)
    compared.push_back({str_cat(p, ".encoder.layers.", j), str_cat(p, ".encoder.layers.", j), kSeqFirst});
  for (const char* name : {".lateral_convs.0", ".output_convs.0", ".mask_feature"})
    compared.push_back({p + name, p + name, {}});
  compared.push_back({"decode_head.text_proj", "decode_head.text_proj", {}});
  for (int j = 0; j < dh.decoder_layers; ++j) {
    const std::string l = str_cat("decode_head.transformer_decoder.layers.", j);
    compared.push_back({l, l, kSeqFirst});
  }
  for (int j = 0; j <= dh.decoder_layers; ++j) {
    compared.push_back({str_cat("decode_head.cls_pred.", j), str_cat("decode_head.cls_pred.", j), {}});
    compared.push_back({str_cat("decode_head.mask_pred.", j), str_cat("decode_head.mask_pred.", j), {}});
  }
  compared.push_back({"logits", "logits", {}});
  for (const auto& [ours, golden, perm] : compared) graph.mark_output(graph.at(ours));
  graph.mark_output(graph.at(p + ".encoder"));
  EXPECT_EQ(head.cls_preds.size(), size_t(dh.decoder_layers + 1));
  EXPECT_EQ(head.mask_preds.size(), size_t(dh.decoder_layers + 1));

  Executor ex(graph, Device::cpu());
  for (int i = 0; i < 4; ++i) {
    const std::string name = str_cat("backbone.features.", i);
    ex.set_input(name, g.golden->view(name));
  }
  ex.set_input("text_embeddings", g.golden->view("text_embeddings"));
  const auto t0 = std::chrono::steady_clock::now();
  ex.run();
  std::printf("decode head: %zu nodes, %.1f ms\n", graph.nodes().size(),
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  for (const auto& [ours, golden, perm] : compared) test::expect_matches_golden(g, ex, ours, golden, kTol, perm);

  // The encoder's golden output stacks post_norm of every layer ([layers, L, B, C]); the head uses the last.
  const Tensor stacked = g.golden->view(p + ".encoder");
  const int64_t layers = stacked.dim(0);
  const Tensor last = stacked.slice_rows(layers - 1, layers).reshape({stacked.dim(1), stacked.dim(2), stacked.dim(3)});
  Tensor ref = Tensor::empty({last.dim(1), last.dim(0), last.dim(2)}, DType::f32);
  kernels::permute(last, ref, kSeqFirst);
  const test::ErrorStats e = test::compare(ex.get(p + ".encoder"), ref);
  std::printf("  %-56s %s\n", (p + ".encoder[-1]").c_str(), test::describe(e).c_str());
  EXPECT_LE(e.rel_l2, kTol) << p << ".encoder, golden seed " << g.seed;
}

}  // namespace
}  // namespace mfuser
