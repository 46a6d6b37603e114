// batchnorm: CPU reference vs PyTorch's F.batch_norm (float64), inference and training modes and both
// backwards, at tiny shapes and the FPN's 2048 channels; the CUDA forwards and backwards (f32 and bf16 storage)
// vs the CPU reference.
#include "kernels/batchnorm/batchnorm.h"

#include "tests/common/cuda_test.h"
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

// ---- SyncBN: W ranks' steps give batchnorm_train (and its backward) over the ranks' x together ----

// The group's synced forward and backward, each rank an image slice of x; results are concatenated back.
struct SyncedResult {
  Tensor out, save_mean, save_rstd, running_mean, running_var, grad_x, grad_weight, grad_bias;
};

template <class Kernels>
SyncedResult run_synced_group(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& running_mean,
                              const Tensor& running_var, const Tensor& grad_out, int ranks, Device device,
                              const Kernels& k) {
  const int64_t c = x.dim(1), per_rank = x.dim(0) / ranks;
  const auto on = [&](const Tensor& t) { return t.to(device); };
  const auto rows = [&](const Tensor& t, int r) { return on(t.slice_rows(r * per_rank, (r + 1) * per_rank)); };
  Tensor gathered = Tensor::empty({ranks, 2, c}, DType::f32, device);
  for (int r = 0; r < ranks; ++r) {
    Tensor moments = gathered.slice_rows(r, r + 1).reshape({2, c});
    k.moments(rows(x, r), moments);
  }
  SyncedResult res{Tensor::empty(x.shape(), DType::f32), {}, {}, {}, {}, Tensor::empty(x.shape(), DType::f32),
                   Tensor::zeros({c}, DType::f32), Tensor::zeros({c}, DType::f32)};
  Tensor sums = Tensor::zeros({2, c}, DType::f32);
  std::vector<Tensor> save_means, save_rstds;
  for (int r = 0; r < ranks; ++r) {
    Tensor out = on(Tensor::empty(rows(x, r).shape(), DType::f32)), rm = on(running_mean), rv = on(running_var),
           sm = on(Tensor::empty({c}, DType::f32)), sr = on(Tensor::empty({c}, DType::f32));
    test::poison(out);
    test::poison(sm);
    test::poison(sr);
    k.train(rows(x, r), on(w), on(b), gathered, rm, rv, out, sm, sr);
    res.out.slice_rows(r * per_rank, (r + 1) * per_rank).copy_from(out.to(Device::cpu()));
    res.save_mean = sm.to(Device::cpu());
    res.save_rstd = sr.to(Device::cpu());
    res.running_mean = rm.to(Device::cpu());
    res.running_var = rv.to(Device::cpu());
    save_means.push_back(sm);
    save_rstds.push_back(sr);
    Tensor rank_sums = on(Tensor::empty({2, c}, DType::f32));
    test::poison(rank_sums);
    k.grad_sums(rows(x, r), sm, sr, rows(grad_out, r), rank_sums);
    const Tensor host_sums = rank_sums.to(Device::cpu());
    for (int64_t i = 0; i < 2 * c; ++i) sums.data<float>()[i] += host_sums.data<float>()[i];  // the all_reduce
  }
  for (int64_t i = 0; i < c; ++i) {
    res.grad_bias.data<float>()[i] = sums.data<float>()[i];
    res.grad_weight.data<float>()[i] = sums.data<float>()[c + i];
  }
  for (int r = 0; r < ranks; ++r) {
    Tensor gx = on(Tensor::empty(rows(x, r).shape(), DType::f32));
    test::poison(gx);
    k.backward(rows(x, r), on(w), save_means[size_t(r)], save_rstds[size_t(r)], rows(grad_out, r), on(sums),
               x.dim(0) / per_rank * (x.numel() / x.dim(1) / ranks), gx);
    res.grad_x.slice_rows(r * per_rank, (r + 1) * per_rank).copy_from(gx.to(Device::cpu()));
  }
  return res;
}

struct CpuSyncedKernels {
  void moments(const Tensor& x, Tensor& m) const { kernels::cpu::batchnorm_moments(x, m); }
  void train(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& g, Tensor& rm, Tensor& rv, Tensor& out,
             Tensor& sm, Tensor& sr) const {
    kernels::cpu::batchnorm_train_synced(x, w, b, g, rm, rv, out, sm, sr, 0.1f, kEps);
  }
  void grad_sums(const Tensor& x, const Tensor& sm, const Tensor& sr, const Tensor& dy, Tensor& sums) const {
    kernels::cpu::batchnorm_grad_sums(x, sm, sr, dy, sums);
  }
  void backward(const Tensor& x, const Tensor& w, const Tensor& sm, const Tensor& sr, const Tensor& dy,
                const Tensor& sums, int64_t count, Tensor& gx) const {
    kernels::cpu::batchnorm_train_backward_synced(x, w, sm, sr, dy, sums, count, gx);
  }
};

// The single-process batchnorm_train and backward over all of x: what the group must reproduce.
SyncedResult run_whole_batch(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& running_mean,
                             const Tensor& running_var, const Tensor& grad_out) {
  const int64_t c = x.dim(1);
  SyncedResult res{Tensor::empty(x.shape(), DType::f32), Tensor::empty({c}, DType::f32),
                   Tensor::empty({c}, DType::f32), copy_of(running_mean), copy_of(running_var),
                   Tensor::empty(x.shape(), DType::f32), Tensor::empty({c}, DType::f32),
                   Tensor::empty({c}, DType::f32)};
  kernels::cpu::batchnorm_train(x, w, b, res.running_mean, res.running_var, res.out, res.save_mean, res.save_rstd,
                                0.1f, kEps);
  kernels::cpu::batchnorm_train_backward(x, w, res.save_mean, res.save_rstd, grad_out, res.grad_x, res.grad_weight,
                                         res.grad_bias, kEps);
  return res;
}

void expect_same_batchnorm(const SyncedResult& got, const SyncedResult& want, const std::string& what, double max_abs,
                           double rel_l2) {
  test::expect_close(got.out, want.out, what + " out", max_abs, rel_l2);
  test::expect_close(got.save_mean, want.save_mean, what + " save_mean", max_abs, rel_l2);
  test::expect_close(got.save_rstd, want.save_rstd, what + " save_rstd", max_abs, rel_l2);
  test::expect_close(got.running_mean, want.running_mean, what + " running_mean", max_abs, rel_l2);
  test::expect_close(got.running_var, want.running_var, what + " running_var", max_abs, rel_l2);
  test::expect_close(got.grad_x, want.grad_x, what + " grad_x", max_abs, rel_l2);
  test::expect_close(got.grad_weight, want.grad_weight, what + " grad_weight", max_abs, rel_l2);
  test::expect_close(got.grad_bias, want.grad_bias, what + " grad_bias", max_abs, rel_l2);
}

// Ranks with different data means (the combination's between-rank term matters) and a mean far from 0.
Tensor synced_input(const Shape& shape) {
  Tensor x = Tensor::empty(shape, DType::f32);
  test::fill_uniform(x, 2.f, 4.f);
  const int64_t half = x.numel() / 2;
  for (int64_t i = half; i < x.numel(); ++i) x.data<float>()[i] += 3.f;
  return x;
}

TEST(BatchnormSynced, GroupEqualsOneBatch) {
  MFUSER_SEED_TRACE();
  for (const Shape& shape : {Shape{4, 3, 5, 5}, Shape{8, 16, 4, 4}, Shape{8, 7}}) {
    const int64_t c = shape[1];
    const Tensor x = synced_input(shape), w = test::random_host({c}, DType::f32, 0.5f, 1.5f),
                 b = test::random_host({c}, DType::f32), rm = test::random_host({c}, DType::f32),
                 rv = test::random_host({c}, DType::f32, 0.5f, 1.5f), dy = test::random_host(shape, DType::f32);
    const SyncedResult want = run_whole_batch(x, w, b, rm, rv, dy);
    for (const int ranks : {1, 2, 4}) {
      // Statistics combined from f32 moments: a few ulps off the single pass.
      expect_same_batchnorm(run_synced_group(x, w, b, rm, rv, dy, ranks, Device::cpu(), CpuSyncedKernels{}), want,
                            "synced batchnorm " + shape.str() + " over " + std::to_string(ranks) + " ranks", 1e-4,
                            1e-5);
    }
  }
}

TEST(BatchnormSynced, RejectsBadArguments) {
  const Tensor x = synced_input({4, 3, 2, 2}), w = test::random_host({3}, DType::f32);
  Tensor moments = Tensor::empty({3, 2}, DType::f32);  // transposed
  EXPECT_THROW(kernels::batchnorm_moments(x, moments), Error);
  Tensor gathered = Tensor::empty({2, 3, 3}, DType::f32), out = Tensor::empty(x.shape(), DType::f32),
         sm = Tensor::empty({3}, DType::f32), sr = Tensor::empty({3}, DType::f32), none;
  EXPECT_THROW(kernels::batchnorm_train_synced(x, w, w, gathered, none, none, out, sm, sr, 0.1f, kEps), Error);
  Tensor sums = Tensor::zeros({2, 3}, DType::f32), gx = Tensor::empty(x.shape(), DType::f32);
  EXPECT_THROW(kernels::batchnorm_train_backward_synced(x, w, sm, sr, x, sums, 15, gx), Error);  // count % 16
  EXPECT_THROW(kernels::batchnorm_train_backward_synced(x, w, sm, sr, gx, sums, 32, gx), Error);  // aliasing
}

// ---- CUDA forwards vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape shape;
  float lo = -1.f, hi = 1.f;  // x ~ U(lo, hi)
};
const CudaCase kCudaCases[] = {
    {"tiny", {2, 4, 3, 3}},
    {"two_values", {2, 3}},  // M = 2, the fewest batchnorm_train accepts
    {"no_spatial", {5, 7}},
    {"odd", {3, 33, 7, 5}},
    {"mean_100", {4, 16, 9, 9}, 99.f, 101.f},  // |mean| >> std: the batch variance must not cancel
    {"fpn_2048", {1, 2048, 64, 64}},           // the FPN's BatchNorm2d(2048) of a 512x512 crop
    {"c1024_128", {1, 1024, 128, 128}},
    {"c1024_32_b2", {2, 1024, 32, 32}},
};

TEST(BatchnormCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const int64_t channels = c.shape[1];
      // Running means near the data's, so that x - running_mean cancels in the mean_100 case too.
      const float center = (c.lo + c.hi) / 2;
      const Tensor x = test::random_host(c.shape, dtype, c.lo, c.hi),
                   mean = test::random_host({channels}, dtype, center - 0.5f, center + 0.5f),
                   var = test::random_host({channels}, dtype, 0.25f, 2.f),
                   w = test::random_host({channels}, dtype, 0.5f, 1.5f),
                   b = test::random_host({channels}, dtype, -0.5f, 0.5f);
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::batchnorm(x, mean, var, w, b, ref, kEps);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::batchnorm(test::to_cuda(x, dtype), test::to_cuda(mean, dtype), test::to_cuda(var, dtype),
                         test::to_cuda(w, dtype), test::to_cuda(b, dtype), out, kEps);
      test::expect_cuda_close(out, ref, std::string("batchnorm ") + c.name);
    }
  }
}

// Every option: running statistics tracked or not, momentum 0.1, 0 (running values kept) and 1 (replaced),
// at the small shapes.
// The statistics are f32 whatever the storage type; they are compared at the f32 tolerance.
TEST(BatchnormCuda, TrainMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const double f32_tol = test::cuda_tolerance(DType::f32);
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      for (const float momentum : {0.1f, 0.f, 1.f}) {
        for (const bool tracked : {true, false}) {
          if (!tracked && momentum != 0.1f) continue;  // momentum only matters to tracked statistics
          // The model-sized shapes run the default options only (the CPU reference's time).
          if (c.shape.numel() > (1 << 20) && (momentum != 0.1f || !tracked)) continue;
          const std::string what = std::string("batchnorm_train ") + c.name + " momentum " +
                                   std::to_string(momentum) + (tracked ? "" : " (untracked)");
          const int64_t channels = c.shape[1];
          const Tensor x = test::random_host(c.shape, dtype, c.lo, c.hi),
                       w = test::random_host({channels}, dtype, 0.5f, 1.5f),
                       b = test::random_host({channels}, dtype, -0.5f, 0.5f);
          Tensor ref = Tensor::empty(c.shape, DType::f32), ref_mean = Tensor::empty({channels}, DType::f32),
                 ref_rstd = Tensor::empty({channels}, DType::f32), ref_running_mean, ref_running_var;
          Tensor out = test::poisoned_cuda(c.shape, dtype), save_mean = test::poisoned_cuda({channels}, DType::f32),
                 save_rstd = test::poisoned_cuda({channels}, DType::f32), running_mean, running_var;
          if (tracked) {
            ref_running_mean = test::random_host({channels}, DType::f32, -0.5f, 0.5f);
            ref_running_var = test::random_host({channels}, DType::f32, 0.5f, 1.5f);
            running_mean = test::to_cuda(ref_running_mean, DType::f32);
            running_var = test::to_cuda(ref_running_var, DType::f32);
          }
          kernels::cpu::batchnorm_train(x, w, b, ref_running_mean, ref_running_var, ref, ref_mean, ref_rstd, momentum,
                                        kEps);
          kernels::batchnorm_train(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(b, dtype),
                                   running_mean, running_var, out, save_mean, save_rstd, momentum, kEps);
          test::expect_cuda_close(out, ref, what);
          test::expect_cuda_close(save_mean, ref_mean, what + " save_mean", f32_tol);
          test::expect_cuda_close(save_rstd, ref_rstd, what + " save_rstd", f32_tol);
          if (tracked) {
            test::expect_cuda_close(running_mean, ref_running_mean, what + " running_mean", f32_tol);
            test::expect_cuda_close(running_var, ref_running_var, what + " running_var", f32_tol);
          }
        }
      }
    }
  }
}

TEST(BatchnormCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Device gpu = Device::cuda();
  const Tensor x = Tensor::zeros({2, 4, 3, 3}, DType::bf16, gpu), s = Tensor::zeros({4}, DType::bf16, gpu);
  const Tensor x32 = Tensor::zeros({2, 4, 3, 3}, DType::f32, gpu), s32 = Tensor::zeros({4}, DType::f32, gpu);
  Tensor out = Tensor::empty({2, 4, 3, 3}, DType::bf16, gpu), out32 = Tensor::empty({2, 4, 3, 3}, DType::f32, gpu);
  EXPECT_NO_THROW(kernels::batchnorm(x, s, s, s, s, out, kEps));
  EXPECT_THROW(kernels::batchnorm(x, s32, s, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s32, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s32, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s32, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s, out32, kEps), Error);
  const Tensor host_s = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(x32, host_s, s32, s32, s32, out32, kEps), Error);  // mixed devices

  // batchnorm_train: x, weight, bias, out share the storage type; the statistics are f32.
  Tensor rm = Tensor::zeros({4}, DType::f32, gpu), rv = Tensor::zeros({4}, DType::f32, gpu),
         sm = Tensor::empty({4}, DType::f32, gpu), sr = Tensor::empty({4}, DType::f32, gpu);
  Tensor rm16 = Tensor::zeros({4}, DType::bf16, gpu), sm16 = Tensor::empty({4}, DType::bf16, gpu), none;
  EXPECT_NO_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm, sr, 0.1f, kEps));
  EXPECT_NO_THROW(kernels::batchnorm_train(x, s, s, none, none, out, sm, sr, 0.1f, kEps));
  EXPECT_THROW(kernels::batchnorm_train(x, s32, s, rm, rv, out, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out32, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm16, rv, out, sm, sr, 0.1f, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train(x, s, s, rm, rv, out, sm16, sr, 0.1f, kEps), Error);
  Tensor host_rm = Tensor::zeros({4}, DType::f32), host_rv = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(kernels::batchnorm_train(x32, s32, s32, host_rm, host_rv, out32, sm, sr, 0.1f, kEps), Error);  // mixed

  // The backwards: x, weight (and running statistics), grad_out and the gradients share the storage type; saved
  // statistics are f32.
  Tensor gx = Tensor::empty({2, 4, 3, 3}, DType::bf16, gpu), gs = Tensor::empty({4}, DType::bf16, gpu);
  EXPECT_NO_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, gs, gs, kEps));
  EXPECT_NO_THROW(kernels::batchnorm_train_backward(x, s, none, none, x, gx, none, gs, kEps));
  EXPECT_NO_THROW(kernels::batchnorm_train_backward(x, s, sm, sr, x, gx, gs, none, kEps));
  EXPECT_THROW(kernels::batchnorm_backward(x, s32, s, s, x, gx, none, none, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x32, gx, none, none, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, out32, none, none, kEps), Error);
  Tensor gs32 = Tensor::empty({4}, DType::f32, gpu);
  EXPECT_THROW(kernels::batchnorm_backward(x, s, s, s, x, gx, gs32, none, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, sm16, sm16, x, gx, none, none, kEps), Error);
  EXPECT_THROW(kernels::batchnorm_train_backward(x, s, none, none, x, gx, none, gs32, kEps), Error);
}

// ---- CUDA backwards vs the CPU reference ----

// Every combination of wanted parameter gradients (and, for the training backward, saved or recomputed
// statistics) at the small shapes; the model-sized shapes run the full set of gradients only (the CPU
// reference's time). f32 tolerance 1e-4 also for grad_weight / grad_bias: one f32 block reduction of <= 16384
// values per channel, error O(1e-6) relative.
TEST(BatchnormCuda, BackwardsMatchCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const int64_t channels = c.shape[1];
      const float center = (c.lo + c.hi) / 2;
      const Tensor x = test::random_host(c.shape, dtype, c.lo, c.hi),
                   running_mean = test::random_host({channels}, dtype, center - 0.5f, center + 0.5f),
                   running_var = test::random_host({channels}, dtype, 0.25f, 2.f),
                   w = test::random_host({channels}, dtype, 0.5f, 1.5f),
                   b = test::random_host({channels}, dtype, -0.5f, 0.5f), grad_out = test::random_host(c.shape, dtype);
      Tensor fwd = Tensor::empty(c.shape, DType::f32), saved_mean = Tensor::empty({channels}, DType::f32),
             saved_rstd = Tensor::empty({channels}, DType::f32), untracked;
      kernels::cpu::batchnorm_train(x, w, b, untracked, untracked, fwd, saved_mean, saved_rstd, 0.1f, kEps);
      const bool model_sized = c.shape.numel() > (1 << 20);
      // stats: 0 = inference (running statistics), 1 = training recomputed, 2 = training saved.
      for (const int stats : {0, 1, 2}) {
        for (const bool want_weight : {true, false}) {
          for (const bool want_bias : {true, false}) {
            if (model_sized && !(want_weight && want_bias)) continue;
            Tensor ref_gx = Tensor::empty(c.shape, DType::f32);
            Tensor ref_gw = want_weight ? Tensor::empty({channels}, DType::f32) : Tensor();
            Tensor ref_gb = want_bias ? Tensor::empty({channels}, DType::f32) : Tensor();
            Tensor gx = test::poisoned_cuda(c.shape, dtype);
            Tensor gw = want_weight ? test::poisoned_cuda({channels}, dtype) : Tensor();
            Tensor gb = want_bias ? test::poisoned_cuda({channels}, dtype) : Tensor();
            const Tensor dx = test::to_cuda(x, dtype), dw = test::to_cuda(w, dtype);
            const Tensor dgy = test::to_cuda(grad_out, dtype);
            if (stats == 0) {
              kernels::cpu::batchnorm_backward(x, running_mean, running_var, w, grad_out, ref_gx, ref_gw, ref_gb, kEps);
              kernels::batchnorm_backward(dx, test::to_cuda(running_mean, dtype), test::to_cuda(running_var, dtype), dw,
                                          dgy, gx, gw, gb, kEps);
            } else {
              const Tensor mean = stats == 2 ? saved_mean : Tensor(), rstd = stats == 2 ? saved_rstd : Tensor();
              kernels::cpu::batchnorm_train_backward(x, w, mean, rstd, grad_out, ref_gx, ref_gw, ref_gb, kEps);
              kernels::batchnorm_train_backward(dx, dw, test::to_cuda(mean, DType::f32),
                                                test::to_cuda(rstd, DType::f32), dgy, gx, gw, gb, kEps);
            }
            const char* kind[] = {"batchnorm_backward ", "batchnorm_train_backward (recomputed) ",
                                  "batchnorm_train_backward (saved) "};
            const std::string what =
                std::string(kind[stats]) + c.name + (want_weight ? " +gw" : "") + (want_bias ? " +gb" : "");
            test::expect_cuda_close(gx, ref_gx, what + " grad_x");
            if (want_weight) test::expect_cuda_close(gw, ref_gw, what + " grad_weight");
            if (want_bias) test::expect_cuda_close(gb, ref_gb, what + " grad_bias");
          }
        }
      }
    }
  }
}

// grad_x may be grad_out's memory.
TEST(BatchnormCuda, TrainBackwardInPlaceOverGradOut) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Shape shape = {2, 1024, 32, 32};
  for (const DType dtype : test::kCudaDtypes) {
    const Tensor x = test::random_host(shape, dtype), w = test::random_host({1024}, dtype, 0.5f, 1.5f),
                 grad_out = test::random_host(shape, dtype);
    Tensor ref_gx = Tensor::empty(shape, DType::f32), ref_gb = Tensor::empty({1024}, DType::f32), none;
    kernels::cpu::batchnorm_train_backward(x, w, none, none, grad_out, ref_gx, none, ref_gb, kEps);
    Tensor g = test::to_cuda(grad_out, dtype), gb = test::poisoned_cuda({1024}, dtype);
    kernels::batchnorm_train_backward(test::to_cuda(x, dtype), test::to_cuda(w, dtype), none, none, g, g, none, gb,
                                      kEps);
    test::expect_cuda_close(g, ref_gx, "batchnorm_train_backward in place grad_x");
    test::expect_cuda_close(gb, ref_gb, "batchnorm_train_backward in place grad_bias");
  }
}

// SyncBN's four kernels on CUDA vs the same group on the CPU (the group equivalence itself is tested above).
struct CudaSyncedKernels {
  DType dtype;
  Tensor in(const Tensor& t) const { return kernels::cast_to(t, dtype); }
  void moments(const Tensor& x, Tensor& m) const { kernels::batchnorm_moments(in(x), m); }
  void train(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& g, Tensor& rm, Tensor& rv, Tensor& out,
             Tensor& sm, Tensor& sr) const {
    Tensor typed_out = Tensor::empty(out.shape(), dtype, out.device());
    test::poison(typed_out);
    kernels::batchnorm_train_synced(in(x), in(w), in(b), g, rm, rv, typed_out, sm, sr, 0.1f, kEps);
    kernels::cast(typed_out, out);
  }
  void grad_sums(const Tensor& x, const Tensor& sm, const Tensor& sr, const Tensor& dy, Tensor& sums) const {
    kernels::batchnorm_grad_sums(in(x), sm, sr, in(dy), sums);
  }
  void backward(const Tensor& x, const Tensor& w, const Tensor& sm, const Tensor& sr, const Tensor& dy,
                const Tensor& sums, int64_t count, Tensor& gx) const {
    Tensor typed_gx = Tensor::empty(gx.shape(), dtype, gx.device());
    test::poison(typed_gx);
    kernels::batchnorm_train_backward_synced(in(x), in(w), sm, sr, in(dy), sums, count, typed_gx);
    kernels::cast(typed_gx, gx);
  }
};

TEST(BatchnormCuda, SyncedMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : {Shape{4, 3, 5, 5}, Shape{4, 2048, 16, 16}}) {
      const int64_t c = shape[1];
      const Tensor x = test::representable(synced_input(shape), dtype),
                   w = test::random_host({c}, dtype, 0.5f, 1.5f), b = test::random_host({c}, dtype),
                   rm = test::random_host({c}, DType::f32), rv = test::random_host({c}, DType::f32, 0.5f, 1.5f),
                   dy = test::random_host(shape, dtype);
      for (const int ranks : {1, 2}) {
        const SyncedResult want = run_synced_group(x, w, b, rm, rv, dy, ranks, Device::cpu(), CpuSyncedKernels{});
        const SyncedResult got =
            run_synced_group(x, w, b, rm, rv, dy, ranks, Device::cuda(), CudaSyncedKernels{dtype});
        const std::string what = "synced batchnorm " + shape.str() + " ranks " + std::to_string(ranks);
        // Relative L2 at the dtype's CUDA bound; no max-abs bound beyond it (parameter gradients are sums).
        expect_same_batchnorm(got, want, what + " " + std::string(dtype_name(dtype)), 1e30,
                              test::cuda_tolerance(dtype));
      }
    }
  }
}

}  // namespace
}  // namespace mfuser
