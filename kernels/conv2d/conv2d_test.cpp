// conv2d: CPU reference vs PyTorch's F.conv2d (float64) at tiny shapes and the model's patch embedding, 1x1 and
// 3x3 convs.
#include "kernels/conv2d/conv2d.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  int stride, padding;
};
// Same table as conv2d_golden.py (whether a case has a bias is read off the file).
const Case kCases[] = {{"tiny", 1, 1},  {"tiny_strided", 2, 0}, {"tiny_pad", 3, 2}, {"tiny_1x1", 1, 0},
                       {"patch", 16, 0}, {"pointwise", 1, 0},   {"conv3x3", 1, 1}};

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

}  // namespace
}  // namespace mfuser
