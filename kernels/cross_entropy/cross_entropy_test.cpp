// cross_entropy: loss and grad_logits against PyTorch's f64 F.cross_entropy / autograd, for both reductions (weighted
// mean of loss_cls, mean over all pixels of the auxiliary score-map loss), class weights, ignore_index 255, huge
// logits, and the real model's sizes.
#include "kernels/cross_entropy/cross_entropy.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

using kernels::CrossEntropyReduction;
constexpr int64_t kIgnore = 255;

struct Case {
  const char* name;
  CrossEntropyReduction reduction;
};
const Case kCases[] = {{"tiny.cls", CrossEntropyReduction::weighted_mean},
                       {"tiny.weighted_ignore", CrossEntropyReduction::weighted_mean},
                       {"tiny.map", CrossEntropyReduction::mean_all},
                       {"tiny.map_weighted", CrossEntropyReduction::mean_all},
                       {"tiny.large_logits", CrossEntropyReduction::weighted_mean},
                       {"real.cls", CrossEntropyReduction::weighted_mean},
                       {"real.map", CrossEntropyReduction::mean_all}};

// Max-abs bound on a gradient, relative to the largest |PyTorch gradient| (that scale is |grad_out| * w / D, about 1e-6
// for the 2 x 512 x 512 map): the f64 result rounded to f32 is off by an ulp at most.
constexpr double kGradMaxAbsRel = 1e-6;
double max_abs_of(const Tensor& ref) { return test::compare(Tensor::zeros(ref.shape(), DType::f32), ref).max_abs; }

class CrossEntropyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("cross_entropy"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  // real.map's logits are 4 * counter_uniform(salt 1), as the generator makes them.
  Tensor logits(const std::string& name) const {
    if (golden_->contains(name + ".x")) return golden_->view(name + ".x");
    Tensor x = test::counter_uniform(Shape{2, 19, 512, 512}, 1);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] *= 4.f;
    return x;
  }
  Tensor weight(const std::string& name) const {
    return golden_->contains(name + ".weight") ? golden_->view(name + ".weight") : Tensor();
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(CrossEntropyTest, LossMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const std::string name = c.name;
    Tensor loss = Tensor::empty(Shape{}, DType::f32);
    test::poison(loss);
    kernels::cpu::cross_entropy(logits(name), golden_->view(name + ".target"), weight(name), kIgnore, c.reduction,
                                loss);
    const double ref = test::value_at(golden_->view(name + ".loss"), 0), got = test::value_at(loss, 0);
    std::printf("%s loss: %.9g vs PyTorch %.9g, rel %.3g\n", c.name, got, ref, std::fabs(got - ref) / std::fabs(ref));
    EXPECT_LE(std::fabs(got - ref), 1e-6 * std::fabs(ref));  // f64 sums: a few f32 ulp of the value
  }
}

TEST_F(CrossEntropyTest, GradLogitsMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.name);
    const std::string name = c.name;
    const Tensor x = logits(name);
    Tensor grad = Tensor::empty(x.shape(), DType::f32);
    test::poison(grad);
    kernels::cpu::cross_entropy_backward(x, golden_->view(name + ".target"), weight(name), kIgnore, c.reduction,
                                         golden_->view(name + ".grad_out"), grad);
    const test::ErrorStats e = test::compare(grad, golden_->view(name + ".grad_x"));
    std::printf("%s grad_x: %s\n", c.name, test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);
    EXPECT_LE(e.max_abs, kGradMaxAbsRel * max_abs_of(golden_->view(name + ".grad_x")));
  }
}

TEST_F(CrossEntropyTest, DispatcherAndIgnoredPositions) {
  SCOPED_TRACE(seed_trace_);
  const std::string name = "tiny.map";
  const Tensor x = golden_->view(name + ".x"), t = golden_->view(name + ".target");
  Tensor grad = Tensor::empty(x.shape(), DType::f32);
  test::poison(grad);
  kernels::cross_entropy_backward(x, t, Tensor(), kIgnore, CrossEntropyReduction::mean_all,
                                  golden_->view(name + ".grad_out"), grad);
  // Ignored pixels get exact zeros in every class.
  const int64_t classes = x.dim(1), inner = x.dim(2) * x.dim(3);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (t.data<int64_t>()[i] != kIgnore) continue;
    for (int64_t c = 0; c < classes; ++c)
      EXPECT_EQ(grad.data<float>()[(i / inner * classes + c) * inner + i % inner], 0.f);
  }
  const Tensor ref = golden_->view(name + ".grad_x");
  EXPECT_LE(test::compare(grad, ref).max_abs, kGradMaxAbsRel * max_abs_of(ref));
}

TEST_F(CrossEntropyTest, AllIgnoredWeightedMeanIsNaNLikePyTorch) {
  Tensor x = Tensor::empty(Shape{3, 4}, DType::f32);
  test::fill_uniform(x);
  const Tensor t = Tensor::from_vector(std::vector<int64_t>{kIgnore, kIgnore, kIgnore}, Shape{3});
  Tensor loss = Tensor::empty(Shape{}, DType::f32);
  kernels::cpu::cross_entropy(x, t, Tensor(), kIgnore, CrossEntropyReduction::weighted_mean, loss);
  EXPECT_TRUE(std::isnan(loss.data<float>()[0]));
  kernels::cpu::cross_entropy(x, t, Tensor(), kIgnore, CrossEntropyReduction::mean_all, loss);
  EXPECT_EQ(loss.data<float>()[0], 0.f);
}

TEST_F(CrossEntropyTest, BadArgumentsThrow) {
  const Tensor x = Tensor::empty(Shape{3, 4}, DType::f32);
  Tensor loss = Tensor::empty(Shape{}, DType::f32);
  Tensor grad = Tensor::empty(Shape{3, 4}, DType::f32);
  const Tensor g = Tensor::from_vector(std::vector<float>{1.f}, Shape{});
  const auto targets = [](std::vector<int64_t> v) { return Tensor::from_vector(v, Shape{int64_t(v.size())}); };
  const auto mean = CrossEntropyReduction::weighted_mean;
  const Tensor ok = targets({0, 3, kIgnore});
  EXPECT_THROW(kernels::cpu::cross_entropy(x, targets({0, 4, 1}), Tensor(), kIgnore, mean, loss), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy(x, targets({0, -1, 1}), Tensor(), kIgnore, mean, loss), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy(x, targets({0, 1}), Tensor(), kIgnore, mean, loss), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy(x, Tensor::empty(Shape{3}, DType::f32), Tensor(), kIgnore, mean, loss),
               Error);
  EXPECT_THROW(kernels::cpu::cross_entropy(x, ok, Tensor::empty(Shape{3}, DType::f32), kIgnore, mean, loss), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy(Tensor::empty(Shape{4}, DType::f32), ok, Tensor(), kIgnore, mean, loss),
               Error);
  Tensor bad_loss = Tensor::empty(Shape{1}, DType::f32);
  EXPECT_THROW(kernels::cpu::cross_entropy(x, ok, Tensor(), kIgnore, mean, bad_loss), Error);
  Tensor bad_grad = Tensor::empty(Shape{4, 3}, DType::f32);
  EXPECT_THROW(kernels::cpu::cross_entropy_backward(x, ok, Tensor(), kIgnore, mean, g, bad_grad), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy_backward(x, ok, Tensor(), kIgnore, mean, Tensor(), grad), Error);
  EXPECT_THROW(kernels::cpu::cross_entropy_backward(x, ok, Tensor(), kIgnore, mean, x, grad), Error);
  Tensor alias = x;
  EXPECT_THROW(kernels::cpu::cross_entropy_backward(x, ok, Tensor(), kIgnore, mean, g, alias), Error);
}

// ---- CUDA vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape logits;
  CrossEntropyReduction reduction;
  bool weighted;
  double ignored;  // probability that a target is ignore_index
  float scale;     // logits uniform in [-scale, scale)
};

// Targets of logits [N, C, d...]: [N, d...], uniform classes, each ignored with probability `ignored`.
Tensor random_targets(const Shape& logits, double ignored) {
  std::vector<int64_t> dims(logits.dims().begin(), logits.dims().end());
  const int64_t classes = dims[1];
  dims.erase(dims.begin() + 1);
  Tensor t = Tensor::empty(Shape(std::span<const int64_t>(dims)), DType::i64);
  std::uniform_int_distribution<int64_t> cls(0, classes - 1);
  std::bernoulli_distribution ignore(ignored);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int64_t>()[i] = ignore(test::rng()) ? kIgnore : cls(test::rng());
  return t;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Forward and backward on CUDA (outputs poisoned, run twice: bitwise equal) against the CPU reference; ignored
// positions get exact zeros.
void expect_cross_entropy_matches_cpu(const CudaCase& c) {
  SCOPED_TRACE(c.name);
  const std::string name = c.name;
  const Tensor x = test::random_host(c.logits, DType::f32, -c.scale, c.scale);
  const Tensor t = random_targets(c.logits, c.ignored);
  const Tensor w = c.weighted ? test::random_host({c.logits[1]}, DType::f32, 0.1f, 2.f) : Tensor();
  const Tensor g = test::random_host({}, DType::f32, 0.5f, 2.f);
  Tensor loss_ref = Tensor::empty({}, DType::f32), grad_ref = Tensor::empty(x.shape(), DType::f32);
  kernels::cpu::cross_entropy(x, t, w, kIgnore, c.reduction, loss_ref);
  kernels::cpu::cross_entropy_backward(x, t, w, kIgnore, c.reduction, g, grad_ref);

  const Tensor dx = x.to(Device::cuda()), dt = t.to(Device::cuda()), dg = g.to(Device::cuda());
  const Tensor dw = w.defined() ? w.to(Device::cuda()) : Tensor();
  Tensor losses[2], grads[2];
  for (int run = 0; run < 2; ++run) {
    Tensor loss = test::poisoned_cuda({}, DType::f32), grad = test::poisoned_cuda(x.shape(), DType::f32);
    kernels::cross_entropy(dx, dt, dw, kIgnore, c.reduction, loss);
    kernels::cross_entropy_backward(dx, dt, dw, kIgnore, c.reduction, dg, grad);
    losses[run] = loss.to(Device::cpu());
    grads[run] = grad.to(Device::cpu());
  }
  test::expect_cuda_close(losses[0], loss_ref, name + " loss");
  test::expect_cuda_close(grads[0], grad_ref, name + " grad_logits");
  EXPECT_TRUE(bitwise_equal(losses[0], losses[1])) << name << ": the loss differs between two runs";
  EXPECT_TRUE(bitwise_equal(grads[0], grads[1])) << name << ": grad_logits differs between two runs";
  const int64_t classes = c.logits[1], inner = t.numel() / c.logits[0];
  int64_t nonzero = 0;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (t.data<int64_t>()[i] == kIgnore)
      for (int64_t k = 0; k < classes; ++k)
        nonzero += grads[0].data<float>()[(i / inner * classes + k) * inner + i % inner] != 0.f;
  EXPECT_EQ(nonzero, 0) << name << ": gradients at ignored positions";
}

TEST(CrossEntropyCuda, MatchesCpuAtTinyShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {
      {"tiny.cls", {12, 5}, CrossEntropyReduction::weighted_mean, true, 0.2, 3.f},
      {"tiny.map", {2, 5, 3, 4}, CrossEntropyReduction::mean_all, false, 0.3, 3.f},
      {"tiny.map_weighted", {2, 5, 3, 4}, CrossEntropyReduction::weighted_mean, true, 0.3, 3.f},
      {"tiny.large_logits", {6, 7}, CrossEntropyReduction::weighted_mean, false, 0.0, 1000.f},
      {"tiny.one_class", {5, 1}, CrossEntropyReduction::mean_all, true, 0.2, 3.f},
      {"tiny.many_classes", {3, 37, 5, 9}, CrossEntropyReduction::mean_all, true, 0.1, 4.f}};
  for (const CudaCase& c : cases) expect_cross_entropy_matches_cpu(c);
}

// loss_cls of two images (38 queries, 19 classes + "no object") and the score-map loss (2 x 19 x 512 x 512).
TEST(CrossEntropyCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"real.cls", {38, 20}, CrossEntropyReduction::weighted_mean, true, 0.0, 3.f},
                            {"real.map", {2, 19, 512, 512}, CrossEntropyReduction::mean_all, false, 0.1, 4.f}};
  for (const CudaCase& c : cases) expect_cross_entropy_matches_cpu(c);
}

// All positions ignored: weighted_mean is 0/0 = NaN as on the CPU, mean_all is 0 with zero gradients. A target
// that is no class cannot throw on the device: the loss and that position's gradient are NaN.
TEST(CrossEntropyCuda, AllIgnoredAndBadTargets) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Tensor x = test::random_host({3, 4}, DType::f32).to(Device::cuda());
  const Tensor g = Tensor::from_vector(std::vector<float>{1.f}, Shape{}).to(Device::cuda());
  const Tensor ignored = Tensor::from_vector(std::vector<int64_t>{kIgnore, kIgnore, kIgnore}, Shape{3});
  Tensor loss = test::poisoned_cuda({}, DType::f32), grad = test::poisoned_cuda({3, 4}, DType::f32);
  kernels::cross_entropy(x, ignored.to(Device::cuda()), Tensor(), kIgnore, CrossEntropyReduction::weighted_mean, loss);
  EXPECT_TRUE(std::isnan(test::value_at(loss.to(Device::cpu()), 0)));
  kernels::cross_entropy(x, ignored.to(Device::cuda()), Tensor(), kIgnore, CrossEntropyReduction::mean_all, loss);
  EXPECT_EQ(test::value_at(loss.to(Device::cpu()), 0), 0.0);
  kernels::cross_entropy_backward(x, ignored.to(Device::cuda()), Tensor(), kIgnore, CrossEntropyReduction::mean_all,
                                  g, grad);
  EXPECT_EQ(test::compare(grad, Tensor::zeros({3, 4}, DType::f32)).max_abs, 0.0);

  const Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 4, 1}, Shape{3}).to(Device::cuda());
  for (CrossEntropyReduction r : {CrossEntropyReduction::weighted_mean, CrossEntropyReduction::mean_all}) {
    kernels::cross_entropy(x, bad, Tensor(), kIgnore, r, loss);
    EXPECT_TRUE(std::isnan(test::value_at(loss.to(Device::cpu()), 0)));
    kernels::cross_entropy_backward(x, bad, Tensor(), kIgnore, r, g, grad);
    const Tensor host = grad.to(Device::cpu());
    for (int64_t k = 0; k < 4; ++k) EXPECT_TRUE(std::isnan(host.data<float>()[4 + k])) << "class " << k;
  }
}

}  // namespace
}  // namespace mfuser
