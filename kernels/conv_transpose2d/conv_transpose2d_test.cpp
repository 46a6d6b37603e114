// conv_transpose2d: CPU reference vs PyTorch's F.conv_transpose2d (float64) at tiny shapes and the FPN's
// 2048 -> 2048, kernel 2, stride 2 upsampler.
#include "kernels/conv_transpose2d/conv_transpose2d.h"

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

}  // namespace
}  // namespace mfuser
