// maxpool2d: CPU reference vs PyTorch's F.max_pool2d (exact) at tiny shapes and the FPN's 2048 x 32 x 32.
#include "kernels/maxpool2d/maxpool2d.h"

#include <cmath>
#include <limits>

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  int kernel, stride;
};
// Same table as maxpool2d_golden.py.
const Case kCases[] = {{"tiny", 2, 2}, {"tiny_k3s2", 3, 2}, {"real", 2, 2}, {"tiny_ties", 3, 2}};

class Maxpool2dTest : public ::testing::Test {
 protected:
  test::Golden golden_{"maxpool2d"};
};

TEST_F(Maxpool2dTest, CpuMatchesPyTorchExactly) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".out").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::maxpool2d(g.view(name + ".x"), out, c.kernel, c.stride);
    test::expect_close(out, g.view(name + ".out"), "maxpool2d " + name, 0, 0);
  }
}

TEST_F(Maxpool2dTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x");
    Tensor gx = Tensor::empty(x.shape(), DType::f32);
    test::poison(gx);
    kernels::cpu::maxpool2d_backward(x, g.view(name + ".grad_out"), gx, c.kernel, c.stride);
    // Each element gets the sum of at most 4 N(0, 1) upstream values (overlapping 3x3 stride-2 windows): exact
    // without overlap, a last-bit f32 rounding difference at most with it (measured: exact).
    test::expect_close(gx, g.view(name + ".grad_x"), "maxpool2d_backward " + name, 1e-6, 1e-7);
  }
}

// The gradient follows PyTorch's argmax with NaNs: the last NaN of a window takes it (torch 1.13 routes this
// very input to elements 5 and 6).
TEST_F(Maxpool2dTest, BackwardRoutesToLastNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_vector(std::vector<float>{nan, 1.f, 2.f, 3.f, 5.f, nan, nan, 0.f}, {1, 1, 2, 4});
  const Tensor dy = Tensor::from_vector(std::vector<float>{10.f, 20.f}, {1, 1, 1, 2});
  Tensor gx = Tensor::empty({1, 1, 2, 4}, DType::f32);
  test::poison(gx);
  kernels::cpu::maxpool2d_backward(x, dy, gx);
  const std::vector<float> expected{0.f, 0.f, 0.f, 0.f, 0.f, 10.f, 20.f, 0.f};
  for (int64_t i = 0; i < 8; ++i) EXPECT_EQ(gx.data<float>()[i], expected[size_t(i)]) << "element " << i;
}

TEST_F(Maxpool2dTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 2, 5, 5}, DType::f32), dy = Tensor::zeros({1, 2, 2, 2}, DType::f32);
  Tensor gx = Tensor::empty({1, 2, 5, 5}, DType::f32), none;
  EXPECT_NO_THROW(kernels::maxpool2d_backward(x, dy, gx));
  const Tensor ceil_dy = Tensor::zeros({1, 2, 3, 3}, DType::f32);
  EXPECT_THROW(kernels::maxpool2d_backward(x, ceil_dy, gx), Error);
  Tensor wrong_gx = Tensor::empty({1, 2, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::maxpool2d_backward(x, dy, wrong_gx), Error);
  EXPECT_THROW(kernels::maxpool2d_backward(x, dy, none), Error);
  EXPECT_THROW(kernels::maxpool2d_backward(x, dy, gx, 0, 2), Error);
  const Tensor bf16_dy = Tensor::zeros({1, 2, 2, 2}, DType::bf16);
  EXPECT_THROW(kernels::maxpool2d_backward(x, bf16_dy, gx), Error);
}

TEST_F(Maxpool2dTest, NaNPropagates) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Two 2x2 windows: NaN first in the left one, last in the right one.
  const Tensor x = Tensor::from_vector(std::vector<float>{nan, 1.f, 2.f, 3.f, 5.f, 6.f, 7.f, nan}, {1, 1, 2, 4});
  Tensor out = Tensor::zeros({1, 1, 1, 2}, DType::f32);  // not poisoned: the poison is NaN
  kernels::cpu::maxpool2d(x, out);
  EXPECT_TRUE(std::isnan(out.data<float>()[0]));
  EXPECT_TRUE(std::isnan(out.data<float>()[1]));
}

TEST_F(Maxpool2dTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 2, 5, 5}, DType::f32);
  Tensor out = Tensor::empty({1, 2, 2, 2}, DType::f32);
  EXPECT_NO_THROW(kernels::maxpool2d(x, out));
  Tensor ceil_out = Tensor::empty({1, 2, 3, 3}, DType::f32);
  EXPECT_THROW(kernels::maxpool2d(x, ceil_out), Error);
  EXPECT_THROW(kernels::maxpool2d(x, out, 0, 2), Error);
  EXPECT_THROW(kernels::maxpool2d(x, out, 2, 0), Error);
  Tensor tiny_out = Tensor::empty({1, 2, 1, 1}, DType::f32);
  EXPECT_THROW(kernels::maxpool2d(x, tiny_out, 6, 1), Error);
  const Tensor x3d = Tensor::zeros({2, 5, 5}, DType::f32);
  EXPECT_THROW(kernels::maxpool2d(x3d, out), Error);
  const Tensor bf16_x = Tensor::zeros({1, 2, 5, 5}, DType::bf16);
  EXPECT_THROW(kernels::maxpool2d(bf16_x, out), Error);
}

}  // namespace
}  // namespace mfuser
