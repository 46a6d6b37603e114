// The whole MFuser-CLIP forward on the CPU reference backend against the PyTorch oracle (tiny config, fresh
// random weights and images each run): every module the oracle records that our graph also names, then the
// crop logits and their argmax.
#include "graph/model/mfuser.h"

#include "graph/executor.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

// The oracle records some sequences sequence-first ([L, B, C], nn.MultiheadAttention's layout); ours are
// batch-first.
std::vector<int> golden_layout(const test::GoldenModel& g, const std::string& name, const Shape& ours) {
  auto shape = g.golden->entry(name).shape;
  if (int(shape.size()) == ours.ndim() + 1) shape.erase(shape.begin());  // stacked per-call outputs
  if (shape.size() == 3 && ours.ndim() == 3 && shape[0] == ours[1] && shape[1] == ours[0] && shape[0] != shape[1])
    return {1, 0, 2};
  return {};
}

TEST(MfuserParity, TinyModelMatchesOracle) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  SCOPED_TRACE("golden seed " + g.seed);
  model::MfuserModel model(g.weights_path(), g.config);
  const test::ErrorStats text = test::compare_to_golden(g, "text_encoder", model.text_features());
  std::printf("  %-56s %s\n", "text_encoder", test::describe(text).c_str());
  EXPECT_LE(text.rel_l2, 1e-5);

  const Tensor image = g.inputs->view("img");
  auto graph = model.build(image.dim(0), image.dim(2), image.dim(3));
  std::vector<std::string> compared;
  for (const SafetensorsEntry& e : g.golden->entries()) {
    const graph::ValueId id = graph->find(e.name);
    if (id != graph::kNoValue && graph->value(id).kind == graph::ValueKind::intermediate) {
      graph->mark_output(id);
      compared.push_back(e.name);
    }
  }
  graph::Executor executor(*graph, Device::cpu());
  executor.set_input("image", image);
  executor.run();
  // Chained from the image, deep modules carry the fp32 rounding of everything before them: measured against
  // the float64 oracle, the last adapters of the tiny model reach ~1e-5 (the oracle's own fp32 run is off by
  // up to 4e-5 there). Each module on its own, fed the oracle's inputs, is held to 1e-5 by the per-part
  // parity tests (backbone/text/head); here the chain gets 5e-5 and the logits 1e-5.
  for (const std::string& name : compared)
    test::expect_matches_golden(g, executor, name, name, name == "logits" ? 1e-5 : 5e-5,
                                golden_layout(g, name, graph->value(graph->at(name)).shape));
  EXPECT_GE(compared.size(), 60u) << "too few modules compared: names drifted from the oracle's?";

  // The segmentation itself: argmax over classes must agree everywhere.
  const Tensor ours = executor.get("logits");
  const Tensor ref = g.golden->view("logits");
  const int64_t batch = ref.dim(0), classes = ref.dim(1), pixels = ref.dim(2) * ref.dim(3);
  int64_t disagree = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 0; p < pixels; ++p) {
      int64_t best_ours = 0, best_ref = 0;
      for (int64_t c = 1; c < classes; ++c) {
        const int64_t i = (b * classes + c) * pixels + p;
        if (ours.data<float>()[i] > ours.data<float>()[(b * classes + best_ours) * pixels + p]) best_ours = c;
        if (ref.data<float>()[i] > ref.data<float>()[(b * classes + best_ref) * pixels + p]) best_ref = c;
      }
      disagree += best_ours != best_ref;
    }
  std::printf("  argmax disagreement: %lld of %lld pixels\n", static_cast<long long>(disagree),
              static_cast<long long>(batch * pixels));
  EXPECT_EQ(disagree, 0);
}

TEST(MfuserParity, BrokenCheckpointListsEveryProblem) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  SafetensorsReader reader(g.weights_path());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const SafetensorsEntry& e : reader.entries()) {
    if (e.name == "backbone.adapter.1.A_log") continue;                      // missing
    if (e.name == "decode_head.query_embed.weight") {
      tensors.emplace_back(e.name, Tensor::zeros({3, 3}, DType::f32));        // wrong shape
      continue;
    }
    tensors.emplace_back(e.name, reader.view(e.name));
  }
  tensors.emplace_back("backbone.extra.weight", Tensor::zeros({2}, DType::f32));  // unexpected
  const std::string broken = g.dir + "/broken.safetensors";
  write_safetensors(broken, tensors);
  try {
    model::MfuserModel model(broken, g.config);
    FAIL() << "a broken checkpoint loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* needle : {"broken.safetensors", "missing tensor 'backbone.adapter.1.A_log'",
                               "tensor 'decode_head.query_embed.weight' has shape [3, 3]",
                               "unexpected tensor 'backbone.extra.weight'"})
      EXPECT_NE(msg.find(needle), std::string::npos) << "missing '" << needle << "' in:\n" << msg;
  }
}

}  // namespace
}  // namespace mfuser
