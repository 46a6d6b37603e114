// bce_dice: BCE-with-logits mean and naive dice loss (forward scalars and grad_x) against PyTorch's f64 oracle modules
// (mfuser_ref.losses) at tiny shapes and the real 19 queries x 12544 points; the CUDA kernels against the CPU
// reference (BceDiceCuda).
#include "kernels/bce_dice/bce_dice.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/cuda_test.h"

namespace mfuser {
namespace {

const char* const kCases[] = {"tiny.binary", "tiny.soft", "tiny.large_logits", "tiny.one_point", "real.points"};
constexpr float kEps = 1.f;  // DiceLoss eps of the config
// Max-abs bound on a gradient, relative to the largest |PyTorch gradient| (about 1e-6 for BCE at the real 19 x 12544):
// the f64 result rounded to f32 is off by an ulp or two at most.
constexpr double kGradMaxAbsRel = 1e-6;

class BceDiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("bce_dice"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  void expect_loss(const std::string& key, const Tensor& loss) const {
    const double ref = test::value_at(golden_->view(key + ".loss"), 0), got = test::value_at(loss, 0);
    std::printf("%s loss: %.9g vs PyTorch %.9g\n", key.c_str(), got, ref);
    EXPECT_LE(std::fabs(got - ref), 1e-6 * std::fabs(ref) + 1e-12);
  }
  void expect_grad(const std::string& key, const Tensor& grad) const {
    const Tensor ref = golden_->view(key + ".grad_x");
    const test::ErrorStats e = test::compare(grad, ref);
    const double scale = test::compare(Tensor::zeros(ref.shape(), DType::f32), ref).max_abs;
    std::printf("%s grad_x: %s\n", key.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);
    EXPECT_LE(e.max_abs, kGradMaxAbsRel * scale);
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(BceDiceTest, LossesMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const std::string n = name;
    const Tensor x = golden_->view(n + ".x"), t = golden_->view(n + ".t");
    Tensor loss = Tensor::empty(Shape{}, DType::f32);
    test::poison(loss);
    kernels::cpu::bce_with_logits_mean(x, t, loss);
    expect_loss(n + ".bce", loss);
    test::poison(loss);
    kernels::cpu::dice_loss(x, t, kEps, loss);
    expect_loss(n + ".dice", loss);
  }
}

TEST_F(BceDiceTest, GradientsMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const std::string n = name;
    const Tensor x = golden_->view(n + ".x"), t = golden_->view(n + ".t");
    Tensor grad = Tensor::empty(x.shape(), DType::f32);
    test::poison(grad);
    kernels::cpu::bce_with_logits_mean_backward(x, t, golden_->view(n + ".bce.grad_out"), grad);
    expect_grad(n + ".bce", grad);
    test::poison(grad);
    kernels::cpu::dice_loss_backward(x, t, kEps, golden_->view(n + ".dice.grad_out"), grad);
    expect_grad(n + ".dice", grad);
  }
}

TEST_F(BceDiceTest, Dispatchers) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("tiny.soft.x"), t = golden_->view("tiny.soft.t");
  Tensor loss = Tensor::empty(Shape{}, DType::f32);
  kernels::bce_with_logits_mean(x, t, loss);
  expect_loss("tiny.soft.bce", loss);
  kernels::dice_loss(x, t, kEps, loss);
  expect_loss("tiny.soft.dice", loss);
  Tensor grad = Tensor::empty(x.shape(), DType::f32);
  kernels::bce_with_logits_mean_backward(x, t, golden_->view("tiny.soft.bce.grad_out"), grad);
  expect_grad("tiny.soft.bce", grad);
  kernels::dice_loss_backward(x, t, kEps, golden_->view("tiny.soft.dice.grad_out"), grad);
  expect_grad("tiny.soft.dice", grad);
}

TEST_F(BceDiceTest, BadArgumentsThrow) {
  const Tensor x = Tensor::empty(Shape{3, 4}, DType::f32);
  const Tensor g = Tensor::from_vector(std::vector<float>{1.f}, Shape{});
  Tensor loss = Tensor::empty(Shape{}, DType::f32), grad = Tensor::empty(Shape{3, 4}, DType::f32);
  const Tensor t_bad_shape = Tensor::empty(Shape{4, 3}, DType::f32);
  const Tensor t_i64 = Tensor::empty(Shape{3, 4}, DType::i64);
  EXPECT_THROW(kernels::cpu::bce_with_logits_mean(x, t_bad_shape, loss), Error);
  EXPECT_THROW(kernels::cpu::dice_loss(x, t_i64, kEps, loss), Error);
  EXPECT_THROW(
      kernels::cpu::dice_loss(Tensor::empty(Shape{12}, DType::f32), Tensor::empty(Shape{12}, DType::f32), kEps, loss),
      Error);
  EXPECT_THROW(kernels::cpu::dice_loss(Tensor::empty(Shape{0, 4}, DType::f32), Tensor::empty(Shape{0, 4}, DType::f32),
                                       kEps, loss),
               Error);
  Tensor bad_loss = Tensor::empty(Shape{1}, DType::f32);
  EXPECT_THROW(kernels::cpu::bce_with_logits_mean(x, x, bad_loss), Error);
  Tensor bad_grad = Tensor::empty(Shape{4, 3}, DType::f32);
  EXPECT_THROW(kernels::cpu::dice_loss_backward(x, x, kEps, g, bad_grad), Error);
  EXPECT_THROW(kernels::cpu::bce_with_logits_mean_backward(x, x, Tensor(), grad), Error);
  EXPECT_THROW(kernels::cpu::bce_with_logits_mean_backward(x, x, x, grad), Error);
  Tensor alias = x;
  EXPECT_THROW(kernels::cpu::dice_loss_backward(x, x, kEps, g, alias), Error);
}

// ---- CUDA vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t rows, points;
  bool binary;  // 0/1 targets (the sampled ground truth, mostly) or soft ones in [0, 1)
  float scale;  // logits uniform in [-scale, scale)
};

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// The four ops on CUDA (outputs poisoned; two runs, bitwise equal) against the CPU reference.
void expect_bce_dice_match_cpu(const CudaCase& c) {
  SCOPED_TRACE(c.name);
  const std::string name = c.name;
  const Shape shape{c.rows, c.points};
  const Tensor x = test::random_host(shape, DType::f32, -c.scale, c.scale);
  Tensor t = test::random_host(shape, DType::f32, 0.f, 1.f);
  if (c.binary)
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = t.data<float>()[i] < 0.3f ? 1.f : 0.f;
  const Tensor g = test::random_host({}, DType::f32, 0.5f, 2.f);
  Tensor ref[4] = {Tensor::empty({}, DType::f32), Tensor::empty({}, DType::f32), Tensor::empty(shape, DType::f32),
                   Tensor::empty(shape, DType::f32)};
  kernels::cpu::bce_with_logits_mean(x, t, ref[0]);
  kernels::cpu::dice_loss(x, t, kEps, ref[1]);
  kernels::cpu::bce_with_logits_mean_backward(x, t, g, ref[2]);
  kernels::cpu::dice_loss_backward(x, t, kEps, g, ref[3]);

  const Tensor dx = x.to(Device::cuda()), dt = t.to(Device::cuda()), dg = g.to(Device::cuda());
  Tensor out[2][4];
  for (int run = 0; run < 2; ++run) {
    Tensor o[4] = {test::poisoned_cuda({}, DType::f32), test::poisoned_cuda({}, DType::f32),
                   test::poisoned_cuda(shape, DType::f32), test::poisoned_cuda(shape, DType::f32)};
    kernels::bce_with_logits_mean(dx, dt, o[0]);
    kernels::dice_loss(dx, dt, kEps, o[1]);
    kernels::bce_with_logits_mean_backward(dx, dt, dg, o[2]);
    kernels::dice_loss_backward(dx, dt, kEps, dg, o[3]);
    for (int k = 0; k < 4; ++k) out[run][k] = o[k].to(Device::cpu());
  }
  const char* what[4] = {" bce", " dice", " bce grad_x", " dice grad_x"};
  for (int k = 0; k < 4; ++k) {
    test::expect_cuda_close(out[0][k], ref[k], name + what[k]);
    EXPECT_TRUE(bitwise_equal(out[0][k], out[1][k])) << name << what[k] << " differs between two runs";
  }
}

TEST(BceDiceCuda, MatchesCpuAtTinyShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"tiny.binary", 3, 7, true, 3.f},
                            {"tiny.soft", 4, 33, false, 3.f},
                            {"tiny.one_point", 1, 1, true, 3.f},
                            {"tiny.large_logits", 2, 50, true, 40.f},
                            {"tiny.long_rows", 2, 3000, false, 5.f}};
  for (const CudaCase& c : cases) expect_bce_dice_match_cpu(c);
}

// The positives of one image (19 x 12544 points) and of two (38 x 12544).
TEST(BceDiceCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"real.points", 19, 12544, true, 6.f}, {"real.two_images", 38, 12544, false, 6.f}};
  for (const CudaCase& c : cases) expect_bce_dice_match_cpu(c);
}

}  // namespace
}  // namespace mfuser
