// conv2d: CPU reference vs PyTorch's F.conv2d (float64) at tiny shapes and the model's patch embedding, 1x1 and
// 3x3 convs.
#include "kernels/conv2d/conv2d.h"

#include <cmath>
#include <string>
#include <string_view>

#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  int stride, padding;
  uint32_t grad_salt;  // 0: grad_out is stored in the file; else counter_uniform(out shape, grad_salt)
};
// Same table as conv2d_golden.py (whether a case has a bias is read off the file).
const Case kCases[] = {{"tiny", 1, 1, 0},   {"tiny_strided", 2, 0, 0}, {"tiny_pad", 3, 2, 0}, {"tiny_1x1", 1, 0, 0},
                       {"patch", 16, 0, 1}, {"pointwise", 1, 0, 2},    {"conv3x3", 1, 1, 3}};

class Conv2dTest : public ::testing::Test {
 protected:
  test::Golden golden_{"conv2d"};
};

TEST_F(Conv2dTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    const Tensor bias = g.contains(name + ".bias") ? g.view(name + ".bias") : Tensor();
    Tensor out = Tensor::empty(g.view(name + ".out").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::conv2d(g.view(name + ".x"), g.view(name + ".weight"), bias, out, c.stride, c.padding);
    // Weights are scaled by 1/sqrt(fan-in): outputs are O(1..5); sums of up to 2304 products in f32 stay
    // within a few times 1e-6 (measured 3e-6 at most).
    test::expect_close(out, g.view(name + ".out"), "conv2d " + name, 2e-5);
  }
}

TEST_F(Conv2dTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x"), weight = g.view(name + ".weight");
    const Shape out_shape = g.view(name + ".out").shape();
    const Tensor grad_out = c.grad_salt ? test::counter_uniform(out_shape, c.grad_salt) : g.view(name + ".grad_out");
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
           gb = Tensor::empty({weight.dim(0)}, DType::f32);
    test::poison(gx);
    test::poison(gw);
    test::poison(gb);
    kernels::cpu::conv2d_backward(x, weight, grad_out, gx, gw, gb, c.stride, c.padding);
    // grad_x sums up to O*KH*KW = 2304 products with weights scaled by 1/sqrt(fan-in): O(1..3); grad_weight and
    // grad_bias sum up to N*OH*OW = 16384 products of O(1) values: O(10..100). Measured at the real shapes:
    // rel_l2 <= 3.4e-7, max abs 1.7e-6 (grad_x) and 1.5e-4 (grad_weight of the 3x3 conv, values up to a few
    // hundred: f32 GEMMs over 16384 pixels in three bands).
    const Tensor ref_gx = g.view(name + ".grad_x");  // rows [N * I, H * W], possibly only the first ones
    test::expect_close(gx.reshape({x.dim(0) * x.dim(1), x.dim(2) * x.dim(3)}).slice_rows(0, ref_gx.dim(0)), ref_gx,
                       "conv2d_backward " + name + " grad_x", 2e-5);
    test::expect_close(gw, g.view(name + ".grad_weight"), "conv2d_backward " + name + " grad_weight", 1e-3);
    if (g.contains(name + ".grad_bias"))
      test::expect_close(gb, g.view(name + ".grad_bias"), "conv2d_backward " + name + " grad_bias", 1e-3);
  }
}

// Each gradient is optional; computing one alone gives the same values.
TEST_F(Conv2dTest, BackwardSingleGradients) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x"), weight = g.view("tiny.weight"), grad_out = g.view("tiny.grad_out");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
         gb = Tensor::empty({weight.dim(0)}, DType::f32), none;
  test::poison(gx);
  test::poison(gw);
  test::poison(gb);
  kernels::conv2d_backward(x, weight, grad_out, gx, none, none, 1, 1);
  kernels::conv2d_backward(x, weight, grad_out, none, gw, none, 1, 1);
  kernels::conv2d_backward(x, weight, grad_out, none, none, gb, 1, 1);
  test::expect_close(gx.reshape({x.dim(0) * x.dim(1), x.dim(2) * x.dim(3)}), g.view("tiny.grad_x"),
                     "conv2d_backward tiny grad_x alone", 2e-5);
  test::expect_close(gw, g.view("tiny.grad_weight"), "conv2d_backward tiny grad_weight alone", 2e-4);
  test::expect_close(gb, g.view("tiny.grad_bias"), "conv2d_backward tiny grad_bias alone", 2e-4);
}

TEST_F(Conv2dTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 3, 8, 8}, DType::f32), w = Tensor::zeros({4, 3, 3, 3}, DType::f32);
  const Tensor dy = Tensor::zeros({1, 4, 8, 8}, DType::f32);
  Tensor gx = Tensor::empty({1, 3, 8, 8}, DType::f32), gw = Tensor::empty({4, 3, 3, 3}, DType::f32),
         gb = Tensor::empty({4}, DType::f32), none;
  EXPECT_NO_THROW(kernels::conv2d_backward(x, w, dy, gx, gw, gb, 1, 1));
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx, gw, gb, 1, 0), Error);  // grad_out would be 6x6
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx, gw, gb, 0, 1), Error);
  Tensor wrong_gx = Tensor::empty({1, 3, 6, 6}, DType::f32), wrong_gw = Tensor::empty({3, 4, 3, 3}, DType::f32),
         wrong_gb = Tensor::empty({3}, DType::f32);
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, wrong_gx, gw, gb, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx, wrong_gw, gb, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx, gw, wrong_gb, 1, 1), Error);
  const Tensor w_wrong_in = Tensor::zeros({4, 2, 3, 3}, DType::f32);
  EXPECT_THROW(kernels::conv2d_backward(x, w_wrong_in, dy, none, none, gb, 1, 1), Error);
  const Tensor bf16_dy = Tensor::zeros({1, 4, 8, 8}, DType::bf16);
  EXPECT_THROW(kernels::conv2d_backward(x, w, bf16_dy, gx, gw, gb, 1, 1), Error);
}

TEST_F(Conv2dTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 3, 8, 8}, DType::f32), w = Tensor::zeros({4, 3, 3, 3}, DType::f32);
  Tensor out = Tensor::empty({1, 4, 8, 8}, DType::f32);
  EXPECT_NO_THROW(kernels::conv2d(x, w, Tensor(), out, 1, 1));
  const Tensor w_wrong_in = Tensor::zeros({4, 2, 3, 3}, DType::f32);
  EXPECT_THROW(kernels::conv2d(x, w_wrong_in, Tensor(), out, 1, 1), Error);
  const Tensor bias5 = Tensor::zeros({5}, DType::f32);
  EXPECT_THROW(kernels::conv2d(x, w, bias5, out, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d(x, w, Tensor(), out, 1, 0), Error);  // out would be 6x6
  EXPECT_THROW(kernels::conv2d(x, w, Tensor(), out, 0, 1), Error);
  EXPECT_THROW(kernels::conv2d(x, w, Tensor(), out, 1, -1), Error);
  const Tensor big_kernel = Tensor::zeros({4, 3, 9, 9}, DType::f32);
  Tensor empty_out = Tensor::empty({1, 4, 0, 0}, DType::f32);
  EXPECT_THROW(kernels::conv2d(x, big_kernel, Tensor(), empty_out, 1, 0), Error);
  const Tensor x3d = Tensor::zeros({3, 8, 8}, DType::f32);
  EXPECT_THROW(kernels::conv2d(x3d, w, Tensor(), out, 1, 1), Error);
  const Tensor bf16_w = Tensor::zeros({4, 3, 3, 3}, DType::bf16);
  EXPECT_THROW(kernels::conv2d(x, bf16_w, Tensor(), out, 1, 1), Error);
}

// ---- CUDA (im2col + kernels::gemm) vs the CPU reference --------------------------------------------------------

struct CudaCase {
  const char* name;
  Shape x;  // [N, I, H, W]
  int64_t out_ch, kh, kw;
  int stride, padding;
  bool bias;
};
const CudaCase kCudaCases[] = {
    {"tiny_stride2_pad0", {1, 3, 7, 9}, 5, 3, 3, 2, 0, true},
    {"tiny_batch2_pad1_nobias", {2, 4, 9, 7}, 6, 3, 3, 1, 1, false},
    {"tiny_rect_kernel_stride2_pad1", {1, 2, 5, 6}, 3, 2, 3, 2, 1, true},
    {"tiny_pad2_stride3", {1, 2, 4, 4}, 3, 3, 3, 3, 2, true},
    {"tiny_1x1_direct_batch2", {2, 3, 11, 13}, 4, 1, 1, 1, 0, true},
    {"tiny_1x1_stride2", {2, 5, 7, 7}, 3, 1, 1, 2, 0, false},  // 1x1 but strided: through im2col
    {"patch_embed_clip", {1, 3, 512, 512}, 1024, 16, 16, 16, 0, false},
    {"patch_embed_dinov2", {1, 3, 512, 512}, 1024, 16, 16, 16, 0, true},
    {"fpn_3x3", {1, 256, 64, 64}, 256, 3, 3, 1, 1, false},
    {"lateral_1x1", {1, 1024, 32, 32}, 256, 1, 1, 1, 0, false},
    {"mask_feature_1x1", {2, 256, 64, 64}, 256, 1, 1, 1, 0, true},
    // 1440 x 10000 columns per image: two images per GEMM under the 32 M-element scratch budget, so three
    // images take two GEMMs of 2 and 1.
    {"chunked_batch3", {3, 160, 100, 100}, 32, 3, 3, 1, 1, true},
};

TEST(Conv2dCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      // Weights scaled by 1/sqrt(fan-in): outputs O(1). f32: sums of up to 2304 products, ~1e-6 relative.
      const float scale = 1.f / std::sqrt(float(c.x[1] * c.kh * c.kw));
      const Tensor x = test::random_host(c.x, dtype);
      const Tensor w = test::random_host({c.out_ch, c.x[1], c.kh, c.kw}, dtype, -scale, scale);
      const Tensor b = c.bias ? test::random_host({c.out_ch}, dtype) : Tensor();
      const Shape out_shape{c.x[0], c.out_ch, (c.x[2] + 2 * c.padding - c.kh) / c.stride + 1,
                            (c.x[3] + 2 * c.padding - c.kw) / c.stride + 1};
      Tensor ref = Tensor::empty(out_shape, DType::f32);
      kernels::cpu::conv2d(x, w, b, ref, c.stride, c.padding);
      Tensor out = test::poisoned_cuda(out_shape, dtype);
      kernels::conv2d(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(b, dtype), out, c.stride,
                      c.padding);
      test::expect_cuda_close(out, ref, std::string("conv2d ") + c.name);
    }
  }
}

// Backward: CUDA (GEMMs + gather col2im + per-channel bias sums) vs the CPU reference. f32: grad_weight sums up
// to 20000 products (chunked_batch3) inside a cuBLAS f32 GEMM, far below 1e-4 relative.
void expect_conv2d_backward_matches_cpu(const CudaCase& c, DType dtype, bool want_x, bool want_weight,
                                        bool want_bias) {
  const float scale = 1.f / std::sqrt(float(c.x[1] * c.kh * c.kw));
  const Shape w_shape{c.out_ch, c.x[1], c.kh, c.kw}, b_shape{c.out_ch};
  const Shape out_shape{c.x[0], c.out_ch, (c.x[2] + 2 * c.padding - c.kh) / c.stride + 1,
                        (c.x[3] + 2 * c.padding - c.kw) / c.stride + 1};
  const Tensor x = test::random_host(c.x, dtype), w = test::random_host(w_shape, dtype, -scale, scale);
  const Tensor dy = test::random_host(out_shape, dtype);
  const auto host_grad = [](bool want, const Shape& s) { return want ? Tensor::empty(s, DType::f32) : Tensor(); };
  const auto cuda_grad = [&](bool want, const Shape& s) { return want ? test::poisoned_cuda(s, dtype) : Tensor(); };
  Tensor ref_x = host_grad(want_x, c.x), ref_w = host_grad(want_weight, w_shape), ref_b = host_grad(want_bias, b_shape);
  kernels::cpu::conv2d_backward(x, w, dy, ref_x, ref_w, ref_b, c.stride, c.padding);
  Tensor gx = cuda_grad(want_x, c.x), gw = cuda_grad(want_weight, w_shape), gb = cuda_grad(want_bias, b_shape);
  kernels::conv2d_backward(test::to_cuda(x, dtype), test::to_cuda(w, dtype), test::to_cuda(dy, dtype), gx, gw, gb,
                           c.stride, c.padding);
  const std::string what = std::string("conv2d_backward ") + c.name;
  if (want_x) test::expect_cuda_close(gx, ref_x, what + " grad_x");
  if (want_weight) test::expect_cuda_close(gw, ref_w, what + " grad_weight");
  if (want_bias) test::expect_cuda_close(gb, ref_b, what + " grad_bias");
}

TEST(Conv2dCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : kCudaCases) expect_conv2d_backward_matches_cpu(c, dtype, true, true, true);
}

// Every combination of wanted gradients, on the tiny cases (direct 1x1 and im2col paths).
TEST(Conv2dCuda, BackwardOptionalGradients) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : kCudaCases) {
      if (std::string_view(c.name).substr(0, 4) != "tiny") continue;
      for (int mask = 1; mask < 8; ++mask) expect_conv2d_backward_matches_cpu(c, dtype, mask & 1, mask & 2, mask & 4);
    }
}

TEST(Conv2dCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({1, 3, 8, 8}, DType::bf16, Device::cuda());
  const Tensor w = Tensor::zeros({4, 3, 3, 3}, DType::bf16, Device::cuda());
  const Tensor w32 = Tensor::zeros({4, 3, 3, 3}, DType::f32, Device::cuda());
  const Tensor b32 = Tensor::zeros({4}, DType::f32, Device::cuda());
  Tensor out = Tensor::empty({1, 4, 8, 8}, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty({1, 4, 8, 8}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::conv2d(x, w, Tensor(), out, 1, 1));
  EXPECT_THROW(kernels::conv2d(x, w32, Tensor(), out, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d(x, w, b32, out, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d(x, w, Tensor(), out32, 1, 1), Error);
  const Tensor x16 = Tensor::zeros({1, 3, 8, 8}, DType::f16, Device::cuda());
  const Tensor w16 = Tensor::zeros({4, 3, 3, 3}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({1, 4, 8, 8}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::conv2d(x16, w16, Tensor(), out16, 1, 1), Error);
  const Tensor host_w = Tensor::zeros({4, 3, 3, 3}, DType::f32);
  const Tensor x32 = Tensor::zeros({1, 3, 8, 8}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::conv2d(x32, host_w, Tensor(), out32, 1, 1), Error);  // mixed devices
  // The backward: one dtype for all its tensors too.
  const Tensor dy32 = Tensor::zeros({1, 4, 8, 8}, DType::f32, Device::cuda());
  const Tensor dy = Tensor::zeros({1, 4, 8, 8}, DType::bf16, Device::cuda());
  Tensor gx32 = Tensor::empty({1, 3, 8, 8}, DType::f32, Device::cuda()), none;
  Tensor gx = Tensor::empty({1, 3, 8, 8}, DType::bf16, Device::cuda());
  Tensor gb32 = Tensor::empty({4}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::conv2d_backward(x32, w32, dy32, gx32, none, gb32, 1, 1));
  EXPECT_NO_THROW(kernels::conv2d_backward(x, w, dy, gx, none, none, 1, 1));
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy32, gx, none, none, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx32, none, none, 1, 1), Error);
  EXPECT_THROW(kernels::conv2d_backward(x, w, dy, gx, none, gb32, 1, 1), Error);
}

}  // namespace
}  // namespace mfuser
