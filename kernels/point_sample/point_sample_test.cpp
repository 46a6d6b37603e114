// point_sample: CPU reference vs F.grid_sample in float64 PyTorch (tiny corner cases and the Mask2Former loss);
// the CUDA kernel vs the CPU reference (PointSampleCuda).
#include "kernels/point_sample/point_sample.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/common/cuda_test.h"
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
    // A pixel collects weighted upstream gradients (f32 sums that may cancel: tiny.single sums 11 points
    // into one pixel): max abs error <= 1e-6 of the largest gradient in or out.
    const Tensor grad_out = g.view(n + ".grad_out");
    test::expect_close(grad_input, ref, "point_sample_backward " + n,
                       1e-6 * std::max(largest(ref), largest(grad_out)));
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

// ---- CUDA kernel vs the CPU reference ----

struct CudaCase {
  const char* name;
  int64_t batch, channels, height, width, points;
};

// Points: each coordinate uniform in [-0.2, 1.2) (partly outside the map) or, with probability 1/2, on the
// half-pixel lattice k / (2n), k in [-3, 2n + 3]: pixel centres and edges, the outer edges 0 and 1, and beyond.
Tensor sample_points(const CudaCase& c, DType dtype) {
  Tensor points = test::random_host({c.batch, c.points, 2}, DType::f32, -0.2f, 1.2f);
  float* v = points.data<float>();
  std::bernoulli_distribution on_lattice(0.5);
  for (int64_t i = 0; i < points.numel(); ++i) {
    if (!on_lattice(test::rng())) continue;
    const int64_t n = i % 2 == 0 ? c.width : c.height;  // x scales with the width, y with the height
    std::uniform_int_distribution<int64_t> k(-3, 2 * n + 3);
    v[i] = float(k(test::rng())) / float(2 * n);
  }
  return test::representable(points, dtype);
}

void expect_point_sample_matches_cpu(const CudaCase& c, DType dtype) {
  const Tensor input = test::random_host({c.batch, c.channels, c.height, c.width}, dtype);
  const Tensor points = sample_points(c, dtype);
  const Shape out_shape{c.batch, c.channels, c.points};
  Tensor ref = Tensor::empty(out_shape, DType::f32);
  kernels::cpu::point_sample(input, points, ref);
  Tensor out = test::poisoned_cuda(out_shape, dtype);
  kernels::point_sample(test::to_cuda(input, dtype), test::to_cuda(points, dtype), out);
  test::expect_cuda_close(out, ref, std::string("point_sample ") + c.name);
}

// The Mask2Former loss: mask logits [19, 1, 128, 128] and the targets of two images [38, 1, 512, 512], 12544 points.
TEST(PointSampleCuda, MatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"real.masks", 19, 1, 128, 128, 12544}, {"real.targets", 38, 1, 512, 512, 12544}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_point_sample_matches_cpu(c, dtype);
}

// Several channels (a warp spans channels and maps), non-square and 1x1 maps, point counts not multiples of 32.
TEST(PointSampleCuda, MatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"tiny.edges", 2, 3, 3, 4, 40}, {"tiny.single", 1, 1, 1, 1, 11},
                            {"tiny.channels", 3, 37, 5, 9, 7}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_point_sample_matches_cpu(c, dtype);
}

// Backward: the CUDA gather (sorted points) vs the CPU scatter; run twice, the CUDA result must be bit-identical.
void expect_point_sample_backward_matches_cpu(const CudaCase& c, DType dtype) {
  const Shape map_shape{c.batch, c.channels, c.height, c.width};
  const Tensor points = sample_points(c, dtype), grad_out = test::random_host({c.batch, c.channels, c.points}, dtype);
  Tensor ref = Tensor::empty(map_shape, DType::f32);
  kernels::cpu::point_sample_backward(points, grad_out, ref);
  const Tensor cuda_points = test::to_cuda(points, dtype), cuda_grad_out = test::to_cuda(grad_out, dtype);
  Tensor grad_input = test::poisoned_cuda(map_shape, dtype), again = test::poisoned_cuda(map_shape, dtype);
  kernels::point_sample_backward(cuda_points, cuda_grad_out, grad_input);
  kernels::point_sample_backward(cuda_points, cuda_grad_out, again);
  test::expect_cuda_close(grad_input, ref, std::string("point_sample_backward ") + c.name);
  const Tensor first = kernels::cast_to(grad_input.to(Device::cpu()), DType::f32);
  const Tensor second = kernels::cast_to(again.to(Device::cpu()), DType::f32);
  EXPECT_EQ(std::memcmp(first.raw_data(), second.raw_data(), size_t(first.numel()) * sizeof(float)), 0)
      << "point_sample_backward " << c.name << " is not deterministic";
}

TEST(PointSampleCuda, BackwardMatchesCpuAtModelShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"real.masks", 19, 1, 128, 128, 12544}, {"real.targets", 38, 1, 512, 512, 12544}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_point_sample_backward_matches_cpu(c, dtype);
}

// Odd shapes; "crowded": thousands of points on a 2x3 map (long groups of points per pixel).
TEST(PointSampleCuda, BackwardMatchesCpuAtOddShapes) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  const CudaCase cases[] = {{"tiny.edges", 2, 3, 3, 4, 40}, {"tiny.single", 1, 1, 1, 1, 11},
                            {"tiny.channels", 3, 37, 5, 9, 7}, {"crowded", 2, 2, 2, 3, 3001}};
  for (DType dtype : test::kCudaDtypes)
    for (const CudaCase& c : cases) expect_point_sample_backward_matches_cpu(c, dtype);
}

TEST(PointSampleCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor points = zeros({2, 7, 2}, dtype), grad_out = zeros({2, 3, 7}, dtype);
    Tensor grad_input = zeros({2, 3, 4, 5}, dtype), other_grad_input = zeros({2, 3, 4, 5}, other);
    EXPECT_NO_THROW(kernels::point_sample_backward(points, grad_out, grad_input));
    EXPECT_THROW(kernels::point_sample_backward(zeros({2, 7, 2}, other), grad_out, grad_input), Error);
    EXPECT_THROW(kernels::point_sample_backward(points, zeros({2, 3, 7}, other), grad_input), Error);
    EXPECT_THROW(kernels::point_sample_backward(points, grad_out, other_grad_input), Error);
  }
}

TEST(PointSampleCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const auto zeros = [](const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype, Device::cuda()); };
  for (DType dtype : test::kCudaDtypes) {
    const DType other = dtype == DType::f32 ? DType::bf16 : DType::f32;
    const Tensor input = zeros({2, 3, 4, 5}, dtype), points = zeros({2, 7, 2}, dtype);
    Tensor out = zeros({2, 3, 7}, dtype), other_out = zeros({2, 3, 7}, other);
    EXPECT_NO_THROW(kernels::point_sample(input, points, out));
    EXPECT_THROW(kernels::point_sample(input, zeros({2, 7, 2}, other), out), Error);
    EXPECT_THROW(kernels::point_sample(input, points, other_out), Error);
  }
  Tensor f16_out = zeros({2, 3, 7}, DType::f16);
  EXPECT_THROW(kernels::point_sample(zeros({2, 3, 4, 5}, DType::f16), zeros({2, 7, 2}, DType::f16), f16_out), Error);
}

}  // namespace
}  // namespace mfuser
