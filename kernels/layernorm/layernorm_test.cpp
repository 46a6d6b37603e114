// layernorm: CPU reference vs PyTorch's F.layer_norm (float64) at tiny and ViT-L shapes; the CUDA forward
// and backward (f32 and bf16 storage) vs the CPU reference.
#include "kernels/layernorm/layernorm.h"

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  float eps;
};
// Same table as layernorm_golden.py.
const Case kCases[] = {{"tiny", 1e-5f}, {"tiny_offset", 1e-6f}, {"clip", 1e-5f}, {"dino", 1e-6f}};

class LayernormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"layernorm"};
};

TEST_F(LayernormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::layernorm(g.view(name + ".x"), g.view(name + ".weight"), g.view(name + ".bias"), out, c.eps);
    // Outputs are O(1..10); measured max abs error ~1e-6.
    test::expect_close(out, g.view(name + ".out"), "layernorm " + name, 1e-5);
  }
}

// Both ways of getting the statistics: recomputed from x (undefined mean/rstd) and saved by the forward.
TEST_F(LayernormTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    for (const bool saved : {false, true}) {
      const std::string name = c.name, what = "layernorm_backward " + name + (saved ? " (saved stats)" : "");
      const auto& g = golden_.file;
      const Tensor x = g.view(name + ".x");
      const int64_t d = x.dim(-1), rows = x.numel() / d;
      Tensor mean, rstd;
      if (saved) {
        mean = Tensor::empty({rows}, DType::f32);
        rstd = Tensor::empty({rows}, DType::f32);
        Tensor out = Tensor::empty(x.shape(), DType::f32);
        kernels::cpu::layernorm(x, g.view(name + ".weight"), g.view(name + ".bias"), out, c.eps, mean, rstd);
        test::expect_close(out, g.view(name + ".out"), "layernorm " + name + " (saving stats)", 1e-5);
      }
      Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty({d}, DType::f32),
             gb = Tensor::empty({d}, DType::f32);
      test::poison(gx);
      test::poison(gw);
      test::poison(gb);
      kernels::cpu::layernorm_backward(x, g.view(name + ".weight"), mean, rstd, g.view(name + ".grad_out"), gx, gw,
                                       gb, c.eps);
      // grad_x is O(rstd) (up to ~1 for the tiny rows), grad_weight/grad_bias sum 1025 N(0, 1) terms (O(30)).
      // Measured: recomputed stats match float64 to the last f32 bit; saved f32 stats cost rel_l2 <= 7e-7,
      // max abs <= 4e-7 (grad_x) and 7.7e-6 (grad_weight).
      test::expect_close(gx, g.view(name + ".grad_x"), what + " grad_x", 1e-5);
      test::expect_close(gw, g.view(name + ".grad_weight"), what + " grad_weight", 1e-4);
      test::expect_close(gb, g.view(name + ".grad_bias"), what + " grad_bias", 1e-4);
    }
  }
}

// grad_weight and grad_bias are optional: grad_x alone must not change.
TEST_F(LayernormTest, BackwardWithoutParameterGradients) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), none;
  test::poison(gx);
  kernels::layernorm_backward(x, g.view("tiny.weight"), Tensor(), Tensor(), g.view("tiny.grad_out"), gx, none, none,
                              1e-5f);
  test::expect_close(gx, g.view("tiny.grad_x"), "layernorm_backward tiny grad_x only", 1e-5);
}

TEST_F(LayernormTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 8}, DType::f32), w = Tensor::zeros({8}, DType::f32);
  const Tensor stats = Tensor::zeros({4}, DType::f32), short_stats = Tensor::zeros({3}, DType::f32);
  Tensor gx = Tensor::empty({4, 8}, DType::f32), gw = Tensor::empty({8}, DType::f32), none;
  Tensor short_gw = Tensor::empty({7}, DType::f32), wrong_gx = Tensor::empty({8, 4}, DType::f32);
  EXPECT_NO_THROW(kernels::layernorm_backward(x, w, stats, stats, x, gx, gw, gw, 1e-5f));
  EXPECT_THROW(kernels::layernorm_backward(x, w, stats, Tensor(), x, gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, short_stats, short_stats, x, gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, wrong_gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, gx, short_gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, gx, gw, short_gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, wrong_gx, gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, short_gw, none, none, x, gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, gx, gw, gw, -1.f), Error);
  const Tensor bf16 = Tensor::zeros({4, 8}, DType::bf16);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, bf16, gx, gw, gw, 1e-5f), Error);
  Tensor out = Tensor::empty({4, 8}, DType::f32), short_rstd = Tensor::empty({3}, DType::f32);
  Tensor mean = Tensor::empty({4}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x, w, w, out, 1e-5f, mean, short_rstd), Error);
}

TEST_F(LayernormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 8}, DType::f32), w = Tensor::zeros({8}, DType::f32);
  Tensor out = Tensor::empty({4, 8}, DType::f32);
  const Tensor short_w = Tensor::zeros({7}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x, short_w, w, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, short_w, out, 1e-5f), Error);
  Tensor wrong_out = Tensor::empty({8, 4}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x, w, w, wrong_out, 1e-5f), Error);
  const Tensor bf16_x = Tensor::zeros({4, 8}, DType::bf16);
  EXPECT_THROW(kernels::layernorm(bf16_x, w, w, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, w, out, -1.f), Error);
  EXPECT_THROW(kernels::layernorm(x, Tensor(), w, out, 1e-5f), Error);
}

// ---- CUDA forward vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape shape;
  float eps;
  float lo = -1.f, hi = 1.f;  // x ~ U(lo, hi)
};
const CudaCase kCudaCases[] = {
    {"d1", {7, 1}, 1e-5f},
    {"d3", {5, 3}, 1e-5f},
    {"d33", {4, 3, 33}, 1e-6f},
    {"d4099", {3, 4099}, 1e-5f},                    // more than 4 values per thread of a 1024-thread block
    {"mean_100_d33", {9, 33}, 1e-6f, 99.f, 101.f},  // |mean| >> std: the variance must not cancel
    {"mean_100_d1024", {37, 1024}, 1e-5f, 99.f, 101.f},
    {"clip_vitl", {2, 1025, 1024}, 1e-5f},  // CLIP ViT-L tokens
    {"dino_vitl", {1, 1025, 1024}, 1e-6f},  // DINOv2 ViT-L tokens
    {"text_768", {3, 19, 768}, 1e-5f},
    {"width_512", {2, 257, 512}, 1e-5f},
    {"head_256", {2, 5376, 256}, 1e-5f},  // pixel-decoder tokens of a 512x512 crop (64^2 + 32^2 + 16^2)
};

struct LayernormInputs {
  Tensor x, weight, bias;  // host f32, representable in the storage dtype
};

LayernormInputs random_inputs(const CudaCase& c, DType dtype) {
  const int64_t d = c.shape[-1];
  return {test::random_host(c.shape, dtype, c.lo, c.hi), test::random_host({d}, dtype, 0.5f, 1.5f),
          test::random_host({d}, dtype, -0.5f, 0.5f)};
}

TEST(LayernormCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const LayernormInputs in = random_inputs(c, dtype);
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::layernorm(in.x, in.weight, in.bias, ref, c.eps);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::layernorm(test::to_cuda(in.x, dtype), test::to_cuda(in.weight, dtype), test::to_cuda(in.bias, dtype),
                         out, c.eps);
      test::expect_cuda_close(out, ref, std::string("layernorm ") + c.name);
    }
  }
}

// The statistics are f32 whatever the storage type; they are compared at the f32 tolerance.
TEST(LayernormCuda, SavedStatisticsMatchCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const LayernormInputs in = random_inputs(c, dtype);
      const int64_t rows = c.shape.numel() / c.shape[-1];
      Tensor ref = Tensor::empty(c.shape, DType::f32), ref_mean = Tensor::empty({rows}, DType::f32),
             ref_rstd = Tensor::empty({rows}, DType::f32);
      kernels::cpu::layernorm(in.x, in.weight, in.bias, ref, c.eps, ref_mean, ref_rstd);
      Tensor out = test::poisoned_cuda(c.shape, dtype), mean = test::poisoned_cuda({rows}, DType::f32),
             rstd = test::poisoned_cuda({rows}, DType::f32);
      kernels::layernorm(test::to_cuda(in.x, dtype), test::to_cuda(in.weight, dtype), test::to_cuda(in.bias, dtype),
                         out, c.eps, mean, rstd);
      const std::string what = std::string("layernorm (saving stats) ") + c.name;
      test::expect_cuda_close(out, ref, what);
      test::expect_cuda_close(mean, ref_mean, what + " mean", test::cuda_tolerance(DType::f32));
      test::expect_cuda_close(rstd, ref_rstd, what + " rstd", test::cuda_tolerance(DType::f32));
    }
  }
}

TEST(LayernormCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({4, 8}, DType::bf16, Device::cuda()),
               w = Tensor::zeros({8}, DType::bf16, Device::cuda());
  const Tensor w32 = Tensor::zeros({8}, DType::f32, Device::cuda());
  Tensor out = Tensor::empty({4, 8}, DType::bf16, Device::cuda()),
         out32 = Tensor::empty({4, 8}, DType::f32, Device::cuda());
  Tensor mean = Tensor::empty({4}, DType::f32, Device::cuda()), rstd = Tensor::empty({4}, DType::f32, Device::cuda());
  Tensor mean16 = Tensor::empty({4}, DType::bf16, Device::cuda());
  EXPECT_NO_THROW(kernels::layernorm(x, w, w, out, 1e-5f, mean, rstd));
  EXPECT_THROW(kernels::layernorm(x, w32, w, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, w32, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, w, out32, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, w, out, 1e-5f, mean16, rstd), Error);  // statistics are f32
  const Tensor f16 = Tensor::zeros({4, 8}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({4, 8}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::layernorm(f16, w, w, out16, 1e-5f), Error);
  const Tensor x32 = Tensor::zeros({4, 8}, DType::f32, Device::cuda()), host_w = Tensor::zeros({8}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x32, host_w, host_w, out32, 1e-5f), Error);  // mixed devices
  // The backward: every gradient in x's dtype, saved statistics f32.
  Tensor gx = Tensor::empty({4, 8}, DType::bf16, Device::cuda()), gw = Tensor::empty({8}, DType::bf16, Device::cuda());
  Tensor gw32 = Tensor::empty({8}, DType::f32, Device::cuda()), none;
  EXPECT_NO_THROW(kernels::layernorm_backward(x, w, none, none, x, gx, gw, gw, 1e-5f));
  EXPECT_NO_THROW(kernels::layernorm_backward(x, w, mean, rstd, x, gx, gw, none, 1e-5f));
  EXPECT_THROW(kernels::layernorm_backward(x, w, mean16, mean16, x, gx, gw, gw, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x32, gx, none, none, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, out32, none, none, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w, none, none, x, gx, gw32, none, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm_backward(x, w32, none, none, x, gx, none, gw, 1e-5f), Error);
}

// ---- CUDA backward vs the CPU reference ----

// Every combination of saved/recomputed statistics and wanted parameter gradients. f32 tolerance 1e-4 also for
// grad_weight / grad_bias: their row sums (up to 10752 rows) are f32 per-block partials of <= 21 rows summed
// over <= 512 blocks, error O(1e-6) relative.
TEST(LayernormCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const LayernormInputs in = random_inputs(c, dtype);
      const Tensor grad_out = test::random_host(c.shape, dtype);
      const int64_t d = c.shape[-1], rows = c.shape.numel() / d;
      Tensor fwd = Tensor::empty(c.shape, DType::f32), saved_mean = Tensor::empty({rows}, DType::f32),
             saved_rstd = Tensor::empty({rows}, DType::f32);
      kernels::cpu::layernorm(in.x, in.weight, in.bias, fwd, c.eps, saved_mean, saved_rstd);
      for (const bool saved : {false, true}) {
        for (const bool want_weight : {false, true}) {
          for (const bool want_bias : {false, true}) {
            const Tensor mean = saved ? saved_mean : Tensor(), rstd = saved ? saved_rstd : Tensor();
            Tensor ref_gx = Tensor::empty(c.shape, DType::f32);
            Tensor ref_gw = want_weight ? Tensor::empty({d}, DType::f32) : Tensor();
            Tensor ref_gb = want_bias ? Tensor::empty({d}, DType::f32) : Tensor();
            kernels::cpu::layernorm_backward(in.x, in.weight, mean, rstd, grad_out, ref_gx, ref_gw, ref_gb, c.eps);
            Tensor gx = test::poisoned_cuda(c.shape, dtype);
            Tensor gw = want_weight ? test::poisoned_cuda({d}, dtype) : Tensor();
            Tensor gb = want_bias ? test::poisoned_cuda({d}, dtype) : Tensor();
            kernels::layernorm_backward(test::to_cuda(in.x, dtype), test::to_cuda(in.weight, dtype),
                                        test::to_cuda(mean, DType::f32), test::to_cuda(rstd, DType::f32),
                                        test::to_cuda(grad_out, dtype), gx, gw, gb, c.eps);
            const std::string what = std::string("layernorm_backward ") + c.name + (saved ? " saved" : " recomputed") +
                                     (want_weight ? " +gw" : "") + (want_bias ? " +gb" : "");
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
TEST(LayernormCuda, BackwardInPlaceOverGradOut) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase c = {"in_place", {2, 1025, 1024}, 1e-5f};
  for (const DType dtype : test::kCudaDtypes) {
    const LayernormInputs in = random_inputs(c, dtype);
    const Tensor grad_out = test::random_host(c.shape, dtype);
    Tensor ref_gx = Tensor::empty(c.shape, DType::f32), none;
    kernels::cpu::layernorm_backward(in.x, in.weight, none, none, grad_out, ref_gx, none, none, c.eps);
    Tensor g = test::to_cuda(grad_out, dtype);
    kernels::layernorm_backward(test::to_cuda(in.x, dtype), test::to_cuda(in.weight, dtype), none, none, g, g, none,
                                none, c.eps);
    test::expect_cuda_close(g, ref_gx, "layernorm_backward in place");
  }
}

}  // namespace
}  // namespace mfuser
