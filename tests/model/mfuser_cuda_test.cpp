// The whole MFuser-CLIP forward on CUDA against the CPU reference on the same weights and image: fp32 within
// 1e-4 relative L2; bf16 within 2e-2 with >= 99.5% of the pixels' classes agreeing (the real config; the tiny
// one: within 3x PyTorch's own bf16 error, no clear winner changed, see below). The tiny config also
// compares every node's output (the first node off names the kernel to look at) and checks that the CUDA
// graph replay reproduces the eager run; the real config runs one 512x512 crop with random weights.
#include <algorithm>
#include <cstdio>
#include <random>

#include "graph/executor.h"
#include "graph/model/mfuser.h"
#include "kernels/cast/cast.h"
#include "loaders/config.h"
#include "tests/common/cuda_test.h"
#include "tests/model/parity.h"

namespace mfuser {
namespace {

Tensor normal_image(int64_t batch, int64_t size) {
  Tensor image = Tensor::empty({batch, 3, size, size}, DType::f32);
  std::mt19937_64 rng(test::seed());
  std::normal_distribution<float> normal;
  for (int64_t i = 0; i < image.numel(); ++i) image.data<float>()[i] = normal(rng);
  return image;
}

// Runs `graph` on `device` `runs` times on `image`; returns the logits of the last run as host f32.
Tensor logits_of(const graph::Graph& graph, Device device, const Tensor& image, int runs = 1) {
  graph::Executor ex(graph, device);
  ex.set_input("image", image);
  for (int r = 0; r < runs; ++r) ex.run();
  return kernels::cast_to(ex.get("logits"), DType::f32).to(Device::cpu());
}

// bf16 logits `low` against the f32 ones `ref` (host f32): no pixel whose f32 winner is clear (its two best
// classes more than twice our largest logit error apart) gets another class, and at least `min_share` of all
// pixels agree. The tiny model's random logits often lie closer together than bf16's error everywhere (over
// 60 golden seeds the CPU's widened bf16 run agreed on 49% to 100% of the pixels, never on a clear winner), so
// only the real model is held to a share.
void expect_bf16_classes_agree(const Tensor& low, const Tensor& ref, const std::string& what, double min_share) {
  const double margin = 2 * test::compare(low, ref).max_abs;
  const test::ArgmaxAgreement agree = test::argmax_agreement(low, ref, margin);
  std::printf("[ errors   ] %s bf16 argmax agreement: %.4f%%, %lld clear winner(s) changed (tie margin %.3g)\n",
              what.c_str(), 100 * agree.share, static_cast<long long>(agree.clear_disagreements), margin);
  EXPECT_EQ(agree.clear_disagreements, 0) << what << " (seed " << test::seed() << ")";
  EXPECT_GE(agree.share, min_share) << what << " (seed " << test::seed() << ")";
}

// fp32 and bf16 on CUDA against the CPU reference's logits. bf16 stores every activation (the residual
// streams too) in bf16, so its error compounds over depth; `bf16_tol` is 2e-2 for the real model.
void expect_cuda_matches_cpu(model::MfuserModel& model, const Tensor& image, const char* what, double bf16_tol,
                             double min_share) {
  const int64_t batch = image.dim(0), size = image.dim(2);
  const Tensor ref = logits_of(*model.build(batch, size, size), Device::cpu(), image);

  auto fp32 = model.build(batch, size, size, DType::f32);
  test::expect_cuda_close(logits_of(*fp32, Device::cuda(), image, 3), ref, std::string(what) + " logits");
  auto bf16 = model.build(batch, size, size, DType::bf16);
  const Tensor low = logits_of(*bf16, Device::cuda(), image, 3);
  const Tensor low_stored = kernels::cast_to(low, DType::bf16);  // compare as bf16 output
  test::expect_cuda_close(low_stored, ref, std::string(what) + " logits", bf16_tol);
  expect_bf16_classes_agree(low, ref, what, min_share);
}

// The bf16 bound of the tiny model's logits: 2e-2, or 3x PyTorch's own error with bf16 storage on them
// (golden.py, mfuser_ref/bf16_storage.py), whichever is larger. The tiny model's random logits are small and
// close together: over 60 golden seeds PyTorch's own bf16 error on them measured 4.5e-3 to 5.7e-2, ours (the
// CPU's widened bf16 run) at most 1.35x that.
double tiny_bf16_bound(const test::GoldenModel& g) {
  const double theirs =
      Config::load(g.dir + "/manifest.json").section("oracle_bf16_rel_error").json().at("logits").get<double>();
  std::printf("[ errors   ] tiny logits: PyTorch's own bf16 error %.3g\n", theirs);
  return std::max(2e-2, 3 * theirs);
}

TEST(MfuserCuda, TinyForwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::MfuserModel model(g.weights_path(), g.config);
  expect_cuda_matches_cpu(model, g.inputs->load("img"), "tiny", tiny_bf16_bound(g), 0.0);
}

// Every node's output, CUDA fp32 vs CPU, in graph order: the first node beyond tolerance is where a kernel
// went wrong (later ones inherit its error).
TEST(MfuserCuda, TinyEveryNodeMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::MfuserModel model(g.weights_path(), g.config);
  const Tensor image = g.inputs->load("img");
  auto graph = model.build(image.dim(0), image.dim(2), image.dim(3));
  for (const graph::Node& node : graph->nodes())
    for (graph::ValueId out : node.outputs) graph->mark_output(out);
  graph::Executor cpu(*graph, Device::cpu()), gpu(*graph, Device::cuda());
  cpu.set_input("image", image);
  gpu.set_input("image", image);
  cpu.run();
  gpu.run();
  int reported = 0;
  for (const graph::Node& node : graph->nodes()) {
    const graph::Value& v = graph->value(node.outputs[0]);
    if (!is_floating(v.dtype)) continue;
    const test::ErrorStats e = test::compare(gpu.get(v.name), cpu.get(v.name));
    if ((e.rel_l2 > 1e-4 || e.nonfinite > 0) && reported++ < 5)
      ADD_FAILURE() << "node '" << node.name << "' (" << node.op << "): " << test::describe(e);
  }
  std::printf("[ nodes    ] %zu nodes compared, %d beyond 1e-4\n", graph->nodes().size(), reported);
}

// The eager run, the captured run and a replay give the same logits (the kernels are deterministic).
TEST(MfuserCuda, GraphReplayEqualsEagerRun) {
  MFUSER_REQUIRE_CUDA();
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::MfuserModel model(g.weights_path(), g.config);
  const Tensor image = g.inputs->load("img");
  auto graph = model.build(image.dim(0), image.dim(2), image.dim(3));
  graph::Executor ex(*graph, Device::cuda());
  ex.set_input("image", image);
  ex.run();
  const Tensor eager = ex.get("logits").to(Device::cpu());
  ex.run();  // captured
  ex.run();  // replayed
  const test::ErrorStats e = test::compare(ex.get("logits"), eager);
  EXPECT_EQ(e.max_abs, 0.0) << test::describe(e);
}

TEST(MfuserCuda, RealSizeCropMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  const std::string config = std::string(std::getenv("MFUSER_SOURCE_DIR")) + "/tools/configs/mfuser_clip_vitl_512.json";
  model::MfuserModel model(model::WeightStore::synthesize(test::seed()), model::ModelConfig::load(config));
  expect_cuda_matches_cpu(model, normal_image(1, model.config().image_size), "ViT-L 512 crop", 2e-2, 0.995);
}

// A bf16 graph runs on the CPU too, as the reference of the CUDA one (graph/executor.h: every node widened to
// f32, its outputs rounded to bf16): the tiny model's logits within the CUDA test's bf16 bound of the f32 ones.
TEST(MfuserStorage, Bf16GraphRunsOnTheCpuWidened) {
  const test::GoldenModel g = test::load_golden_model("tiny");
  model::MfuserModel model(g.weights_path(), g.config);
  const Tensor image = g.inputs->load("img");
  const int64_t batch = image.dim(0), size = image.dim(2);
  const Tensor ref = logits_of(*model.build(batch, size, size), Device::cpu(), image);
  const Tensor low = logits_of(*model.build(batch, size, size, DType::bf16), Device::cpu(), image);
  const test::ErrorStats e = test::compare(low, ref);
  std::printf("[ errors   ] tiny bf16 on the CPU: %s\n", test::describe(e).c_str());
  EXPECT_LE(e.rel_l2, tiny_bf16_bound(g));
  expect_bf16_classes_agree(low, ref, "tiny on the CPU", 0.0);
}

}  // namespace
}  // namespace mfuser
