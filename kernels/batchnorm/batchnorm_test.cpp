// batchnorm (inference): CPU reference vs PyTorch's F.batch_norm(training=False) (float64) at tiny shapes and
// the FPN's 2048 channels.
#include "kernels/batchnorm/batchnorm.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as batchnorm_golden.py.
const char* const kCases[] = {"tiny", "tiny_2d", "real"};
constexpr float kEps = 1e-5f;

class BatchnormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"batchnorm"};
};

TEST_F(BatchnormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::batchnorm(g.view(name + ".x"), g.view(name + ".running_mean"), g.view(name + ".running_var"),
                            g.view(name + ".weight"), g.view(name + ".bias"), out, kEps);
    // Running variances >= 0.1 amplify x at most ~3x: outputs stay below ~100, where 1e-4 is a few ulps
    // (measured max abs error 3.8e-6).
    test::expect_close(out, g.view(name + ".out"), "batchnorm " + name, 1e-4);
  }
}

TEST_F(BatchnormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 4, 3, 3}, DType::f32), s = Tensor::zeros({4}, DType::f32);
  Tensor out = Tensor::empty({2, 4, 3, 3}, DType::f32);
  const Tensor s3 = Tensor::zeros({3}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(x, s3, s, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s3, s, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s3, s, out, kEps), Error);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s3, out, kEps), Error);
  Tensor wrong_out = Tensor::empty({2, 4, 9}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(x, s, s, s, s, wrong_out, kEps), Error);
  const Tensor flat = Tensor::zeros({4}, DType::f32);
  Tensor flat_out = Tensor::empty({4}, DType::f32);
  EXPECT_THROW(kernels::batchnorm(flat, s, s, s, s, flat_out, kEps), Error);
  const Tensor f16_x = Tensor::zeros({2, 4, 3, 3}, DType::f16);
  EXPECT_THROW(kernels::batchnorm(f16_x, s, s, s, s, out, kEps), Error);
}

}  // namespace
}  // namespace mfuser
