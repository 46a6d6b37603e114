// rmsnorm_gated: Mamba's gated RMSNorm with the norm before the gate (MVFuser's `norm(y, z)`, eps 1e-5):
//   out = x * rsqrt(mean(x^2 over the last dim) + eps) * weight * silu(z),   silu(z) = z * sigmoid(z).
// It equals mamba_ssm's RMSNorm(norm_before_gate=True, group_size=None); PyTorch has no single op for it.
//
// Contract: x, z and out are f32 (or bf16 on CUDA) [..., D] of the same shape (any leading dims, D >= 1);
// weight is [D] of x's dtype; all on one device. The mean of squares is over the D elements of a row (no mean
// subtraction, no bias), accumulated in double on the CPU, in f32 on CUDA. MVFuser's rows are half its width:
// 512 in the backbone adapters (2 x 1025 tokens), 128 in the context decoder's MTEnhancer (19 + 1025 + 19).
//
// rmsnorm_gated_backward (CPU and CUDA): gradients given grad_out (x's shape). x, z, weight, grad_out and every
// gradient share one dtype: f32 (or bf16 on CUDA). Nothing is saved from the forward: the row's
// rstd = rsqrt(mean(x^2) + eps) is recomputed from x (in double on the CPU, f32 on CUDA; one pass).
// With g = grad_out * weight * silu(z):
//   grad_x      x's shape, required:  rstd * g - x * rstd^3 * mean(g * x)
//   grad_z      x's shape, required:  grad_out * x * rstd * weight * silu'(z),
//                                     silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
//   grad_weight [D], optional:        sum over rows of grad_out * x * rstd * silu(z)
// An undefined grad_weight is not computed. Every gradient output is OVERWRITTEN, never accumulated into. The
// row sums are deterministic: in double in a fixed order on the CPU; on CUDA in f32, per-block partial sums in
// a fixed layout then one column-sum kernel (no atomics). On CUDA grad_x / grad_z may be the memory of x, z or
// grad_out (each element is read and written by one thread).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);
void rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                            Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps);

namespace cpu {
void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);
void rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                            Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps);
}
// The CUDA launchers (rmsnorm_gated.cu); call them through the dispatchers above, which check the shapes.
namespace cuda {
void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);
void rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                            Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps);
}

}  // namespace mfuser::kernels
