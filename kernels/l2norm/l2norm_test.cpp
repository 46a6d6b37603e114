// l2norm: against F.normalize in f64 over every dim of a tiny tensor (zero vector, norm below eps, custom
// eps) and at the score map's real sizes; the CUDA forward (f32 and bf16 storage) vs the CPU reference.
#include "kernels/l2norm/l2norm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "loaders/safetensors.h"
#include "tests/common/cuda_test.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Cases of l2norm_golden.py: `<name>.x`, `.dim`, `.eps`, `.out`.
const char* const kCases[] = {"tiny.dim-1", "tiny.dim1", "tiny.dim0", "tiny.eps", "real.visual", "real.text"};

class L2normTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("l2norm"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(L2normTest, MatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kCases) {
    const std::string c = name;
    SCOPED_TRACE(c);
    const Tensor x = golden_->view(c + ".x");
    const int dim = int(golden_->view(c + ".dim").data<int64_t>()[0]);
    const float eps = golden_->view(c + ".eps").data<float>()[0];
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::l2norm(x, out, dim, eps);
    const test::ErrorStats e = test::compare(out, golden_->view(c + ".out"));
    std::printf("%s %s dim %d: %s\n", c.c_str(), x.shape().str().c_str(), dim, test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);
    EXPECT_LE(e.max_abs, 1e-6);  // unit vectors (and x / eps < 0.05 for the sub-eps vector)
  }
}

TEST_F(L2normTest, ZeroVectorStaysZero) {
  const Tensor x = Tensor::zeros({2, 3}, DType::f32);
  Tensor out = Tensor::empty({2, 3}, DType::f32);
  test::poison(out);
  kernels::l2norm(x, out);
  for (int64_t i = 0; i < out.numel(); ++i) EXPECT_EQ(out.data<float>()[i], 0.f);
}

TEST_F(L2normTest, InPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor x = golden_->view("tiny.dim1.x").to(Device::cpu());
  kernels::l2norm(x, x, 1);
  EXPECT_LE(test::compare(x, golden_->view("tiny.dim1.out")).max_abs, 1e-6);
}

// Gradient against PyTorch's f64 autograd of F.normalize, including the zero vector (grad / eps), a vector
// with norm below eps (grad / eps: the clamp passes nothing through the norm) and one just above it.
TEST_F(L2normTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const std::string c : kCases) {
    SCOPED_TRACE(c);
    const Tensor x = golden_->view(c + ".x"), ref = golden_->view(c + ".grad_x");
    const int dim = int(golden_->view(c + ".dim").data<int64_t>()[0]);
    const float eps = golden_->view(c + ".eps").data<float>()[0];
    Tensor grad_in = Tensor::empty(x.shape(), DType::f32);
    test::poison(grad_in);
    kernels::cpu::l2norm_backward(x, golden_->view(c + ".grad_out"), grad_in, dim, eps);
    // The sub-eps vectors' gradients are grad_out / eps ~ 1e12: compared relative to each element.
    const test::ErrorStats e = test::compare(grad_in, ref);
    double max_rel = 0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      const double r = ref.data<float>()[i], o = grad_in.data<float>()[i];
      max_rel = std::max(max_rel, std::fabs(o - r) / std::max(1.0, std::fabs(r)));
    }
    std::printf("%s grad_x: %s, max error relative to max(1, |ref|) %g\n", c.c_str(), test::describe(e).c_str(),
                max_rel);
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);
    EXPECT_LE(max_rel, 1e-5);
  }
}

TEST_F(L2normTest, BackwardInPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor g = golden_->view("real.text.grad_out").to(Device::cpu());
  kernels::l2norm_backward(golden_->view("real.text.x"), g, g, -1);
  EXPECT_LE(test::compare(g, golden_->view("real.text.grad_x")).rel_l2, 1e-6);
}

TEST_F(L2normTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3}, DType::f32), g = Tensor::zeros({2, 3}, DType::f32);
  Tensor grad_in = Tensor::empty({2, 3}, DType::f32);
  kernels::l2norm_backward(x, g, grad_in, 1);  // the valid baseline
  EXPECT_THROW(kernels::l2norm_backward(x, g, grad_in, 2), Error);
  EXPECT_THROW(kernels::l2norm_backward(x, g, grad_in, -1, -1.f), Error);
  EXPECT_THROW(kernels::l2norm_backward(x, Tensor::zeros({3, 2}, DType::f32), grad_in), Error);
  Tensor wrong = Tensor::empty({6}, DType::f32);
  EXPECT_THROW(kernels::l2norm_backward(x, g, wrong), Error);
}

TEST_F(L2normTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3}, DType::f32);
  Tensor out = Tensor::empty({2, 3}, DType::f32);
  EXPECT_THROW(kernels::l2norm(x, out, 2), Error);
  EXPECT_THROW(kernels::l2norm(x, out, -3), Error);
  EXPECT_THROW(kernels::l2norm(x, out, -1, -1.f), Error);
  Tensor wrong = Tensor::empty({3, 2}, DType::f32);
  EXPECT_THROW(kernels::l2norm(x, wrong), Error);
}

// ---- CUDA forward vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape shape;
  int dim;
  float eps = 1e-12f;
  bool zero_first = false;  // the vectors of the first outer index are all zero (they must stay zero)
};
const CudaCase kCudaCases[] = {
    {"d1_last", {5, 1}, -1},
    {"d3_last", {4, 3}, -1},
    {"d3_first", {3, 4}, 0},  // strided: 4 vectors of 3 values, 4 apart
    {"d33_last", {2, 3, 33}, 2},
    {"d33_middle", {2, 33, 5}, 1},
    {"d33_first", {33, 2, 3}, 0},
    {"d4099_last", {3, 4099}, -1},       // more than 4 values per thread of a 1024-thread block
    {"d4099_middle", {2, 4099, 3}, -2},  // more than one value per slice of a strided block
    {"many_vectors", {3, 7, 1000}, 1},   // several strided blocks, the last one partly idle
    {"zero_last", {4, 9}, -1, 1e-12f, true},
    {"zero_middle", {2, 9, 5}, 1, 1e-12f, true},
    {"eps_last", {16, 4}, -1, 1.f},  // norms around eps: both sides of the clamp
    {"eps_middle", {2, 4, 16}, 1, 1.f},
    {"visual", {2, 768, 32, 32}, 1},  // the score map's visual embedding of a 512x512 crop
    {"text", {19, 768}, -1},          // the classes' text embeddings
};

TEST(L2normCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      Tensor x = test::random_host(c.shape, dtype);
      if (c.zero_first) {
        const int d = c.dim < 0 ? c.dim + c.shape.ndim() : c.dim;
        int64_t block = 1;  // n * inner: the values of one outer index
        for (int i = d; i < c.shape.ndim(); ++i) block *= c.shape[i];
        std::fill_n(x.data<float>(), block, 0.f);
      }
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::l2norm(x, ref, c.dim, c.eps);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::l2norm(test::to_cuda(x, dtype), out, c.dim, c.eps);
      test::expect_cuda_close(out, ref, std::string("l2norm ") + c.name);
      // In place (the header allows out == x).
      Tensor inplace = test::to_cuda(x, dtype);
      kernels::l2norm(inplace, inplace, c.dim, c.eps);
      test::expect_cuda_close(inplace, ref, std::string("l2norm in place ") + c.name);
    }
  }
}

TEST(L2normCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({2, 3}, DType::bf16, Device::cuda());
  Tensor out = Tensor::empty({2, 3}, DType::bf16, Device::cuda()),
         out32 = Tensor::empty({2, 3}, DType::f32, Device::cuda()), host_out = Tensor::empty({2, 3}, DType::f32);
  EXPECT_NO_THROW(kernels::l2norm(x, out, 1));
  EXPECT_THROW(kernels::l2norm(x, out32, 1), Error);
  const Tensor x32 = Tensor::zeros({2, 3}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::l2norm(x32, host_out, 1), Error);  // mixed devices
  const Tensor f16 = Tensor::zeros({2, 3}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({2, 3}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::l2norm(f16, out16, 1), Error);
  // The backward takes one dtype: x, grad_out and grad_in alike.
  Tensor grad_in = Tensor::empty({2, 3}, DType::bf16, Device::cuda());
  EXPECT_NO_THROW(kernels::l2norm_backward(x, x, grad_in, 1));
  EXPECT_THROW(kernels::l2norm_backward(x, x, out32, 1), Error);
  EXPECT_THROW(kernels::l2norm_backward(x, x32, grad_in, 1), Error);
}

// l2norm_backward on CUDA against the CPU reference on the forward's cases (both kernel layouts, zero vectors,
// norms around eps, the score map's visual and text embeddings), out of place and in place over grad_out.
TEST(L2normCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      Tensor x = test::random_host(c.shape, dtype);
      if (c.zero_first) {
        const int d = c.dim < 0 ? c.dim + c.shape.ndim() : c.dim;
        int64_t block = 1;
        for (int i = d; i < c.shape.ndim(); ++i) block *= c.shape[i];
        std::fill_n(x.data<float>(), block, 0.f);
      }
      const Tensor g = test::random_host(c.shape, dtype);
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::l2norm_backward(x, g, ref, c.dim, c.eps);
      // Length-1 vectors: x / |x| is a constant sign, so the gradient g / |x| - x g x / |x|^3 cancels to zero.
      double floor = 0;
      if (c.shape[c.dim] == 1) {
        Tensor terms = Tensor::empty(c.shape, DType::f32);
        for (int64_t i = 0; i < x.numel(); ++i)
          terms.data<float>()[i] = g.data<float>()[i] / std::max(std::fabs(x.data<float>()[i]), c.eps);
        floor = test::l2_norm(terms);
      }
      const Tensor x_cuda = test::to_cuda(x, dtype);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::l2norm_backward(x_cuda, test::to_cuda(g, dtype), out, c.dim, c.eps);
      test::expect_cuda_close(out, ref, std::string("l2norm_backward ") + c.name, 0, floor);
      Tensor inplace = test::to_cuda(g, dtype);
      kernels::l2norm_backward(x_cuda, inplace, inplace, c.dim, c.eps);
      test::expect_cuda_close(inplace, ref, std::string("l2norm_backward in place ") + c.name, 0, floor);
    }
  }
}

TEST(L2normCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x16 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::bf16);
  const Tensor g32 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::f32);
  Tensor out16 = test::poisoned_cuda({4, 6}, DType::bf16);
  kernels::l2norm_backward(x16, x16, out16, -1);  // the valid baseline
  EXPECT_THROW(kernels::l2norm_backward(x16, g32, out16, -1), Error);
}

}  // namespace
}  // namespace mfuser
