// One training step of the tiny config against PyTorch autograd (golden.py --train, fresh seed per run): the
// training graph's losses and the gradient of the total loss for every trainable parameter and every module
// output the oracle recorded, with the oracle's recorded point draws fed to the mask losses; in fp32 and with
// bf16 storage.
//
// The golden data uses random mask-loss points only (--importance-sample-ratio 0): choosing points by |logit|
// is discontinuous, so where two candidates tie to ~1e-6 an fp32 run may keep another point than the float64
// oracle; one swapped point moves the gradients upstream of the masks by ~1e-3 (measured), while the losses
// agree to 1e-6. That choice is tested on its own, with ties excluded, in kernels/mask_loss.
#include <algorithm>
#include <cstdio>
#include <set>
#include <string>

#include "graph/executor.h"
#include "graph/model/training.h"
#include "loaders/config.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

// Every trainable parameter of the oracle has a gradient here (or is unused on both sides: zero there). The issue
// asks for 1e-4 relative to the float64 oracle; where PyTorch's own float32 step is not that close (the deepest
// chains: the first adapters, under four frozen layers of both towers; the 0-d `scale` gradients, one sum over
// every activation, carry 4e-5..4e-3 of fp32 rounding in PyTorch itself), the bound is a multiple of PyTorch's own
// error (parity.h, kFp32StepBounds: per model part, as the median over the parts, and per parameter).
TEST(TrainParity, TinyLossesAndGradientsMatchAutograd) {
  const test::GoldenModel g = test::load_golden_model("tiny_train");
  SCOPED_TRACE("golden seed " + g.seed);
  test::expect_step_within_oracle_noise(g, Device::cpu(), DType::f32, test::kFp32StepBounds);
}

// The same step with bf16 storage (weights, activations and gradients; the losses in f32), run on the CPU as the
// CUDA kernels run it (each node widened to f32, its outputs rounded to bf16), against the float64 oracle. The
// issue asks for 3e-2 on every gradient and loss, but the oracle itself, run with bf16 storage (golden.py,
// mfuser_ref/bf16_storage.py), misses that by far: its rounding is amplified by the conditioning of the deeper
// gradients, as fp32's is (about 300x at the adapters), to 0.1 at the FPN, 0.3 at the pixel decoder and O(1)
// at the adapters, and loss_mask reaches 5e-2. Noise, whoever computes it: one bf16 ulp on 0.1% of the input
// pixels moves our adapters' gradients by 0.4 (measured). So the bound is PyTorch's own bf16 error
// (parity.h, expect_step_within_oracle_noise with kBf16StepBounds, which states what ours measured).
TEST(TrainParity, TinyBf16StepWithinPyTorchsOwnBf16Error) {
  const test::GoldenModel g = test::load_golden_model("tiny_train");
  SCOPED_TRACE("golden seed " + g.seed);
  test::expect_step_within_oracle_noise(g, Device::cpu(), DType::bf16, test::kBf16StepBounds);
}

// bf16 storage (run on CUDA by train_cuda_test's TinyStepBf16WithinPyTorchsOwnBf16Error) builds on any machine:
// every parameter and its gradient in bf16, the losses and their total in f32 (computed over f32 copies of the
// logits).
TEST(TrainingGraph, Bf16StorageKeepsEveryGradientInItsParametersDtype) {
  const test::GoldenModel g = test::load_golden_model("tiny_train");
  model::WeightStore weights(g.weights_path());
  const int64_t size = g.config.image_size;
  const model::TrainingGraph t = model::build_training_graph(weights, g.config, 2, size, size, {.storage = DType::bf16});
  const graph::Graph& graph = *t.graph;
  ASSERT_FALSE(t.parameters.empty());
  for (graph::ValueId p : t.parameters) {
    EXPECT_EQ(graph.value(p).dtype, DType::bf16) << graph.value(p).name;
    EXPECT_EQ(graph.value(t.gradients.at(p)).dtype, DType::bf16) << "the gradient of " << graph.value(p).name;
  }
  for (const auto& [name, loss] : t.losses) EXPECT_EQ(graph.value(loss).dtype, DType::f32) << name;
  EXPECT_EQ(graph.value(t.total_loss).dtype, DType::f32);
  EXPECT_EQ(graph.value(graph.at("image")).dtype, DType::bf16);
}

// Dropout where upstream has it in training mode, and nowhere else (docs/TRAINING.md): DropPath on both branches of
// the CLIP visual blocks 1.. (block 0's rate is 0), every backbone adapter's proj_drop, and the MTEnhancer's
// self_attn.proj_drop, cross_attn (an MVFuser) proj_drop, mlp.2 and dropout; none with "dropout": false.
TEST(TrainingGraph, DropoutSitesAreUpstreamsTrainingModeOnes) {
  const test::GoldenModel g = test::load_golden_model("tiny_train");
  const int64_t size = g.config.image_size;
  const auto sites = [&](bool dropout) {
    model::WeightStore weights(g.weights_path());
    const model::TrainingGraph t = model::build_training_graph(weights, g.config, 2, size, size, {.dropout = dropout});
    std::set<std::string> names;
    for (const graph::Node& node : t.graph->nodes())
      if (node.op == "dropout") names.insert(node.name);
    EXPECT_EQ(t.dropout_seed == graph::kNoValue, names.empty());
    return names;
  };
  std::set<std::string> expected;
  for (int i = 0; i < g.config.vision.layers; ++i) {
    const std::string block = str_cat("backbone.transformer.resblocks.", i, ".drop_path.");
    if (i > 0) expected.insert({block + "attn", block + "mlp"});
    expected.insert(str_cat("backbone.adapter.", i, ".proj_drop"));
  }
  for (int i = 0; i < g.config.context_decoder.layers; ++i) {
    const std::string layer = str_cat("context_decoder.decoder.", i, ".");
    expected.insert({layer + "self_attn.proj_drop", layer + "cross_attn.proj_drop", layer + "mlp.2", layer + "dropout"});
  }
  EXPECT_EQ(sites(true), expected);
  EXPECT_TRUE(sites(false).empty());
}

}  // namespace
}  // namespace mfuser
