// batchnorm: CPU reference vs PyTorch's F.batch_norm (float64), inference and training modes and both
// backwards, at tiny shapes and the FPN's 2048 channels.
#include "kernels/batchnorm/batchnorm.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as batchnorm_golden.py.
const char* const kCases[] = {"tiny", "tiny_2d", "real"};
constexpr float kEps = 1e-5f;

class BatchnormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"batchnorm"};
};

TEST_F(BatchnormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::batchnorm(g.view(name + ".x"), g.view(name + ".running_mean"), g.view(name + ".running_var"),
                            g.view(name + ".weight"), g.view(name + ".bias"), out, kEps);
    // Running variances >= 0.1 amplify x at most ~3x: outputs stay below ~100, where 1e-4 is a few ulps
    // (measured max abs error 3.8e-6).
    test::expect_close(out, g.view(name + ".out"), "batchnorm " + name, 1e-4);
  }
}

// Inference-mode backward: the running statistics are constants.
TEST_F(BatchnormTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x");
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty({x.dim(1)}, DType::f32),
           gb = Tensor::empty({x.dim(1)}, DType::f32);
    test::poison(gx);
    test::poison(gw);
    test::poison(gb);
    kernels::cpu::batchnorm_backward(x, g.view(name + ".running_mean"), g.view(name + ".running_var"),
                                     g.view(name + ".weight"), g.view(name + ".grad_out"), gx, gw, gb, kEps);
    // grad_x = grad_out * weight / sqrt(var + eps): O(10); the parameter gradients sum 1024 terms (O(100)).
    // Measured: double accumulation matches float64 to the last f32 bit (max abs <= 1e-9).
    test::expect_close(gx, g.view(name + ".grad_x"), "batchnorm_backward " + name + " grad_x", 1e-5);
    test::expect_close(gw, g.view(name + ".grad_weight"), "batchnorm_backward " + name + " grad_weight", 1e-4);
    test::expect_close(gb, g.view(name + ".grad_bias"), "batchnorm_backward " + name + " grad_bias", 1e-4);
  }
}

// A fresh f32 copy of a golden tensor (the golden views are read-only).
Tensor copy_of(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), DType::f32);
  c.copy_from(t);
  return c;
}

// Training mode: output, saved batch statistics and the in-place running-statistics update; then the backward
// with the statistics this forward saved and with recomputed ones.
TEST_F(BatchnormTest, TrainMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const std::string train = name + "_train";
    const Tensor x = g.view(name + ".x");
    const int64_t c = x.dim(1);
    Tensor running_mean = copy_of(g.view(name + ".running_mean")), running_var = copy_of(g.view(name + ".running_var"));
    Tensor out = Tensor::empty(x.shape(), DType::f32), save_mean = Tensor::empty({c}, DType::f32),
           save_rstd = Tensor::empty({c}, DType::f32);
    test::poison(out);
    test::poison(save_mean);
    test::poison(save_rstd);
    kernels::cpu::batchnorm_train(x, g.view(name + ".weight"), g.view(name + ".bias"), running_mean, running_var,
                                  out, save_mean, save_rstd, 0.1f, kEps);
    // Normalized outputs O(1..5); statistics O(1).
    test::expect_close(out, g.view(train + ".out"), "batchnorm_train " + name + " out", 1e-5);
    test::expect_close(save_mean, g.view(train + ".save_mean"), "batchnorm_train " + name + " save_mean", 1e-6);
    test::expect_close(save_rstd, g.view(train + ".save_rstd"), "batchnorm_train " + name + " save_rstd", 1e-6);
    test::expect_close(running_mean, g.view(train + ".running_mean"), "batchnorm_train " + name + " running_mean",
                       1e-6);
    test::expect_close(running_var, g.view(train + ".running_var"), "batchnorm_train " + name + " running_var",
                       1e-6);
    for (const bool saved : {true, false}) {
      const std::string what = "batchnorm_train_backward " + name + (saved ? " (saved stats)" : " (recomputed)");
      Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty({c}, DType::f32),
             gb = Tensor::empty({c}, DType::f32);
      test::poison(gx);
      test::poison(gw);
      test::poison(gb);
      kernels::cpu::batchnorm_train_backward(x, g.view(name + ".weight"), saved ? save_mean : Tensor(),
                                             saved ? save_rstd : Tensor(), g.view(name + ".grad_out"), gx, gw, gb,
                                             kEps);
      // grad_x is O(weight * rstd) ~ 1; the parameter gradients sum 1024 terms (O(100)). Measured: exact when
      // recomputed; saved f32 statistics cost rel_l2 <= 8e-8, max abs <= 7.7e-6 (grad_weight).
      test::expect_close(gx, g.view(train + ".grad_x"), what + " grad_x", 1e-5);
      test::expect_close(gw, g.view(train + ".grad_weight"), what + " grad_weight", 1e-4);
      test::expect_close(gb, g.view(train + ".grad_bias"), what + " grad_bias", 1e-4);
    }
  }
}

// Untracked running statistics (both undefined) change nothing else.
TEST_F(BatchnormTest, TrainWithoutRunningStatistics) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x");
  Tensor out = Tensor::empty(x.shape(), DType::f32), save_mean = Tensor::empty({x.dim(1)}, DType::f32),
         save_rstd = Tensor::empty({x.dim(1)}, DType::f32), none;
  test::poison(out);
  kernels::batchnorm_train(x, g.view("tiny.weight"), g.view("tiny.bias"), none, none, out, save_mean, save_rstd, 0.1f,
                           kEps);
  test::expect_close(out, g.view("tiny_train.out"), "batchnorm_train tiny out (untracked)", 1e-5);
}

TEST_F(BatchnormTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 4, 3, 3}, DType::f32), s = Tensor::zeros({4}, DType::f32);
  Tensor gx = Tensor::empty({2, 4, 3, 3}, DType::f32), gs = Tensor::empty({4}, DType::f32), none;
  Tensor s3 = Tensor::empty({3}, DType::f32), wrong = Tensor::empty({2, 4, 9}, DType::f32);
  EXPECT_NO_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, gs, gs, kEps));
  EXPECT_THROW(kernels::batchnorm_backward(x, s3, s, s, x, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s3, x, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, wrong, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, wrong, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, s3, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, gs, s3, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, none, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, gs, gs, -1.f), Error);

  EXPECT_NO_THROW(kernels::batchnorm_train_backward(x, s, s, s, x, gx, gs, gs, kEps));
  EXPECT_NO_THROW(kernels::batchnorm_train_backward(x, s, none, none, x, gx, none, none, kEps));
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, s, none, x, gx, gs, gs, kEps), Error);  // one statistic
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, s3, s3, x, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s3, s, s, x, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, s, s, wrong, gx, gs, gs, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, s, s, x, gx, s3, gs, kEps), Error);
  const Tensor f16 = Tensor::zeros({2, 4, 3, 3}, DType::f16);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, s, s, f16, gx, gs, gs, kEps), Error);
}

TEST_F(BatchnormTest, TrainRejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 4, 3, 3}, DType::f32), s = Tensor::zeros({4}, DType::f32);
  Tensor out = Tensor::empty({2, 4, 3, 3}, DType::f32), rm = Tensor::zeros({4}, DType::f32),
         rv = Tensor::zeros({4}, DType::f32), sm = Tensor::empty({4}, DType::f32), sr = Tensor::empty({4}, DType::f32),
         s3 = Tensor::empty({3}, DType::f32), none;
  EXPECT_NO_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm, sr, 0.1f, kEps));
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, none, out, sm, sr, 0.1f, kEps), Error);  // one running stat
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, s3, out, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, s3, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm, none, 0.1f, kEps), Error);  // save_rstd required
  EXPECT_THROW(kernels::batchnorm_train(x, s3, s, rm, rv, out, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s3, rm, rv, out, sm, sr, 0.1f, kEps), Error);
  Tensor wrong_out = Tensor::empty({2, 4, 9}, DType::f32);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, wrong_out, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm, sr, 1.5f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm, sr, 0.1f, -1.f), Error);
  // One value per channel has no unbiased variance (PyTorch refuses it too).
  const Tensor single = Tensor::zeros({1, 4}, DType::f32);
  Tensor single_out = Tensor::empty({1, 4}, DType::f32);
  EXPECT_THROW(kernels::batchnorm_train(single, s, s, rm, rv, single_out, sm, sr, 0.1f, kEps), Error);
}

TEST_F(BatchnormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 4, 3, 3}, DType::f32), s = Tensor::zeros({4}, DType::f32);
  Tensor out = Tensor::empty({2, 4, 3, 3}, DType::f32);
  const Tensor s3 = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(x, s3, s, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s3, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s3, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s3, out, kEps), Error);
  Tensor wrong_out = Tensor::empty({2, 4, 9}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s, wrong_out, kEps), Error);
  const Tensor flat = Tensor::zeros({4}, DType::f32);
  Tensor flat_out = Tensor::empty({4}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(flat, s, s, s, s, flat_out, kEps), Error);
  const Tensor f16_x = Tensor::zeros({2, 4, 3, 3}, DType::f16);
  EXPECT_THROW(kernels::batchnorm(f16_x, s, s, s, s, out, kEps), Error);
}

}  // namespace
}  // namespace mfuser
