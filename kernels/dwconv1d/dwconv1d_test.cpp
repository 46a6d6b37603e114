// dwconv1d: CPU reference vs PyTorch's depthwise F.conv1d(padding='same') (float64) at tiny shapes and the
// MVFuser shapes; the CUDA kernel vs the CPU reference (Dwconv1dCuda).
#include "kernels/dwconv1d/dwconv1d.h"

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as dwconv1d_golden.py (whether a case has a bias is read off the file).
const char* const kCases[] = {"tiny", "tiny_even", "tiny_short", "backbone", "enhancer"};

class Dwconv1dTest : public ::testing::Test {
 protected:
  test::Golden golden_{"dwconv1d"};
};

TEST_F(Dwconv1dTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor bias = g.contains(name + ".bias") ? g.view(name + ".bias") : Tensor();
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::dwconv1d(g.view(name + ".x"), g.view(name + ".weight"), bias, out);
    test::expect_close(out, g.view(name + ".out"), "dwconv1d " + name, 1e-5);
  }
}

TEST_F(Dwconv1dTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x"), weight = g.view(name + ".weight");
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
           gb = Tensor::empty({x.dim(2)}, DType::f32);
    test::poison(gx);
    test::poison(gw);
    test::poison(gb);
    kernels::cpu::dwconv1d_backward(x, weight, g.view(name + ".grad_out"), gx, gw, gb);
    // grad_x sums K products of O(1) values; grad_weight / grad_bias sum up to 2050 products (O(50)), in double.
    // Measured: grad_x max abs <= 1e-6 (f32 sums of K terms), the parameter gradients exact.
    test::expect_close(gx, g.view(name + ".grad_x"), "dwconv1d_backward " + name + " grad_x", 1e-5);
    test::expect_close(gw, g.view(name + ".grad_weight"), "dwconv1d_backward " + name + " grad_weight", 1e-4);
    if (g.contains(name + ".grad_bias"))
      test::expect_close(gb, g.view(name + ".grad_bias"), "dwconv1d_backward " + name + " grad_bias", 1e-4);
  }
}

// Each gradient is optional; computing one alone gives the same values.
TEST_F(Dwconv1dTest, BackwardSingleGradients) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x"), weight = g.view("tiny.weight"), grad_out = g.view("tiny.grad_out");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), gw = Tensor::empty(weight.shape(), DType::f32),
         gb = Tensor::empty({x.dim(2)}, DType::f32), none;
  test::poison(gx);
  test::poison(gw);
  test::poison(gb);
  kernels::dwconv1d_backward(x, weight, grad_out, gx, none, none);
  kernels::dwconv1d_backward(x, weight, grad_out, none, gw, none);
  kernels::dwconv1d_backward(x, weight, grad_out, none, none, gb);
  test::expect_close(gx, g.view("tiny.grad_x"), "dwconv1d_backward tiny grad_x alone", 1e-5);
  test::expect_close(gw, g.view("tiny.grad_weight"), "dwconv1d_backward tiny grad_weight alone", 1e-4);
  test::expect_close(gb, g.view("tiny.grad_bias"), "dwconv1d_backward tiny grad_bias alone", 1e-4);
}

TEST_F(Dwconv1dTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 6, 4}, DType::f32), w = Tensor::zeros({4, 1, 3}, DType::f32);
  Tensor gx = Tensor::empty({1, 6, 4}, DType::f32), gw = Tensor::empty({4, 1, 3}, DType::f32),
         gb = Tensor::empty({4}, DType::f32), none;
  EXPECT_NO_THROW(kernels::dwconv1d_backward(x, w, x, gx, gw, gb));
  const Tensor wrong_dy = Tensor::zeros({1, 4, 6}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w, wrong_dy, gx, gw, gb), Error);
  Tensor wrong_gx = Tensor::empty({1, 4, 6}, DType::f32), wrong_gw = Tensor::empty({4, 3}, DType::f32),
         wrong_gb = Tensor::empty({6}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w, x, wrong_gx, gw, gb), Error);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w, x, gx, wrong_gw, gb), Error);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w, x, gx, gw, wrong_gb), Error);
  const Tensor w_grouped = Tensor::zeros({4, 2, 3}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w_grouped, x, none, none, none), Error);
  const Tensor f16_dy = Tensor::zeros({1, 6, 4}, DType::f16);
  EXPECT_THROW(kernels::dwconv1d_backward(x, w, f16_dy, gx, gw, gb), Error);
}

TEST_F(Dwconv1dTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 6, 4}, DType::f32), w = Tensor::zeros({4, 1, 3}, DType::f32);
  Tensor out = Tensor::empty({1, 6, 4}, DType::f32);
  EXPECT_NO_THROW(kernels::dwconv1d(x, w, Tensor(), out));
  const Tensor w_wrong_c = Tensor::zeros({6, 1, 3}, DType::f32);  // channels-major confusion: C taken as L
  EXPECT_THROW(kernels::dwconv1d(x, w_wrong_c, Tensor(), out), Error);
  const Tensor w_grouped = Tensor::zeros({4, 2, 3}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d(x, w_grouped, Tensor(), out), Error);
  const Tensor bias3 = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d(x, w, bias3, out), Error);
  Tensor wrong_out = Tensor::empty({1, 4, 6}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d(x, w, Tensor(), wrong_out), Error);
  const Tensor x2d = Tensor::zeros({6, 4}, DType::f32);
  Tensor out2d = Tensor::empty({6, 4}, DType::f32);
  EXPECT_THROW(kernels::dwconv1d(x2d, w, Tensor(), out2d), Error);
  const Tensor f16_x = Tensor::zeros({1, 6, 4}, DType::f16);
  EXPECT_THROW(kernels::dwconv1d(f16_x, w, Tensor(), out), Error);
}

// ---- CUDA kernel vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t batch, len, channels, kernel;
  bool has_bias;
};

void expect_dwconv1d_matches_cpu(const CudaCase& c, DType dtype) {
  const Shape shape{c.batch, c.len, c.channels};
  const Tensor x = test::random_host(shape, dtype), weight = test::random_host({c.channels, 1, c.kernel}, dtype);
  const Tensor bias = c.has_bias ? test::random_host({c.channels}, dtype) : Tensor();
  Tensor ref = Tensor::empty(shape, DType::f32);
  kernels::cpu::dwconv1d(x, weight, bias, ref);
  Tensor out = test::poisoned_cuda(shape, dtype);
  kernels::dwconv1d(test::to_cuda(x, dtype), test::to_cuda(weight, dtype), test::to_cuda(bias, dtype), out);
  test::expect_cuda_close(out, ref, std::string("dwconv1d ") + c.name);
}

// MVFuser's conv1d_x / conv1d_z: K = 3, no bias, on the backbone adapters' 512 channels x 2050 tokens (batch 1 and
// 2) and the MTEnhancer's 128 channels x 1063 tokens.
TEST(Dwconv1dCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"backbone.b1", 1, 2050, 512, 3, false},
                            {"backbone.b2", 2, 2050, 512, 3, false},
                            {"enhancer", 1, 1063, 128, 3, false}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_dwconv1d_matches_cpu(c, dtype);
}

// One token, kernels longer than the sequence, even K (one more zero on the right), K = 1, odd channel counts.
TEST(Dwconv1dCuda, MatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"one_token", 2, 1, 3, 3, true},      {"tiny", 2, 7, 5, 3, false},
                            {"even_kernel", 3, 9, 37, 4, true},   {"short", 1, 2, 33, 5, true},
                            {"pointwise", 2, 11, 6, 1, false},    {"long_kernel", 1, 13, 70, 7, true}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_dwconv1d_matches_cpu(c, dtype);
}

// Backward: CUDA vs the CPU reference (double sums). f32 tolerance 1e-4 holds for grad_weight / grad_bias too:
// they sum at most 4100 rows in f32, in chunks of 256, so the f32 rounding stays near 1e-6 relative.
void expect_dwconv1d_backward_matches_cpu(const CudaCase& c, DType dtype, bool want_x, bool want_weight,
                                          bool want_bias) {
  const Shape shape{c.batch, c.len, c.channels}, weight_shape{c.channels, 1, c.kernel};
  const Tensor x = test::random_host(shape, dtype), weight = test::random_host(weight_shape, dtype),
               grad_out = test::random_host(shape, dtype);
  const auto host_grad = [](bool want, const Shape& s) { return want ? Tensor::empty(s, DType::f32) : Tensor(); };
  const auto cuda_grad = [&](bool want, const Shape& s) { return want ? test::poisoned_cuda(s, dtype) : Tensor(); };
  Tensor ref_x = host_grad(want_x, shape), ref_w = host_grad(want_weight, weight_shape),
         ref_b = host_grad(want_bias, {c.channels});
  kernels::cpu::dwconv1d_backward(x, weight, grad_out, ref_x, ref_w, ref_b);
  Tensor gx = cuda_grad(want_x, shape), gw = cuda_grad(want_weight, weight_shape),
         gb = cuda_grad(want_bias, {c.channels});
  kernels::dwconv1d_backward(test::to_cuda(x, dtype), test::to_cuda(weight, dtype), test::to_cuda(grad_out, dtype), gx,
                             gw, gb);
  const std::string what = std::string("dwconv1d_backward ") + c.name;
  if (want_x) test::expect_cuda_close(gx, ref_x, what + " grad_x");
  if (want_weight) test::expect_cuda_close(gw, ref_w, what + " grad_weight");
  if (want_bias) test::expect_cuda_close(gb, ref_b, what + " grad_bias");
}

TEST(Dwconv1dCuda, BackwardMatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"backbone.b1", 1, 2050, 512, 3, false},
                            {"backbone.b2", 2, 2050, 512, 3, false},
                            {"enhancer", 1, 1063, 128, 3, false}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_dwconv1d_backward_matches_cpu(c, dtype, true, true, true);
}

// Odd shapes with every combination of wanted gradients (an undefined one is not computed, the others match).
TEST(Dwconv1dCuda, BackwardMatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"one_token", 2, 1, 3, 3, true},      {"tiny", 2, 7, 5, 3, false},
                            {"even_kernel", 3, 9, 37, 4, true},   {"short", 1, 2, 33, 5, true},
                            {"pointwise", 2, 11, 6, 1, false},    {"long_kernel", 1, 13, 70, 7, true},
                            {"many_chunks", 3, 301, 45, 3, false}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases)
      for (int mask = 1; mask < 8; ++mask)
        expect_dwconv1d_backward_matches_cpu(c, dtype, mask & 1, mask & 2, mask & 4);
}

TEST(Dwconv1dCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor x = zeros({1, 6, 4}, dtype), w = zeros({4, 1, 3}, dtype), dy = zeros({1, 6, 4}, dtype);
    Tensor gx = zeros({1, 6, 4}, dtype), gw = zeros({4, 1, 3}, dtype), gb = zeros({4}, dtype);
    Tensor other_gx = zeros({1, 6, 4}, other), other_gw = zeros({4, 1, 3}, other), other_gb = zeros({4}, other);
    EXPECT_NO_THROW(kernels::dwconv1d_backward(x, w, dy, gx, gw, gb));
    EXPECT_THROW(kernels::dwconv1d_backward(x, w, zeros({1, 6, 4}, other), gx, gw, gb), Error);
    EXPECT_THROW(kernels::dwconv1d_backward(x, zeros({4, 1, 3}, other), dy, gx, gw, gb), Error);
    EXPECT_THROW(kernels::dwconv1d_backward(x, w, dy, other_gx, gw, gb), Error);
    EXPECT_THROW(kernels::dwconv1d_backward(x, w, dy, gx, other_gw, gb), Error);
    EXPECT_THROW(kernels::dwconv1d_backward(x, w, dy, gx, gw, other_gb), Error);
  }
}

TEST(Dwconv1dCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor x = zeros({1, 6, 4}, dtype), w = zeros({4, 1, 3}, dtype), bias = zeros({4}, dtype);
    Tensor out = zeros({1, 6, 4}, dtype), other_out = zeros({1, 6, 4}, other);
    EXPECT_NO_THROW(kernels::dwconv1d(x, w, bias, out));
    EXPECT_THROW(kernels::dwconv1d(x, zeros({4, 1, 3}, other), bias, out), Error);
    EXPECT_THROW(kernels::dwconv1d(x, w, zeros({4}, other), out), Error);
    EXPECT_THROW(kernels::dwconv1d(x, w, bias, other_out), Error);
  }
  Tensor f16_out = zeros({1, 6, 4}, DType::f16);
  EXPECT_THROW(kernels::dwconv1d(zeros({1, 6, 4}, DType::f16), zeros({4, 1, 3}, DType::f16), Tensor(), f16_out),
               Error);
}

}  // namespace
}  // namespace mfuser
