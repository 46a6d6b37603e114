// maxpool2d: CPU reference vs PyTorch's F.max_pool2d (exact) at tiny shapes and the FPN's 2048 x 32 x 32.
#include "kernels/maxpool2d/maxpool2d.h"

#include <cmath>
#include <limits>

#include "tests/common/cuda_test.h"
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

// ---- CUDA vs the CPU reference: a max is one of its inputs, so the results must agree exactly --------------------

struct CudaCase {
  const char* name;
  Shape x;
  int kernel, stride;
};
const CudaCase kCudaCases[] = {
    {"fpn4", {1, 2048, 32, 32}, 2, 2},          // the FPN's 1/2x level
    {"odd_dropped_edge", {2, 3, 7, 9}, 2, 2},  // the last row and column fill no window
    {"overlapping_k3s2", {1, 2, 9, 11}, 3, 2},
    {"k3s1", {1, 1, 5, 5}, 3, 1},
    {"k1", {1, 2, 3, 4}, 1, 1},
    {"wide_rows", {1, 2, 4, 1030}, 2, 2},  // more columns than one 256-thread block covers
};

// out (CUDA) equals ref (host f32) element by element, NaN where ref is NaN.
void expect_same_values(const Tensor& out, const Tensor& ref, const std::string& what) {
  const Tensor host = out.to(Device::cpu());
  int64_t mismatches = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double o = test::value_at(host, i), r = test::value_at(ref, i);
    mismatches += std::isnan(r) ? !std::isnan(o) : o != r;
  }
  EXPECT_EQ(mismatches, 0) << what << " (" << dtype_name(out.dtype()) << ", seed " << test::seed() << ")";
}

TEST(Maxpool2dCuda, MatchesCpuExactly) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const Tensor x = test::random_host(c.x, dtype);
      const Shape out_shape{c.x[0], c.x[1], (c.x[2] - c.kernel) / c.stride + 1, (c.x[3] - c.kernel) / c.stride + 1};
      Tensor ref = Tensor::empty(out_shape, DType::f32);
      kernels::cpu::maxpool2d(x, ref, c.kernel, c.stride);
      Tensor out = test::poisoned_cuda(out_shape, dtype);
      kernels::maxpool2d(test::to_cuda(x, dtype), out, c.kernel, c.stride);
      expect_same_values(out, ref, std::string("maxpool2d ") + c.name);
    }
  }
}

// Ties (values on a coarse grid) and NaNs (a window holding one yields NaN, as the CPU reference does).
TEST(Maxpool2dCuda, TiesAndNaNsMatchCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    Tensor x = Tensor::empty({2, 3, 9, 10}, DType::f32);
    float* v = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) v[i] = float(int64_t(test::rng()() % 5)) - 2.f;
    for (int64_t i = 0; i < x.numel(); i += 23) v[i] = std::numeric_limits<float>::quiet_NaN();
    for (const auto& [kernel, stride] : {std::pair{2, 2}, std::pair{3, 2}, std::pair{3, 1}}) {
      const Shape out_shape{2, 3, (9 - kernel) / stride + 1, (10 - kernel) / stride + 1};
      Tensor ref = Tensor::empty(out_shape, DType::f32);
      kernels::cpu::maxpool2d(x, ref, kernel, stride);
      Tensor out = test::poisoned_cuda(out_shape, dtype);
      kernels::maxpool2d(test::to_cuda(x, dtype), out, kernel, stride);
      expect_same_values(out, ref, "maxpool2d ties and NaNs, kernel " + std::to_string(kernel));
    }
  }
}

TEST(Maxpool2dCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({1, 2, 4, 4}, DType::bf16, Device::cuda());
  Tensor out = Tensor::empty({1, 2, 2, 2}, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty({1, 2, 2, 2}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::maxpool2d(x, out));
  EXPECT_THROW(kernels::maxpool2d(x, out32), Error);
  const Tensor x16 = Tensor::zeros({1, 2, 4, 4}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({1, 2, 2, 2}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::maxpool2d(x16, out16), Error);
  Tensor host_out = Tensor::empty({1, 2, 2, 2}, DType::f32);
  const Tensor x32 = Tensor::zeros({1, 2, 4, 4}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::maxpool2d(x32, host_out), Error);  // mixed devices
  // The backward takes one dtype: x, grad_out and grad_x alike.
  Tensor gx32 = Tensor::empty({1, 2, 4, 4}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::maxpool2d_backward(x32, out32, gx32));
  EXPECT_THROW(kernels::maxpool2d_backward(x32, out, gx32), Error);
  EXPECT_THROW(kernels::maxpool2d_backward(x, out32, gx32), Error);
}

// maxpool2d_backward on CUDA: the same row-major sums as the CPU, so f32 is bit-identical; overlapping windows
// (k3 s2, k3 s1) route several gradients onto one element. Small integers make ties likely.
TEST(Maxpool2dCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      for (bool ties : {false, true}) {
        Tensor x = test::random_host(c.x, dtype);
        if (ties)
          for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = std::round(x.data<float>()[i] * 2.f);
        const Shape out_shape{c.x[0], c.x[1], (c.x[2] - c.kernel) / c.stride + 1, (c.x[3] - c.kernel) / c.stride + 1};
        const Tensor g = test::random_host(out_shape, dtype);
        Tensor ref = Tensor::empty(c.x, DType::f32);
        kernels::cpu::maxpool2d_backward(x, g, ref, c.kernel, c.stride);
        Tensor out = test::poisoned_cuda(c.x, dtype);
        kernels::maxpool2d_backward(test::to_cuda(x, dtype), test::to_cuda(g, dtype), out, c.kernel, c.stride);
        const std::string what = str_cat("maxpool2d_backward ", c.name, ties ? " ties" : "");
        test::expect_cuda_close(out, ref, what);
        if (dtype == DType::f32) expect_same_values(out, ref, what);
      }
    }
  }
}

TEST(Maxpool2dCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x16 = test::to_cuda(Tensor::zeros({1, 1, 4, 4}, DType::f32), DType::bf16);
  const Tensor g16 = test::to_cuda(Tensor::zeros({1, 1, 2, 2}, DType::f32), DType::bf16);
  const Tensor g32 = test::to_cuda(Tensor::zeros({1, 1, 2, 2}, DType::f32), DType::f32);
  Tensor out16 = test::poisoned_cuda({1, 1, 4, 4}, DType::bf16), out32 = test::poisoned_cuda({1, 1, 4, 4}, DType::f32);
  kernels::maxpool2d_backward(x16, g16, out16);  // the valid baseline
  EXPECT_THROW(kernels::maxpool2d_backward(x16, g32, out16), Error);
  EXPECT_THROW(kernels::maxpool2d_backward(x16, g16, out32), Error);
}

}  // namespace
}  // namespace mfuser
