// gemm: C = alpha * op(A) @ op(B) + beta * C over a batch of row-major f32 matrices (OpenBLAS sgemm), and
// linear, the nn.Linear contract built on it.
//
// gemm(a, b, c, params): op(A) is m x k, op(B) is k x n, C is m x n. A is stored m x k, or k x m with
// trans_a (op(A) = A^T); B is stored k x n, or n x k with trans_b. Matrices are dense row-major (no padded
// leading dims). Matrix i of the batch starts at element i * stride_{a,b,c} of its tensor; stride 0 reuses
// one matrix for the whole batch (a weight broadcast over it); C's matrices must not overlap (stride_c >=
// m * n when batch > 1), nor may C overlap A or B. A tensor's shape is otherwise free (any view will do),
// as long as it holds its last matrix. beta == 0 means C is only written, never read, so NaN in an
// uninitialized C does not leak (the BLAS rule). Equals torch.baddbmm(C, op(A), op(B), beta=, alpha=).
//
// linear(x, weight, bias, y): y[..., N] = x[..., K] @ weight[N, K]^T + bias[N], F.linear. bias is an
// undefined Tensor() for none; y has x's leading dims. y must not overlap x or weight.
//
// cpu::gemm_naive: the same contract as a plain triple loop accumulating in f64: the tests' second
// reference, independent of OpenBLAS (slow: O(m n k) scalar work).
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace mfuser::kernels {

struct GemmParams {
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  float alpha = 1.f, beta = 0.f;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // elements between consecutive matrices of the batch
};

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y);

namespace cpu {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void gemm_naive(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y);
}  // namespace cpu

}  // namespace mfuser::kernels
