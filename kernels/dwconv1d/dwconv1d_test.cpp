// dwconv1d: CPU reference vs PyTorch's depthwise F.conv1d(padding='same') (float64) at tiny shapes and the
// MVFuser shapes.
#include "kernels/dwconv1d/dwconv1d.h"

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

}  // namespace
}  // namespace mfuser
