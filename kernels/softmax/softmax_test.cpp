// softmax: against PyTorch's f64 softmax for every mask kind and broadcast, fully masked rows (NaN, as in
// PyTorch), the ViT self-attention size and the Mask2Former decoder's masked cross-attention size. CUDA
// kernel (f32 and bf16) vs the CPU reference for row lengths 1 to 4097 and every mask kind.
#include "kernels/softmax/softmax.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/cast/cast.h"
#include "loaders/safetensors.h"
#include "tests/common/counter_random.h"
#include "tests/common/cuda_test.h"
#include "tests/common/row_blocks.h"
#include "tests/common/test_util.h"

namespace mfuser {
namespace {

// Cases of softmax_golden.py stored whole: `<name>.x`, optional `<name>.mask`, `<name>.out`.
const char* const kCases[] = {"tiny.plain",       "tiny.large_logits", "tiny.additive", "tiny.causal",
                              "tiny.key_padding", "tiny.bool_full",    "real.decoder"};

// Probabilities are at most 1: a few ulp of 1 at most.
constexpr double kMaxAbs = 1e-6;

struct RowErrors {
  test::ErrorStats finite;     // over the rows PyTorch computes
  int64_t nan_rows = 0;        // rows PyTorch makes NaN (fully masked)
  int64_t nan_mismatches = 0;  // elements of those rows that are not NaN here
};

// Row by row: a row PyTorch makes NaN must be NaN throughout here; all other rows are compared together.
RowErrors compare_rows(const Tensor& out, const Tensor& ref) {
  const int64_t cols = ref.dim(-1), rows = ref.numel() / cols;
  const float* po = out.data<float>();
  const float* pr = ref.data<float>();
  std::vector<float> kept_out, kept_ref;
  RowErrors e;
  for (int64_t r = 0; r < rows; ++r) {
    const float *o = po + r * cols, *ref_row = pr + r * cols;
    if (std::isnan(ref_row[0])) {
      ++e.nan_rows;
      for (int64_t j = 0; j < cols; ++j) e.nan_mismatches += !std::isnan(o[j]);
    } else {
      kept_out.insert(kept_out.end(), o, o + cols);
      kept_ref.insert(kept_ref.end(), ref_row, ref_row + cols);
    }
  }
  const Shape kept{int64_t(kept_ref.size())};
  e.finite = test::compare(Tensor::from_vector(kept_out, kept), Tensor::from_vector(kept_ref, kept));
  return e;
}

class SoftmaxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    golden_ = std::make_unique<SafetensorsReader>(test::golden_path("softmax"));
    seed_trace_ = "golden seed " + golden_->metadata().at("seed");
  }
  Tensor run(const std::string& name) const {
    const Tensor x = golden_->load(name + ".x", DType::f32);  // real sizes store x as f16, exact in f32
    const Tensor mask = golden_->contains(name + ".mask") ? golden_->view(name + ".mask") : Tensor();
    Tensor out = Tensor::empty(x.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::softmax(x, mask, out);
    return out;
  }
  std::unique_ptr<SafetensorsReader> golden_;
  std::string seed_trace_;
};

TEST_F(SoftmaxTest, MatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const char* name : kCases) {
    SCOPED_TRACE(name);
    const RowErrors e = compare_rows(run(name), golden_->view(std::string(name) + ".out"));
    std::printf("%s: %s, NaN rows %lld\n", name, test::describe(e.finite).c_str(),
                static_cast<long long>(e.nan_rows));
    EXPECT_EQ(e.nan_mismatches, 0);
    EXPECT_EQ(e.finite.nonfinite, 0);
    EXPECT_LE(e.finite.rel_l2, 1e-5);
    EXPECT_LE(e.finite.max_abs, kMaxAbs);
  }
}

TEST_F(SoftmaxTest, FullyMaskedRowsAreNaNLikePyTorch) {
  SCOPED_TRACE(seed_trace_);
  // tiny.additive masks one query row in each of 2 x 3 heads; tiny.bool_full masks two rows.
  EXPECT_EQ(compare_rows(run("tiny.additive"), golden_->view("tiny.additive.out")).nan_rows, 6);
  EXPECT_EQ(compare_rows(run("tiny.bool_full"), golden_->view("tiny.bool_full.out")).nan_rows, 2);
}

// ViT self-attention: 16 heads x 1025 queries x 1025 keys; PyTorch's rows are stored in blocks.
TEST_F(SoftmaxTest, VitAttentionSizeMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor out = run("real.vit");
  const test::RowBlockErrors e = test::compare_row_blocks(out, *golden_, "real.vit");
  EXPECT_EQ(e.nonfinite, 0);
  for (const auto& b : e.blocks) {
    SCOPED_TRACE(str_cat("rows [", b.begin, ", ", b.end, ")"));
    std::printf("real.vit rows [%lld, %lld): %s\n", static_cast<long long>(b.begin),
                static_cast<long long>(b.end), test::describe(b.error).c_str());
    EXPECT_LE(b.error.rel_l2, 1e-5);
    EXPECT_LE(b.error.max_abs, kMaxAbs);
  }
  // The rows not stored must at least be distributions.
  const float* p = out.data<float>();
  for (int64_t r = 0; r < out.numel() / 1025; ++r) {
    double sum = 0;
    for (int64_t j = 0; j < 1025; ++j) sum += p[r * 1025 + j];
    ASSERT_NEAR(sum, 1.0, 1e-5) << "row " << r;
  }
}

TEST_F(SoftmaxTest, InPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor x = golden_->view("tiny.causal.x").to(Device::cpu());
  kernels::softmax(x, golden_->view("tiny.causal.mask"), x);
  EXPECT_LE(test::compare(x, golden_->view("tiny.causal.out")).max_abs, kMaxAbs);
}

Tensor run_backward(const Tensor& y, const Tensor& grad_out) {
  Tensor grad_in = Tensor::empty(y.shape(), DType::f32);
  test::poison(grad_in);
  kernels::cpu::softmax_backward(y, grad_out, grad_in);
  return grad_in;
}

// Compares out with ref except in the rows where y is NaN (the forward's fully masked rows, out of the
// backward's contract: PyTorch's boolean masked_fill gives them zeros, its additive mask NaN, we NaN).
RowErrors compare_rows_in_contract(const Tensor& out, const Tensor& ref, const Tensor& y) {
  Tensor o = out.to(Device::cpu()), r = ref.to(Device::cpu());
  const int64_t cols = y.dim(-1);
  RowErrors e;
  for (int64_t row = 0; row < y.numel() / cols; ++row) {
    if (!std::isnan(y.data<float>()[row * cols])) continue;
    ++e.nan_rows;
    std::fill_n(o.data<float>() + row * cols, cols, 0.f);
    std::fill_n(r.data<float>() + row * cols, cols, 0.f);
  }
  e.finite = test::compare(o, r);
  return e;
}

// ||y * grad_out|| over the rows PyTorch computes: the size of the terms grad_x = y * (grad_out - <y, grad_out>)
// cancels. With saturated rows (tiny.large_logits: y one-hot but for a ~1e-15 entry in some draws) grad_x is
// rounding noise of that size, and its own norm no scale for the error.
double cancelled_terms_norm(const Tensor& y, const Tensor& grad_out) {
  const Tensor g = grad_out.to(Device::cpu());
  double sum = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const double yi = y.data<float>()[i];
    if (!std::isnan(yi)) sum += yi * yi * double(g.data<float>()[i]) * double(g.data<float>()[i]);
  }
  return std::sqrt(sum);
}

// From PyTorch's saved output y (`<case>.out`) and upstream gradient, against its f64 autograd: relative to the
// gradient, or to the terms it cancels where that is larger.
TEST_F(SoftmaxTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  for (const std::string name : kCases) {
    SCOPED_TRACE(name);
    const Tensor y = golden_->view(name + ".out");
    const Tensor grad_out = golden_->contains(name + ".grad_out") ? golden_->view(name + ".grad_out")
                                                                  : test::counter_uniform(y.shape(), 1);
    const RowErrors e = compare_rows_in_contract(run_backward(y, grad_out), golden_->view(name + ".grad_x"), y);
    std::printf("%s grad_x: %s, NaN rows %lld (out of contract)\n", name.c_str(), test::describe(e.finite).c_str(),
                static_cast<long long>(e.nan_rows));
    EXPECT_EQ(e.finite.nonfinite, 0);
    EXPECT_LE(e.finite.diff_l2, 1e-5 * std::max(e.finite.ref_l2, cancelled_terms_norm(y, grad_out)));
    EXPECT_LE(e.finite.max_abs, 1e-6);  // y <= 1 times |grad_out - dot| < 10, y rounded to f32
  }
}

// Masked entries (y = 0) get exactly zero gradient.
TEST_F(SoftmaxTest, BackwardZeroAtMaskedEntries) {
  SCOPED_TRACE(seed_trace_);
  const Tensor y = golden_->view("real.decoder.out"), mask = golden_->view("real.decoder.mask");
  const Tensor grad_in = run_backward(y, test::counter_uniform(y.shape(), 1));
  int64_t masked = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    if (!mask.data<bool>()[i]) continue;
    ++masked;
    ASSERT_EQ(grad_in.data<float>()[i], 0.f) << "element " << i;
  }
  EXPECT_GT(masked, 0);
}

// ViT self-attention size: y from the forward (checked against PyTorch above), gradient in row blocks.
TEST_F(SoftmaxTest, BackwardVitAttentionSizeMatchesPyTorch) {
  SCOPED_TRACE(seed_trace_);
  const Tensor y = run("real.vit");
  const Tensor grad_in = run_backward(y, test::counter_uniform(y.shape(), 2));
  const test::RowBlockErrors e = test::compare_row_blocks(grad_in, *golden_, "real.vit.grad_x");
  EXPECT_EQ(e.nonfinite, 0);
  for (const auto& b : e.blocks) {
    std::printf("real.vit grad_x rows [%lld, %lld): %s\n", static_cast<long long>(b.begin),
                static_cast<long long>(b.end), test::describe(b.error).c_str());
    EXPECT_LE(b.error.rel_l2, 1e-5);
    EXPECT_LE(b.error.max_abs, 1e-6);
  }
}

TEST_F(SoftmaxTest, BackwardInPlace) {
  SCOPED_TRACE(seed_trace_);
  Tensor g = golden_->view("tiny.causal.grad_out").to(Device::cpu());
  kernels::softmax_backward(golden_->view("tiny.causal.out"), g, g);
  EXPECT_LE(test::compare(g, golden_->view("tiny.causal.grad_x")).max_abs, 1e-6);
}

TEST_F(SoftmaxTest, BackwardRejectsBadArguments) {
  const Tensor y = Tensor::zeros({2, 3, 5}, DType::f32), g = Tensor::zeros({2, 3, 5}, DType::f32);
  Tensor grad_in = Tensor::empty({2, 3, 5}, DType::f32);
  kernels::softmax_backward(y, g, grad_in);  // the valid baseline
  EXPECT_THROW(kernels::softmax_backward(Tensor::zeros({2, 15}, DType::f32), g, grad_in), Error);
  EXPECT_THROW(kernels::softmax_backward(y, Tensor::zeros({2, 3, 4}, DType::f32), grad_in), Error);
  Tensor int_grad = Tensor::empty({2, 3, 5}, DType::i32);
  EXPECT_THROW(kernels::softmax_backward(y, g, int_grad), Error);
}

TEST_F(SoftmaxTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({2, 3, 5}, DType::f32);
  Tensor out = Tensor::empty({2, 3, 5}, DType::f32);
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({4}, DType::f32), out), Error);        // not broadcastable
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({1, 2, 3, 5}, DType::f32), out), Error);  // more dims
  EXPECT_THROW(kernels::softmax(x, Tensor::zeros({5}, DType::i32), out), Error);        // mask dtype
  Tensor wrong_out = Tensor::empty({2, 15}, DType::f32);
  EXPECT_THROW(kernels::softmax(x, Tensor(), wrong_out), Error);
}

// ---- CUDA kernel vs the CPU reference ----------------------------------------------------------------------

enum class CudaMask { none, bool_rows, additive, key_padding, per_row_bias };

// x is [2, 3, 4, n]. bool_rows: [2, 1, 4, n], about half masked, and its first row (x rows of b 0, i 0)
// fully masked -> NaN rows. additive: [4, n] biases in [-3, 3), about a quarter -inf. key_padding:
// [2, 1, 1, n], the last quarter of the keys. per_row_bias: [2, 3, 4, 1] (broadcast along the row: the
// softmax is unchanged). One key per row (j = 0) stays unmasked except in the fully masked row.
Tensor make_cuda_mask(CudaMask kind, int64_t n, DType dtype) {
  std::bernoulli_distribution half(0.5), quarter(0.25);
  switch (kind) {
    case CudaMask::none: return Tensor();
    case CudaMask::bool_rows: {
      Tensor m = Tensor::zeros({2, 1, 4, n}, DType::boolean);
      for (int64_t i = 0; i < m.numel(); ++i) m.data<bool>()[i] = i < n || (i % n != 0 && half(test::rng()));
      return m;
    }
    case CudaMask::additive: {
      Tensor m = test::random_host({4, n}, dtype, -3.f, 3.f);
      for (int64_t i = 0; i < m.numel(); ++i)
        if (i % n != 0 && quarter(test::rng())) m.data<float>()[i] = -INFINITY;
      return m;
    }
    case CudaMask::key_padding: {
      Tensor m = Tensor::zeros({2, 1, 1, n}, DType::boolean);
      for (int64_t i = 0; i < m.numel(); ++i) m.data<bool>()[i] = i % n != 0 && i % n >= n * 3 / 4;
      return m;
    }
    case CudaMask::per_row_bias: return test::random_host({2, 3, 4, 1}, dtype, -3.f, 3.f);
  }
  return Tensor();
}

Tensor mask_to_cuda(const Tensor& mask, DType dtype) {
  if (!mask.defined() || mask.dtype() != DType::boolean) return test::to_cuda(mask, dtype);
  return mask.to(Device::cuda());
}

// Rows the reference makes NaN must be NaN here; the others within the dtype's tolerance. Returns NaN rows.
int64_t expect_cuda_rows_close(const Tensor& out_cuda, const Tensor& ref, const std::string& what) {
  const RowErrors e = compare_rows(kernels::cast_to(out_cuda, DType::f32).to(Device::cpu()), ref);
  std::printf("[ errors   ] %s: %s, NaN rows %lld\n", what.c_str(), test::describe(e.finite).c_str(),
              static_cast<long long>(e.nan_rows));
  EXPECT_EQ(e.nan_mismatches, 0) << what;
  EXPECT_EQ(e.finite.nonfinite, 0) << what;
  EXPECT_LE(e.finite.rel_l2, test::cuda_tolerance(out_cuda.dtype())) << what;
  return e.nan_rows;
}

TEST(SoftmaxCuda, MatchesCpuReference) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const int64_t n : {1, 19, 1024, 4097}) {
      for (const CudaMask kind : {CudaMask::none, CudaMask::bool_rows, CudaMask::additive, CudaMask::key_padding,
                                  CudaMask::per_row_bias}) {
        const std::string what = str_cat("softmax n ", n, " mask ", int(kind), " ", dtype_name(dtype));
        SCOPED_TRACE(what);
        const Tensor x = test::random_host({2, 3, 4, n}, dtype, -4.f, 4.f);
        const Tensor mask = make_cuda_mask(kind, n, dtype);
        Tensor ref = Tensor::empty(x.shape(), DType::f32);
        kernels::cpu::softmax(x, mask, ref);
        // The poison is NaN: where NaN rows are expected the output starts as zeros, so they must be written.
        const bool nan_rows = kind == CudaMask::bool_rows;
        Tensor out =
            nan_rows ? Tensor::zeros(x.shape(), dtype, Device::cuda()) : test::poisoned_cuda(x.shape(), dtype);
        kernels::softmax(test::to_cuda(x, dtype), mask_to_cuda(mask, dtype), out);
        EXPECT_EQ(expect_cuda_rows_close(out, ref, what), nan_rows ? 3 : 0);
      }
    }
  }
}

TEST(SoftmaxCuda, InPlace) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    const Tensor x = test::random_host({2, 3, 4, 1025}, dtype, -4.f, 4.f);
    const Tensor mask = make_cuda_mask(CudaMask::additive, 1025, dtype);
    Tensor ref = Tensor::empty(x.shape(), DType::f32);
    kernels::cpu::softmax(x, mask, ref);
    Tensor inout = test::to_cuda(x, dtype);
    kernels::softmax(inout, mask_to_cuda(mask, dtype), inout);
    expect_cuda_rows_close(inout, ref, str_cat("softmax in place ", dtype_name(dtype)));
  }
}

TEST(SoftmaxCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x32 = Tensor::zeros({2, 5}, DType::f32, Device::cuda());
  const Tensor x16 = kernels::cast_to(x32, DType::bf16);
  Tensor out16 = Tensor::empty({2, 5}, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty({2, 5}, DType::f32, Device::cuda());
  kernels::softmax(x16, x16, out16);                                                      // bf16 additive mask
  EXPECT_THROW(kernels::softmax(x16, Tensor(), out32), Error);                            // f32 out, bf16 x
  EXPECT_THROW(kernels::softmax(x16, x32, out16), Error);                                 // f32 additive mask
  EXPECT_THROW(kernels::softmax(x16, Tensor::zeros({5}, DType::boolean), out16), Error);  // host mask
}

// softmax_backward on CUDA against the CPU reference, from a real softmax output y (with masked zeros):
// attention rows (16 heads x 1025 x 1025), odd widths, one-wide rows, and in place over grad_out and y.
TEST(SoftmaxCuda, BackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const Shape& shape : {Shape{16, 1025, 1025}, Shape{3, 7, 33}, Shape{5, 1}, Shape{2, 300}, Shape{1, 4099}}) {
      const int64_t n = shape[-1];
      const Tensor x = test::random_host(shape, dtype, -4.f, 4.f);
      Tensor mask = Tensor::zeros({n}, DType::boolean);
      for (int64_t j = 1; j < n; j += 3) mask.data<bool>()[j] = true;  // masked logits: y = 0 there
      Tensor y = Tensor::empty(shape, DType::f32);
      kernels::cpu::softmax(x, mask, y);
      y = test::representable(y, dtype);
      const Tensor g = test::random_host(shape, dtype);
      Tensor ref = Tensor::empty(shape, DType::f32);
      kernels::cpu::softmax_backward(y, g, ref);
      const std::string what = str_cat("softmax_backward ", shape.str());
      const Tensor y_cuda = test::to_cuda(y, dtype);
      Tensor out = test::poisoned_cuda(shape, dtype);
      kernels::softmax_backward(y_cuda, test::to_cuda(g, dtype), out);
      test::expect_cuda_close(out, ref, what);
      Tensor over_g = test::to_cuda(g, dtype);
      kernels::softmax_backward(y_cuda, over_g, over_g);
      test::expect_cuda_close(over_g, ref, what + " in place over grad_out");
      Tensor over_y = test::to_cuda(y, dtype);
      kernels::softmax_backward(over_y, test::to_cuda(g, dtype), over_y);
      test::expect_cuda_close(over_y, ref, what + " in place over y");
    }
  }
}

TEST(SoftmaxCuda, BackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor y16 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::bf16);
  const Tensor g32 = test::to_cuda(Tensor::zeros({4, 6}, DType::f32), DType::f32);
  Tensor out16 = test::poisoned_cuda({4, 6}, DType::bf16);
  kernels::softmax_backward(y16, y16, out16);  // the valid baseline
  EXPECT_THROW(kernels::softmax_backward(y16, g32, out16), Error);
}

}  // namespace
}  // namespace mfuser
