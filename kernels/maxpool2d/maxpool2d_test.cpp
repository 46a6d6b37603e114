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
const Case kCases[] = {{"tiny", 2, 2}, {"tiny_k3s2", 3, 2}, {"real", 2, 2}};

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
