// CPU gemm through OpenBLAS, the naive reference, linear, and the device dispatch (CUDA: gemm.cu).
#include "kernels/gemm/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <climits>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Throws unless `t` (matrix `what` of gemm) has C's float dtype and holds `batch` matrices of `elements`,
// `stride` apart.
void check_operand(const char* what, const Tensor& t, const Tensor& c, int64_t batch, int64_t stride,
                   int64_t elements) {
  check_float_like("gemm", what, t, c);
  MFUSER_CHECK(stride >= 0, "gemm: ", what, " stride ", stride, " is negative");
  const int64_t needed = elements == 0 ? 0 : (batch - 1) * stride + elements;
  MFUSER_CHECK(t.numel() >= needed, "gemm: ", what, " ", t.str(), " holds ", t.numel(), " elements; batch ",
               batch, " with stride ", stride, " of ", elements, "-element matrices needs ", needed);
}

void check_gemm(const Tensor& a, const Tensor& b, const Tensor& c, const GemmParams& p) {
  MFUSER_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0 && p.batch >= 1, "gemm: m ", p.m, ", n ", p.n, ", k ", p.k,
               ", batch ", p.batch, ": sizes must be non-negative and the batch at least 1");
  MFUSER_CHECK(p.m <= INT_MAX && p.n <= INT_MAX && p.k <= INT_MAX, "gemm: m ", p.m, ", n ", p.n, ", k ", p.k,
               ": BLAS takes 32-bit sizes");
  check_operand(p.trans_a ? "A (k x m)" : "A (m x k)", a, c, p.batch, p.stride_a, p.m * p.k);
  check_operand(p.trans_b ? "B (n x k)" : "B (k x n)", b, c, p.batch, p.stride_b, p.k * p.n);
  check_operand("C (m x n)", c, c, p.batch, p.stride_c, p.m * p.n);
  MFUSER_CHECK(p.batch == 1 || p.stride_c >= p.m * p.n, "gemm: C stride ", p.stride_c, " < m x n = ",
               p.m * p.n, ": the batch's outputs would overlap");
  MFUSER_CHECK(a.device() == c.device() && b.device() == c.device(), "gemm: A ", a.str(), ", B ", b.str(),
               ", C ", c.str(), ": devices differ");
}

// beta * C, where beta == 0 writes zeros without reading C (so NaN in C does not survive).
float scaled_output(float beta, float c) { return beta == 0.f ? 0.f : beta * c; }

void check_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& y) {
  check_float("linear", "y", y);
  check_float_like("linear", "x", x, y);
  check_float_like("linear", "weight", weight, y);
  MFUSER_CHECK(x.ndim() >= 1 && weight.ndim() == 2 && x.dim(-1) == weight.dim(1), "linear: x ", x.str(),
               " and weight ", weight.str(), ": need x [..., K] and weight [N, K]");
  Shape expected = x.shape();
  expected[-1] = weight.dim(0);
  MFUSER_CHECK(y.shape() == expected, "linear: x ", x.str(), " @ weight ", weight.str(), "^T needs y ",
               expected.str(), ", got ", y.str());
  MFUSER_CHECK(!bias.defined() || (bias.dtype() == y.dtype() && bias.shape() == Shape{weight.dim(0)}),
               "linear: bias ", bias.str(), " must be ", dtype_name(y.dtype()), " [", weight.dim(0), "]");
  MFUSER_CHECK(x.device() == y.device() && weight.device() == y.device() &&
                   (!bias.defined() || bias.device() == y.device()),
               "linear: x ", x.str(), ", weight ", weight.str(), ", y ", y.str(), ": devices differ");
}

}  // namespace

void cpu::gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& p) {
  check_gemm(a, b, c, p);
  MFUSER_CHECK(c.device().is_cpu(), "gemm: the CPU reference got device tensors ", c.str());
  if (p.m == 0 || p.n == 0) return;
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  for (int64_t i = 0; i < p.batch; ++i) {
    float* out = pc + i * p.stride_c;
    if (p.k == 0) {  // no products: only beta * C, which BLAS would refuse (zero leading dims)
      std::transform(out, out + p.m * p.n, out, [&](float v) { return scaled_output(p.beta, v); });
      continue;
    }
    cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans, p.trans_b ? CblasTrans : CblasNoTrans,
                int(p.m), int(p.n), int(p.k), p.alpha, pa + i * p.stride_a, int(p.trans_a ? p.m : p.k),
                pb + i * p.stride_b, int(p.trans_b ? p.k : p.n), p.beta, out, int(p.n));
  }
}

void cpu::gemm_naive(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& p) {
  check_gemm(a, b, c, p);
  MFUSER_CHECK(c.device().is_cpu(), "gemm_naive: the CPU reference got device tensors ", c.str());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  // One task per output row of the whole batch.
  parallel_for(p.batch * p.m, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t batch = row / p.m, i = row % p.m;
      const float* A = pa + batch * p.stride_a;
      const float* B = pb + batch * p.stride_b;
      float* C = pc + batch * p.stride_c + i * p.n;
      for (int64_t j = 0; j < p.n; ++j) {
        double sum = 0;
        for (int64_t q = 0; q < p.k; ++q) {
          const float a_iq = p.trans_a ? A[q * p.m + i] : A[i * p.k + q];
          const float b_qj = p.trans_b ? B[j * p.k + q] : B[q * p.n + j];
          sum += double(a_iq) * b_qj;
        }
        C[j] = float(p.alpha * sum + scaled_output(p.beta, C[j]));
      }
    }
  });
}

void cpu::linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y) {
  check_linear(x, weight, bias, y);
  MFUSER_CHECK(y.device().is_cpu(), "linear: the CPU reference got device tensors ", y.str());
  const int64_t n = weight.dim(0), k = weight.dim(1), rows = y.numel() / std::max<int64_t>(n, 1);
  GemmParams p{.m = rows, .n = n, .k = k, .trans_b = true};
  if (bias.defined()) {
    // Start every row of y at the bias and accumulate the product onto it: one pass over y, no second add.
    const float* pb = bias.data<float>();
    float* py = y.data<float>();
    parallel_for(rows, std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) std::copy_n(pb, n, py + r * n);
    });
    p.beta = 1.f;
  }
  cpu::gemm(x, weight, y, p);
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params) {
  check_gemm(a, b, c, params);
  if (c.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::gemm(a, b, c, params));
  cpu::gemm(a, b, c, params);
}

void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y) {
  check_linear(x, weight, bias, y);
  if (y.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::linear(x, weight, bias, y));
  cpu::linear(x, weight, bias, y);
}

}  // namespace mfuser::kernels
