// The whole MFuser-CLIP forward on the CPU reference backend against the PyTorch oracle (tiny config, fresh
// random weights and images each run): every module the oracle records that our graph also names, then the
// crop logits and their argmax.
#include "graph/executor.h"
#include "graph/model/mfuser.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

TEST(MfuserParity, TinyModelMatchesOracle) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  // Chained from the image, deep modules carry the fp32 rounding of everything before them: measured against
  // the float64 oracle, the last adapters of the tiny model reach ~1e-5 (the oracle's own fp32 run is off by
  // up to 4e-5 there). Each module on its own, fed the oracle's inputs, is held to 1e-5 by the per-part
  // parity tests (backbone/text/head); here the chain gets 5e-5, the logits 1e-5 and every pixel's class
  // must agree.
  test::check_whole_model(g, 5e-5, 1e-5, 1.0);
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

// `mfuser init`'s made-up weights form exactly the oracle's state dict (names, shapes, dtypes) and run.
TEST(MfuserParity, SynthesizedWeightsAreACompleteCheckpoint) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::MfuserModel model(model::WeightStore::synthesize(7), g.config);
  const auto& made = model.weights().synthesized();
  SafetensorsReader official(g.weights_path());
  EXPECT_EQ(made.size(), official.entries().size());
  for (const auto& [name, t] : made) {
    const SafetensorsEntry* e = official.find(name);
    ASSERT_NE(e, nullptr) << "made up a tensor the oracle does not have: " << name;
    EXPECT_EQ(std::string(dtype_name(t.dtype())), e->dtype) << name;
    EXPECT_EQ(t.shape(), Shape(std::span(e->shape))) << name;
  }
  auto graph = model.build(1, g.config.image_size, g.config.image_size);
  graph::Executor executor(*graph, Device::cpu());
  Tensor image = Tensor::empty({1, 3, g.config.image_size, g.config.image_size}, DType::f32);
  test::fill_uniform(image, -2.f, 2.f);
  executor.set_input("image", image);
  executor.run();
  EXPECT_EQ(test::compare(executor.get("logits"), executor.get("logits")).nonfinite, 0);
}

}  // namespace
}  // namespace mfuser
