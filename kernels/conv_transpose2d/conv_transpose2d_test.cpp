// conv_transpose2d: CPU reference vs PyTorch's F.conv_transpose2d (float64) at tiny shapes and the FPN's
// 2048 -> 2048, kernel 2, stride 2 upsampler.
#include "kernels/conv_transpose2d/conv_transpose2d.h"

#include <cmath>
#include <string>
#include <string_view>

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as conv_transpose2d_golden.py (whether a case has a bias is read off the file).
const char* const kCases[] = {"tiny", "tiny_k3", "real"};

class ConvTranspose2dTest : public ::testing::Test {
 protected:
  test::Golden golden_{"conv_transpose2d"};
};

TEST_F(ConvTranspose2dTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor bias = g.contains(name + ".bias") ? g.view(name + ".bias") : Tensor();
    Tensor out = Tensor::empty(g.view(name + ".out").shape(), DType::f32);
    test::poison(out);
    // "real" stores its weight in bf16 (exact values) to keep the file small.
    kernels::cpu::conv_transpose2d(g.view(name + ".x"), g.load(name + ".weight", DType::f32), bias, out);
    // Weights are scaled by 1/sqrt(I): outputs are O(1..5).
    test::expect_close(out, g.view(name + ".out"), "conv_transpose2d " + name, 2e-5);
  }
}

TEST_F(ConvTranspose2dTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x"), weight = g.load(name + ".weight", DType::f32);
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
           gb = Tensor::empty({weight.dim(1)}, DType::f32);
    test::poison(gx);
    test::poison(gw);
    test::poison(gb);
    kernels::cpu::conv_transpose2d_backward(x, weight, g.view(name + ".grad_out"), gx, gw, gb);
    // grad_x sums O*K*K products of N(0, 1) and N(0, 1/I) values: O(1..3); grad_weight and grad_bias sum
    // N*H*W (up to 256) and N*OH*OW (up to 1024) products: O(10..30). Measured at "real": rel_l2 <= 3.4e-7,
    // max abs 3.6e-6 (grad_x) and 3.1e-5 (grad_weight: f32 GEMMs accumulated over two bands).
    test::expect_close(gx, g.view(name + ".grad_x"), "conv_transpose2d_backward " + name + " grad_x", 1e-5);
    // "real" stores the gradient of the first input channels only (see the golden generator).
    const Tensor ref_gw = g.view(name + ".grad_weight");
    test::expect_close(gw.slice_rows(0, ref_gw.dim(0)), ref_gw, "conv_transpose2d_backward " + name + " grad_weight",
                       1e-4);
    if (g.contains(name + ".grad_bias"))
      test::expect_close(gb, g.view(name + ".grad_bias"), "conv_transpose2d_backward " + name + " grad_bias", 1e-4);
  }
}

// Each gradient is optional; computing one alone gives the same values.
TEST_F(ConvTranspose2dTest, BackwardSingleGradients) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x"), weight = g.view("tiny.weight"), grad_out = g.view("tiny.grad_out");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
         gb = Tensor::empty({weight.dim(1)}, DType::f32), none;
  test::poison(gx);
  test::poison(gw);
  test::poison(gb);
  kernels::conv_transpose2d_backward(x, weight, grad_out, gx, none, none);
  kernels::conv_transpose2d_backward(x, weight, grad_out, none, gw, none);
  kernels::conv_transpose2d_backward(x, weight, grad_out, none, none, gb);
  test::expect_close(gx, g.view("tiny.grad_x"), "conv_transpose2d_backward tiny grad_x alone", 1e-5);
  test::expect_close(gw, g.view("tiny.grad_weight"), "conv_transpose2d_backward tiny grad_weight alone", 1e-4);
  test::expect_close(gb, g.view("tiny.grad_bias"), "conv_transpose2d_backward tiny grad_bias alone", 1e-4);
}

TEST_F(ConvTranspose2dTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 3, 4, 4}, DType::f32), w = Tensor::zeros({3, 5, 2, 2}, DType::f32);
  const Tensor dy = Tensor::zeros({1, 5, 8, 8}, DType::f32);
  Tensor gx = Tensor::empty({1, 3, 4, 4}, DType::f32), gw = Tensor::empty({3, 5, 2, 2}, DType::f32),
         gb = Tensor::empty({5}, DType::f32), none;
  EXPECT_NO_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx, gw, gb));
  const Tensor small_dy = Tensor::zeros({1, 5, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, small_dy, gx, gw, gb), Error);
  Tensor wrong_gx = Tensor::empty({1, 3, 8, 8}, DType::f32), wrong_gw = Tensor::empty({5, 3, 2, 2}, DType::f32),
         wrong_gb = Tensor::empty({3}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy, wrong_gx, gw, gb), Error);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx, wrong_gw, gb), Error);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx, gw, wrong_gb), Error);
  const Tensor w_rect = Tensor::zeros({3, 5, 2, 3}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w_rect, dy, gx, none, none), Error);
  const Tensor bf16_dy = Tensor::zeros({1, 5, 8, 8}, DType::bf16);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, bf16_dy, gx, gw, gb), Error);
}

TEST_F(ConvTranspose2dTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 3, 4, 4}, DType::f32), w = Tensor::zeros({3, 5, 2, 2}, DType::f32);
  Tensor out = Tensor::empty({1, 5, 8, 8}, DType::f32);
  EXPECT_NO_THROW(kernels::conv_transpose2d(x, w, Tensor(), out));
  const Tensor w_wrong_in = Tensor::zeros({4, 5, 2, 2}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d(x, w_wrong_in, Tensor(), out), Error);
  const Tensor w_rect = Tensor::zeros({3, 5, 2, 3}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d(x, w_rect, Tensor(), out), Error);
  const Tensor bias3 = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d(x, w, bias3, out), Error);
  Tensor same_size_out = Tensor::empty({1, 5, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::conv_transpose2d(x, w, Tensor(), same_size_out), Error);
  const Tensor bf16_w = Tensor::zeros({3, 5, 2, 2}, DType::bf16);
  EXPECT_THROW(kernels::conv_transpose2d(x, bf16_w, Tensor(), out), Error);
}

// ---- CUDA (kernels::gemm + tap scatter) vs the CPU reference ---------------------------------------------------

struct CudaCase {
  const char* name;
  Shape x;  // [N, I, H, W]
  int64_t out_ch, k;
  bool bias;
};
const CudaCase kCudaCases[] = {
    {"tiny_k2", {1, 3, 5, 7}, 4, 2, true},
    {"tiny_k3_batch2_nobias", {2, 5, 3, 4}, 3, 3, false},
    {"tiny_k1_batch3", {3, 2, 4, 5}, 6, 1, true},
    {"fpn_1024", {1, 1024, 32, 32}, 1024, 2, true},
    {"fpn_odd", {1, 96, 17, 23}, 80, 2, false},
    // 4160 x 4096 taps per image: over half the 32 M-element scratch budget, so one image per GEMM.
    {"chunked_batch2", {2, 4, 64, 64}, 1040, 2, true},
};

TEST(ConvTranspose2dCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      // Weights scaled by 1/sqrt(I): outputs O(1); f32 sums of up to 1024 products, ~1e-6 relative.
      const float scale = 1.f / std::sqrt(float(c.x[1]));
      const Tensor x = test::random_host(c.x, dtype);
      const Tensor w = test::random_host({c.x[1], c.out_ch, c.k, c.k}, dtype, -scale, scale);
      const Tensor b = c.bias ? test::random_host({c.out_ch}, dtype) : Tensor();
      const Shape out_shape{c.x[0], c.out_ch, c.x[2] * c.k, c.x[3] * c.k};
      Tensor ref = Tensor::empty(out_shape, DType::f32);
      kernels::cpu::conv_transpose2d(x, w, b, ref);
      Tensor out = test::poisoned_cuda(out_shape, dtype);
      kernels::conv_transpose2d(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(b, dtype), out);
      test::expect_cuda_close(out, ref, std::string("conv_transpose2d ") + c.name);
    }
  }
}

// Backward: CUDA (tap gather + GEMMs + per-channel bias sums) vs the CPU reference. f32: grad_weight sums up to
// 8192 products (chunked_batch2) inside a cuBLAS f32 GEMM, far below 1e-4 relative.
void expect_conv_transpose2d_backward_matches_cpu(const CudaCase& c, DType dtype, bool want_x, bool want_weight,
                                                  bool want_bias) {
  const float scale = 1.f / std::sqrt(float(c.x[1]));
  const Shape w_shape{c.x[1], c.out_ch, c.k, c.k}, b_shape{c.out_ch};
  const Shape out_shape{c.x[0], c.out_ch, c.x[2] * c.k, c.x[3] * c.k};
  const Tensor x = test::random_host(c.x, dtype), w = test::random_host(w_shape, dtype, -scale, scale);
  const Tensor dy = test::random_host(out_shape, dtype);
  const auto host_grad = [](bool want, const Shape& s) { return want ? Tensor::empty(s, DType::f32) : Tensor(); };
  const auto cuda_grad = [&](bool want, const Shape& s) { return want ? test::poisoned_cuda(s, dtype) : Tensor(); };
  Tensor ref_x = host_grad(want_x, c.x), ref_w = host_grad(want_weight, w_shape), ref_b = host_grad(want_bias, b_shape);
  kernels::cpu::conv_transpose2d_backward(x, w, dy, ref_x, ref_w, ref_b);
  Tensor gx = cuda_grad(want_x, c.x), gw = cuda_grad(want_weight, w_shape), gb = cuda_grad(want_bias, b_shape);
  kernels::conv_transpose2d_backward(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(dy, dtype), gx,
                                     gw, gb);
  const std::string what = std::string("conv_transpose2d_backward ") + c.name;
  if (want_x) test::expect_cuda_close(gx, ref_x, what + " grad_x");
  if (want_weight) test::expect_cuda_close(gw, ref_w, what + " grad_weight");
  if (want_bias) test::expect_cuda_close(gb, ref_b, what + " grad_bias");
}

TEST(ConvTranspose2dCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : kCudaCases) expect_conv_transpose2d_backward_matches_cpu(c, dtype, true, true, true);
}

// Every combination of wanted gradients, on the tiny cases.
TEST(ConvTranspose2dCuda, BackwardOptionalGradients) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : kCudaCases) {
      if (std::string_view(c.name).substr(0, 4) != "tiny") continue;
      for (int mask = 1; mask < 8; ++mask)
        expect_conv_transpose2d_backward_matches_cpu(c, dtype, mask & 1, mask & 2, mask & 4);
    }
}

TEST(ConvTranspose2dCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({1, 3, 4, 4}, DType::bf16, Device::cuda());
  const Tensor w = Tensor::zeros({3, 5, 2, 2}, DType::bf16, Device::cuda());
  const Tensor w32 = Tensor::zeros({3, 5, 2, 2}, DType::f32, Device::cuda());
  const Tensor b32 = Tensor::zeros({5}, DType::f32, Device::cuda());
  Tensor out = Tensor::empty({1, 5, 8, 8}, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty({1, 5, 8, 8}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::conv_transpose2d(x, w, Tensor(), out));
  EXPECT_THROW(kernels::conv_transpose2d(x, w32, Tensor(), out), Error);
  EXPECT_THROW(kernels::conv_transpose2d(x, w, b32, out), Error);
  EXPECT_THROW(kernels::conv_transpose2d(x, w, Tensor(), out32), Error);
  const Tensor x16 = Tensor::zeros({1, 3, 4, 4}, DType::f16, Device::cuda());
  const Tensor w16 = Tensor::zeros({3, 5, 2, 2}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({1, 5, 8, 8}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::conv_transpose2d(x16, w16, Tensor(), out16), Error);
  // The backward: one dtype for all its tensors too.
  const Tensor x32 = Tensor::zeros({1, 3, 4, 4}, DType::f32, Device::cuda());
  const Tensor dy32 = Tensor::zeros({1, 5, 8, 8}, DType::f32, Device::cuda());
  const Tensor dy = Tensor::zeros({1, 5, 8, 8}, DType::bf16, Device::cuda());
  Tensor gx32 = Tensor::empty({1, 3, 4, 4}, DType::f32, Device::cuda()), none;
  Tensor gx = Tensor::empty({1, 3, 4, 4}, DType::bf16, Device::cuda());
  Tensor gb32 = Tensor::empty({5}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::conv_transpose2d_backward(x32, w32, dy32, gx32, none, gb32));
  EXPECT_NO_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx, none, none));
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy32, gx, none, none), Error);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx32, none, none), Error);
  EXPECT_THROW(kernels::conv_transpose2d_backward(x, w, dy, gx, none, gb32), Error);
}

}  // namespace
}  // namespace mfuser
