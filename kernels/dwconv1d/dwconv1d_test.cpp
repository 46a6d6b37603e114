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
