// groupnorm: CPU reference vs PyTorch's F.group_norm (float64) at tiny and pixel-decoder shapes; the CUDA
// forward and backward (f32 and bf16 storage) vs the CPU reference.
#include "kernels/groupnorm/groupnorm.h"

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  int num_groups;
};
// Same table as groupnorm_golden.py.
const Case kCases[] = {{"tiny", 3}, {"tiny_1d", 4}, {"real", 32}, {"real_32_b2", 32}};
constexpr float kEps = 1e-5f;

class GroupnormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"groupnorm"};
};

TEST_F(GroupnormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::groupnorm(g.view(name + ".x"), g.view(name + ".weight"), g.view(name + ".bias"), out,
                            c.num_groups, kEps);
    // Outputs are O(1..10); measured max abs error ~1e-6.
    test::expect_close(out, g.view(name + ".out"), "groupnorm " + name, 1e-5);
  }
}

// The cases of groupnorm_golden.py's BACKWARD set.
TEST_F(GroupnormTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    if (!g.contains(name + ".grad_out")) continue;
    const Tensor x = g.view(name + ".x");
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty({x.dim(1)}, DType::f32),
           gb = Tensor::empty({x.dim(1)}, DType::f32);
    test::poison(gx);
    test::poison(gw);
    test::poison(gb);
    kernels::cpu::groupnorm_backward(x, g.view(name + ".weight"), g.view(name + ".grad_out"), gx, gw, gb,
                                     c.num_groups, kEps);
    // grad_x is O(rstd) ~ 1/3; grad_weight / grad_bias sum 2 x 1024 N(0, 1) terms (O(50)).
    // Measured: double accumulation matches float64 to the last f32 bit (0 error).
    test::expect_close(gx, g.view(name + ".grad_x"), "groupnorm_backward " + name + " grad_x", 1e-5);
    test::expect_close(gw, g.view(name + ".grad_weight"), "groupnorm_backward " + name + " grad_weight", 1e-4);
    test::expect_close(gb, g.view(name + ".grad_bias"), "groupnorm_backward " + name + " grad_bias", 1e-4);
  }
}

// grad_weight and grad_bias are optional: grad_x alone must not change.
TEST_F(GroupnormTest, BackwardWithoutParameterGradients) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), none;
  test::poison(gx);
  kernels::groupnorm_backward(x, g.view("tiny.weight"), g.view("tiny.grad_out"), gx, none, none, 3, kEps);
  test::expect_close(gx, g.view("tiny.grad_x"), "groupnorm_backward tiny grad_x only", 1e-5);
}

TEST_F(GroupnormTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 6, 4, 4}, DType::f32), w = Tensor::zeros({6}, DType::f32);
  Tensor gx = Tensor::empty({1, 6, 4, 4}, DType::f32), gw = Tensor::empty({6}, DType::f32), none;
  EXPECT_NO_THROW(kernels::groupnorm_backward(x, w, x, gx, gw, gw, 3, kEps));
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, gw, gw, 4, kEps), Error);  // 4 does not divide 6
  const Tensor w5 = Tensor::zeros({5}, DType::f32);
  Tensor gw5 = Tensor::empty({5}, DType::f32), wrong = Tensor::empty({1, 6, 16}, DType::f32);
  EXPECT_THROW(kernels::groupnorm_backward(x, w5, x, gx, gw, gw, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, gw5, gw, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, gw, gw5, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, wrong, gw, gw, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, wrong, gx, gw, gw, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, none, gw, gw, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, gw, gw, 3, -1.f), Error);
  const Tensor i32 = Tensor::zeros({1, 6, 4, 4}, DType::i32);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, i32, gx, gw, gw, 3, kEps), Error);
}

TEST_F(GroupnormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 6, 4, 4}, DType::f32), w = Tensor::zeros({6}, DType::f32);
  Tensor out = Tensor::empty({1, 6, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w, w, out, 4, kEps), Error);  // 4 does not divide 6
  EXPECT_THROW(kernels::groupnorm(x, w, w, out, 0, kEps), Error);
  const Tensor w5 = Tensor::zeros({5}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w5, w, out, 3, kEps), Error);
  Tensor wrong_out = Tensor::empty({1, 6, 16}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w, w, wrong_out, 3, kEps), Error);
  const Tensor flat = Tensor::zeros({6}, DType::f32);
  Tensor flat_out = Tensor::empty({6}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(flat, w, w, flat_out, 3, kEps), Error);
  const Tensor i32_x = Tensor::zeros({1, 6, 4, 4}, DType::i32);
  EXPECT_THROW(kernels::groupnorm(i32_x, w, w, out, 3, kEps), Error);
}

// ---- CUDA forward vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape shape;
  int num_groups;
  float lo = -1.f, hi = 1.f;  // x ~ U(lo, hi)
};
const CudaCase kCudaCases[] = {
    {"tiny", {2, 6, 4, 4}, 3},
    {"no_spatial", {3, 8}, 4},
    {"one_group", {2, 5, 7}, 1},
    {"group_per_channel", {1, 6, 3, 5}, 6},
    {"odd", {3, 12, 33, 5}, 4},
    {"mean_100", {2, 64, 9, 11}, 32, 99.f, 101.f},  // |mean| >> std: the variance must not cancel
    {"pixel_decoder_128", {1, 256, 128, 128}, 32},  // GroupNorm(32, 256) at 1/4 of a 512x512 crop
    {"pixel_decoder_64_b2", {2, 256, 64, 64}, 32},
    {"pixel_decoder_64_mean_100", {1, 256, 64, 64}, 32, 99.f, 101.f},  // 32768-value groups
};

TEST(GroupnormCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const int64_t channels = c.shape[1];
      const Tensor x = test::random_host(c.shape, dtype, c.lo, c.hi),
                   w = test::random_host({channels}, dtype, 0.5f, 1.5f),
                   b = test::random_host({channels}, dtype, -0.5f, 0.5f);
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::groupnorm(x, w, b, ref, c.num_groups, kEps);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::groupnorm(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(b, dtype), out, c.num_groups,
                         kEps);
      test::expect_cuda_close(out, ref, std::string("groupnorm ") + c.name);
    }
  }
}

TEST(GroupnormCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({1, 6, 4, 4}, DType::bf16, Device::cuda()),
               w = Tensor::zeros({6}, DType::bf16, Device::cuda());
  const Tensor x32 = Tensor::zeros({1, 6, 4, 4}, DType::f32, Device::cuda()),
               w32 = Tensor::zeros({6}, DType::f32, Device::cuda());
  Tensor out = Tensor::empty({1, 6, 4, 4}, DType::bf16, Device::cuda()),
         out32 = Tensor::empty({1, 6, 4, 4}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::groupnorm(x, w, w, out, 3, kEps));
  EXPECT_THROW(kernels::groupnorm(x, w32, w, out, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm(x, w, w32, out, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm(x, w, w, out32, 3, kEps), Error);
  const Tensor host_w = Tensor::zeros({6}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x32, host_w, host_w, out32, 3, kEps), Error);  // mixed devices
  // The backward: every tensor in x's dtype.
  Tensor gx = Tensor::empty({1, 6, 4, 4}, DType::bf16, Device::cuda()),
         gw = Tensor::empty({6}, DType::bf16, Device::cuda()), gw32 = Tensor::empty({6}, DType::f32, Device::cuda()), none;
  EXPECT_NO_THROW(kernels::groupnorm_backward(x, w, x, gx, gw, gw, 3, kEps));
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x32, gx, none, none, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, out32, none, none, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, gw32, none, 3, kEps), Error);
  EXPECT_THROW(kernels::groupnorm_backward(x, w, x, gx, none, gw32, 3, kEps), Error);
}

// ---- CUDA backward vs the CPU reference ----

// Every combination of wanted parameter gradients. f32 tolerance 1e-4 also for grad_weight / grad_bias: a
// channel's sum is an f32 block reduction of <= 16384 values per image, then summed over <= 3 images; error
// O(1e-6) relative.
TEST(GroupnormCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const int64_t channels = c.shape[1];
      const Tensor x = test::random_host(c.shape, dtype, c.lo, c.hi),
                   w = test::random_host({channels}, dtype, 0.5f, 1.5f), grad_out = test::random_host(c.shape, dtype);
      for (const bool want_weight : {false, true}) {
        for (const bool want_bias : {false, true}) {
          Tensor ref_gx = Tensor::empty(c.shape, DType::f32);
          Tensor ref_gw = want_weight ? Tensor::empty({channels}, DType::f32) : Tensor();
          Tensor ref_gb = want_bias ? Tensor::empty({channels}, DType::f32) : Tensor();
          kernels::cpu::groupnorm_backward(x, w, grad_out, ref_gx, ref_gw, ref_gb, c.num_groups, kEps);
          Tensor gx = test::poisoned_cuda(c.shape, dtype);
          Tensor gw = want_weight ? test::poisoned_cuda({channels}, dtype) : Tensor();
          Tensor gb = want_bias ? test::poisoned_cuda({channels}, dtype) : Tensor();
          kernels::groupnorm_backward(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(grad_out, dtype),
                                      gx, gw, gb, c.num_groups, kEps);
          const std::string what =
              std::string("groupnorm_backward ") + c.name + (want_weight ? " +gw" : "") + (want_bias ? " +gb" : "");
          test::expect_cuda_close(gx, ref_gx, what + " grad_x");
          if (want_weight) test::expect_cuda_close(gw, ref_gw, what + " grad_weight");
          if (want_bias) test::expect_cuda_close(gb, ref_gb, what + " grad_bias");
        }
      }
    }
  }
}

// grad_x may be grad_out's memory.
TEST(GroupnormCuda, BackwardInPlaceOverGradOut) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const Shape shape = {2, 256, 64, 64};
  for (const DType dtype : test::kCudaDtypes) {
    const Tensor x = test::random_host(shape, dtype), w = test::random_host({256}, dtype, 0.5f, 1.5f),
                 grad_out = test::random_host(shape, dtype);
    Tensor ref_gx = Tensor::empty(shape, DType::f32), ref_gw = Tensor::empty({256}, DType::f32), none;
    kernels::cpu::groupnorm_backward(x, w, grad_out, ref_gx, ref_gw, none, 32, kEps);
    Tensor g = test::to_cuda(grad_out, dtype), gw = test::poisoned_cuda({256}, dtype);
    kernels::groupnorm_backward(test::to_cuda(x, dtype), test::to_cuda(w, dtype), g, g, gw, none, 32, kEps);
    test::expect_cuda_close(g, ref_gx, "groupnorm_backward in place grad_x");
    test::expect_cuda_close(gw, ref_gw, "groupnorm_backward in place grad_weight");
  }
}

}  // namespace
}  // namespace mfuser
