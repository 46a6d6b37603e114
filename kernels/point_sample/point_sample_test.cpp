// point_sample: CPU reference vs F.grid_sample in float64 PyTorch (tiny corner cases and the Mask2Former loss).
#include "kernels/point_sample/point_sample.h"

#include <string>
#include <vector>

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as point_sample_golden.py; shapes come from the file.
const char* const kCases[] = {"tiny.edges", "tiny.single", "real.masks", "real.targets"};
const char* const kBackwardCases[] = {"tiny.edges", "tiny.single", "real.masks"};  // targets: forward only

class PointSampleTest : public ::testing::Test {
 protected:
  test::Golden golden_{"point_sample"};
};

double largest(const Tensor& t) { return test::compare(t, Tensor::zeros(t.shape(), t.dtype())).max_abs; }

TEST_F(PointSampleTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string n : kCases) {
    const Tensor ref = g.view(n + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::point_sample(g.view(n + ".input"), g.view(n + ".points"), out);
    // Convex combinations of 4 f32 pixels with f32-rounded weights: max abs error <= 1e-6 of the largest sample.
    test::expect_close(out, ref, "point_sample " + n, 1e-6 * largest(ref));
  }
}

TEST_F(PointSampleTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string n : kBackwardCases) {
    const Tensor ref = g.view(n + ".grad_input");
    Tensor grad_input = Tensor::empty(ref.shape(), DType::f32);
    test::poison(grad_input);
    kernels::cpu::point_sample_backward(g.view(n + ".points"), g.view(n + ".grad_out"), grad_input);
    // A pixel collects a few weighted upstream gradients (f32 sums): max abs error <= 1e-6 of the largest.
    test::expect_close(grad_input, ref, "point_sample_backward " + n, 1e-6 * largest(ref));
  }
}

TEST_F(PointSampleTest, RejectsBadArguments) {
  const Tensor input = Tensor::zeros({2, 3, 4, 5}, DType::f32);
  const Tensor points = Tensor::zeros({2, 7, 2}, DType::f32);
  Tensor out = Tensor::empty({2, 3, 7}, DType::f32);
  EXPECT_NO_THROW(kernels::point_sample(input, points, out));
  const Tensor three_d = Tensor::zeros({2, 3, 20}, DType::f32);
  EXPECT_THROW(kernels::point_sample(three_d, points, out), Error);
  const Tensor xyz = Tensor::zeros({2, 7, 3}, DType::f32);
  EXPECT_THROW(kernels::point_sample(input, xyz, out), Error);
  const Tensor other_batch = Tensor::zeros({1, 7, 2}, DType::f32);
  EXPECT_THROW(kernels::point_sample(input, other_batch, out), Error);
  Tensor wrong_out = Tensor::empty({2, 3, 8}, DType::f32);
  EXPECT_THROW(kernels::point_sample(input, points, wrong_out), Error);
  const Tensor bf16_input = Tensor::zeros({2, 3, 4, 5}, DType::bf16);
  EXPECT_THROW(kernels::point_sample(bf16_input, points, out), Error);
}

TEST_F(PointSampleTest, BackwardRejectsBadArguments) {
  const Tensor points = Tensor::zeros({2, 7, 2}, DType::f32);
  const Tensor grad_out = Tensor::zeros({2, 3, 7}, DType::f32);
  Tensor grad_input = Tensor::empty({2, 3, 4, 5}, DType::f32);
  EXPECT_NO_THROW(kernels::point_sample_backward(points, grad_out, grad_input));
  const Tensor wrong_grad_out = Tensor::zeros({2, 4, 7}, DType::f32);
  EXPECT_THROW(kernels::point_sample_backward(points, wrong_grad_out, grad_input), Error);
  const Tensor other_count = Tensor::zeros({2, 6, 2}, DType::f32);
  EXPECT_THROW(kernels::point_sample_backward(other_count, grad_out, grad_input), Error);
  Tensor three_d = Tensor::empty({2, 3, 20}, DType::f32);
  EXPECT_THROW(kernels::point_sample_backward(points, grad_out, three_d), Error);
  Tensor bf16_grad = Tensor::empty({2, 3, 4, 5}, DType::bf16);
  EXPECT_THROW(kernels::point_sample_backward(points, grad_out, bf16_grad), Error);
}

}  // namespace
}  // namespace mfuser
