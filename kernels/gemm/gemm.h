// gemm: C = alpha * op(A) @ op(B) + beta * C over a batch of row-major f32 matrices (OpenBLAS sgemm), and
// linear, the nn.Linear contract built on it, with its backward.
//
// Dtypes: f32 (or bf16 on CUDA); every float tensor of one call (A, B, C; x, weight, bias, y) has the same
// dtype, so a bf16 linear needs bf16 weights and bias. CUDA (cuBLASLt) accumulates in f32 without TF32 in
// both storage types; bf16 outputs are rounded to nearest even.
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
// linear_backward(x, weight, grad_y, grad_x, grad_weight, grad_bias): the gradients of linear, from the
// upstream grad_y [..., N] (y's shape):
//   grad_x      [..., K] = grad_y @ weight                   needs weight
//   grad_weight [N, K]   = grad_y^T @ x over all leading dims needs x (saved from the forward)
//   grad_bias   [N]      = grad_y summed over all leading dims (f64 accumulation on the CPU; CUDA: f32,
//                          per-chunk partial sums in a fixed layout added in order, so run-to-run identical)
// Each gradient is wanted when its tensor is defined and skipped when it is an undefined Tensor(); x may be
// undefined when grad_weight is not wanted (a frozen weight need not keep its input alive). Every wanted
// gradient is OVERWRITTEN, never accumulated into (callers that sum over uses add the results themselves).
// Outputs must not overlap the inputs or each other. Runs on CUDA too (f32 or bf16, all tensors one dtype;
// grad_x and grad_weight are cuBLASLt gemms, f32 accumulation without TF32).
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
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias);

namespace cpu {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void gemm_naive(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias);
}  // namespace cpu

namespace cuda {
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmParams& params);
void linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& y);
void linear_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias);
}  // namespace cuda

}  // namespace mfuser::kernels
