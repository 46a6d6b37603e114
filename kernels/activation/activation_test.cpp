// activation: each nonlinearity against PyTorch's f64 result on random values, on edge values (overflow,
// cancellation, the softplus threshold, inf, NaN), and gelu at the DINOv2 MLP's size.
#include "kernels/activation/activation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"
#include "tests/common/row_blocks.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

using kernels::Activation;
const Activation kAll[] = {Activation::gelu, Activation::relu, Activation::sigmoid,
                           Activation::quick_gelu, Activation::silu, Activation::softplus, Activation::exp};

class ActivationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("activation"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  // Runs the reference on golden input `x` into a poisoned output.
  Tensor run(const Tensor& x, Activation kind) const {
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::activation(x, out, kind);
    return out;
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(ActivationTest, TinyMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("tiny.x");
  for (Activation kind : kAll) {
    const std::string name(kernels::activation_name(kind));
    SCOPED_TRACE(name);
    const test::ErrorStats e = test::compare(run(x, kind), golden_->view("tiny." + name));
    std::printf("tiny %s: %s\n", name.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-5);
    // A few ulp of the output: |x| < 20, so |out| < 20, except exp (up to e^20): scaled by the output's size.
    const double largest = test::compare(golden_->view("tiny." + name), Tensor::zeros(x.shape(), DType::f32)).max_abs;
    EXPECT_LE(e.max_abs, 5e-7 * std::max(20.0, largest));
  }
}

// Element by element: NaN where PyTorch gives NaN, the same infinity, otherwise within 1e-6 relative (or
// 1e-6 absolute near zero, where PyTorch's own f64 erf form rounds e.g. gelu(-9) to -0).
TEST_F(ActivationTest, EdgeValuesMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("edge.x");
  for (Activation kind : kAll) {
    const std::string name(kernels::activation_name(kind));
    const Tensor out = run(x, kind), ref = golden_->view("edge." + name);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float o = out.data<float>()[i], r = ref.data<float>()[i];
      SCOPED_TRACE(str_cat(name, "(", x.data<float>()[i], ") = ", o, ", PyTorch ", r));
      if (std::isnan(r))
        EXPECT_TRUE(std::isnan(o));
      else if (std::isinf(r))
        EXPECT_EQ(o, r);
      else
        EXPECT_LE(std::fabs(double(o) - r), 1e-6 * std::max(1.0, std::fabs(double(r))));
    }
  }
}

TEST_F(ActivationTest, GeluRealShapeMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->load("real.x", DType::f32);  // stored as f16, exact in f32
  const test::ErrorStats e = test::compare(run(x, Activation::gelu), golden_->view("real.gelu"));
  std::printf("real gelu %s: %s\n", x.shape().str().c_str(), test::describe(e).c_str());
  EXPECT_EQ(e.nonfinite, 0);
  EXPECT_LE(e.rel_l2, 1e-5);
  EXPECT_LE(e.max_abs, 1e-5);  // |x| < 12
}

TEST_F(ActivationTest, InPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor x = golden_->view("tiny.x").to(Device::cpu());
  kernels::activation(x, x, Activation::silu);
  EXPECT_LE(test::compare(x, golden_->view("tiny.silu")).max_abs, 1e-5);
}

// Backward: grad_in = grad_out * f'(x) into a poisoned output.
Tensor run_backward(const Tensor& x, const Tensor& grad_out, Activation kind) {
  Tensor grad_in = Tensor::empty(x.shape(), DType::f32);
  test::poison(grad_in);
  kernels::cpu::activation_backward(x, grad_out, grad_in, kind);
  return grad_in;
}

TEST_F(ActivationTest, BackwardTinyMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("tiny.x"), grad_out = golden_->view("tiny.grad_out");
  for (Activation kind : kAll) {
    const std::string name(kernels::activation_name(kind));
    SCOPED_TRACE(name);
    const test::ErrorStats e = test::compare(run_backward(x, grad_out, kind), golden_->view("tiny.grad_" + name));
    std::printf("tiny grad %s: %s\n", name.c_str(), test::describe(e).c_str());
    EXPECT_EQ(e.nonfinite, 0);
    EXPECT_LE(e.rel_l2, 1e-6);
    EXPECT_LE(e.max_abs, 1e-6);  // |grad_out| < 5 times |f'| < 1.2: an ulp or two
  }
}

// Upstream gradient 1 on the edge values: f'(x) element by element, NaN and infinities as in PyTorch.
TEST_F(ActivationTest, BackwardEdgeValuesMatchPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->view("edge.x");
  for (Activation kind : kAll) {
    const std::string name(kernels::activation_name(kind));
    const Tensor out = run_backward(x, golden_->view("edge.grad_out"), kind), ref = golden_->view("edge.grad_" + name);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float o = out.data<float>()[i], r = ref.data<float>()[i];
      SCOPED_TRACE(str_cat(name, "'(", x.data<float>()[i], ") = ", o, ", PyTorch ", r));
      if (std::isnan(r))
        EXPECT_TRUE(std::isnan(o));
      else if (std::isinf(r))
        EXPECT_EQ(o, r);  // exp' overflows exactly where PyTorch's does
      else
        EXPECT_LE(std::fabs(double(o) - r), 1e-6 * std::max(1.0, std::fabs(double(r))));
    }
  }
}

TEST_F(ActivationTest, BackwardGeluRealShapeMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor x = golden_->load("real.x", DType::f32);
  const Tensor grad_in = run_backward(x, test::counter_uniform(x.shape(), 1), Activation::gelu);
  const test::RowBlockErrors e = test::compare_row_blocks(grad_in, *golden_, "real.grad_gelu");
  EXPECT_EQ(e.nonfinite, 0);
  for (const auto& b : e.blocks) {
    std::printf("real grad gelu rows [%lld, %lld): %s\n", static_cast<long long>(b.begin),
                static_cast<long long>(b.end), test::describe(b.error).c_str());
    EXPECT_LE(b.error.rel_l2, 1e-6);
    EXPECT_LE(b.error.max_abs, 1e-6);  // |grad_out| < 1, |gelu'| < 1.13
  }
}

TEST_F(ActivationTest, BackwardInPlaceOverGradOut) {
  SCOPED_TRACE(seed_trace_);
  Tensor g = golden_->view("tiny.grad_out").to(Device::cpu());
  kernels::activation_backward(golden_->view("tiny.x"), g, g, Activation::softplus);
  EXPECT_LE(test::compare(g, golden_->view("tiny.grad_softplus")).max_abs, 1e-6);
}

TEST_F(ActivationTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 5}, DType::f32), g = Tensor::zeros({4, 5}, DType::f32);
  Tensor grad_in = Tensor::empty({4, 5}, DType::f32);
  kernels::activation_backward(x, g, grad_in, Activation::gelu);  // the valid baseline
  EXPECT_THROW(kernels::activation_backward(Tensor::zeros({5, 4}, DType::f32), g, grad_in, Activation::gelu), Error);
  EXPECT_THROW(kernels::activation_backward(x, Tensor::zeros({20}, DType::f32), grad_in, Activation::gelu), Error);
  Tensor wrong_dtype = Tensor::empty({4, 5}, DType::f16);
  EXPECT_THROW(kernels::activation_backward(x, g, wrong_dtype, Activation::relu), Error);
}

TEST_F(ActivationTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 5}, DType::f32);
  Tensor wrong_shape = Tensor::empty({5, 4}, DType::f32);
  EXPECT_THROW(kernels::activation(x, wrong_shape, Activation::relu), Error);
  Tensor wrong_dtype = Tensor::empty({4, 5}, DType::bf16);
  EXPECT_THROW(kernels::activation(x, wrong_dtype, Activation::gelu), Error);
}

// ---- CUDA against the CPU reference on the same inputs (rounded to the storage dtype) ----

// Every kind at 1, 31 (scalar path) and the DINOv2 MLP's 1025 x 4096 (16-byte vectors), into a fresh output
// and in place. Inputs span [-25, 25]: both sides of softplus's threshold and sigmoid's saturation.
TEST(ActivationCuda, MatchesCpuForEveryKindAndSize) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : {Shape{1}, Shape{31}, Shape{1025, 4096}}) {
      const Tensor x = test::random_host(shape, dtype, -25.f, 25.f);
      const Tensor x_cuda = test::to_cuda(x, dtype);
      for (Activation kind : kAll) {
        const std::string what = str_cat(kernels::activation_name(kind), " ", shape.str());
        Tensor ref = Tensor::empty(shape, DType::f32);
        kernels::cpu::activation(x, ref, kind);
        Tensor out = test::poisoned_cuda(shape, dtype);
        kernels::activation(x_cuda, out, kind);
        test::expect_cuda_close(out, ref, what);
        Tensor in_place = test::to_cuda(x, dtype);
        kernels::activation(in_place, in_place, kind);
        test::expect_cuda_close(in_place, ref, what + " in place");
      }
    }
  }
}

// Element by element against the CPU on overflow, threshold, infinity, NaN and signed-zero inputs: NaN where
// the reference gives NaN, the same infinity, otherwise within a few f32 ulp (bf16: one output rounding).
TEST(ActivationCuda, EdgeValuesMatchCpu) {
  MFUSER_REQUIRE_CUDA();
  const float inf = INFINITY;
  const std::vector<float> values = {-inf, inf, NAN,  -1e30f, 1e30f, -88.f, 88.f, -30.f, 30.f, -20.5f, 20.5f,
                                     20.f, -20.f, -9.f, 9.f,   -1e-6f, 1e-6f, 0.f,  -0.f,  0.5f,   -0.5f};
  for (DType dtype : test::kCudaDtypes) {
    const Tensor x = test::representable(Tensor::from_vector(values, {int64_t(values.size())}), dtype);
    const double tol = dtype == DType::bf16 ? 1.0 / 256 : 1e-6;
    for (Activation kind : kAll) {
      Tensor ref = Tensor::empty(x.shape(), DType::f32);
      kernels::cpu::activation(x, ref, kind);
      Tensor out = test::poisoned_cuda(x.shape(), dtype);
      kernels::activation(test::to_cuda(x, dtype), out, kind);
      const Tensor got = kernels::cast_to(out.to(Device::cpu()), DType::f32);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const float o = got.data<float>()[i], r = ref.data<float>()[i];
        SCOPED_TRACE(str_cat(kernels::activation_name(kind), "(", x.data<float>()[i], ") = ", o, ", CPU ", r, " (",
                             dtype_name(dtype), ")"));
        if (std::isnan(r))
          EXPECT_TRUE(std::isnan(o));
        else if (std::isinf(r))
          EXPECT_EQ(o, r);
        else
          EXPECT_LE(std::fabs(double(o) - r), tol * std::max(1.0, std::fabs(double(r))));
      }
    }
  }
}

TEST(ActivationCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x16 = test::to_cuda(Tensor::zeros({4, 5}, DType::f32), DType::bf16);
  Tensor out16 = test::poisoned_cuda({4, 5}, DType::bf16), out32 = test::poisoned_cuda({4, 5}, DType::f32);
  kernels::activation(x16, out16, Activation::gelu);  // the valid baseline
  EXPECT_THROW(kernels::activation(x16, out32, Activation::gelu), Error);
}

// activation_backward on CUDA (f32 derivatives) against the f64 CPU reference, out of place and in place
// over grad_out; inputs across the softplus threshold and exp's range up to e^25.
TEST(ActivationCuda, BackwardMatchesCpuForEveryKind) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : {Shape{1}, Shape{31}, Shape{1025, 4096}}) {
      const Tensor x = test::random_host(shape, dtype, -25.f, 25.f), g = test::random_host(shape, dtype);
      const Tensor x_cuda = test::to_cuda(x, dtype);
      for (Activation kind : kAll) {
        const std::string what = str_cat(kernels::activation_name(kind), "_backward ", shape.str());
        Tensor ref = Tensor::empty(shape, DType::f32);
        kernels::cpu::activation_backward(x, g, ref, kind);
        Tensor out = test::poisoned_cuda(shape, dtype);
        kernels::activation_backward(x_cuda, test::to_cuda(g, dtype), out, kind);
        test::expect_cuda_close(out, ref, what);
        Tensor in_place = test::to_cuda(g, dtype);
        kernels::activation_backward(x_cuda, in_place, in_place, kind);
        test::expect_cuda_close(in_place, ref, what + " in place");
      }
    }
  }
}

TEST(ActivationCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x16 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::bf16);
  const Tensor g32 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::f32);
  Tensor out16 = test::poisoned_cuda({4, 6}, DType::bf16), out32 = test::poisoned_cuda({4, 6}, DType::f32);
  kernels::activation_backward(x16, x16, out16, Activation::gelu);  // the valid baseline
  EXPECT_THROW(kernels::activation_backward(x16, g32, out16, Activation::gelu), Error);
  EXPECT_THROW(kernels::activation_backward(x16, x16, out32, Activation::silu), Error);
}

}  // namespace
}  // namespace mfuser
