// rmsnorm_gated: Mamba's gated RMSNorm with the norm before the gate (MVFuser's `norm(y, z)`, eps 1e-5):
//   out = x * rsqrt(mean(x^2 over the last dim) + eps) * weight * silu(z),   silu(z) = z * sigmoid(z).
// It equals mamba_ssm's RMSNorm(norm_before_gate=True, group_size=None); PyTorch has no single op for it.
//
// Contract: x, z and out are f32 (or bf16 on CUDA) [..., D] of the same shape (any leading dims, D >= 1);
// weight is [D] of x's dtype; all on one device. The mean of squares is over the D elements of a row (no mean
// subtraction, no bias), accumulated in double on the CPU, in f32 on CUDA. MVFuser's rows are half its width:
// 512 in the backbone adapters (2 x 1025 tokens), 128 in the context decoder's MTEnhancer (19 + 1025 + 19).
//
// rmsnorm_gated_backward (f32 only, CPU only so far): gradients given grad_out (f32, x's shape). Nothing is
// saved from the forward: the row's rstd = rsqrt(mean(x^2) + eps) is recomputed from x in double (one pass;
// cheap on the CPU). With g = grad_out * weight * silu(z):
//   grad_x      f32, x's shape, required:  rstd * g - x * rstd^3 * mean(g * x)
//   grad_z      f32, x's shape, required:  grad_out * x * rstd * weight * silu'(z),
//                                           silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z)))
//   grad_weight f32 [D], optional:         sum over rows of grad_out * x * rstd * silu(z)
// An undefined grad_weight is not computed. Every gradient output is OVERWRITTEN, never accumulated into; the
// row sums are in double in a fixed order (deterministic results).
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
// The CUDA forward launcher (rmsnorm_gated.cu); call it through the dispatcher above, which checks the shapes.
namespace cuda {
void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);
}

}  // namespace mfuser::kernels
