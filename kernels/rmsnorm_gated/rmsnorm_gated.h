// rmsnorm_gated: Mamba's gated RMSNorm with the norm before the gate (MVFuser's `norm(y, z)`, eps 1e-5):
//   out = x * rsqrt(mean(x^2 over the last dim) + eps) * weight * silu(z),   silu(z) = z * sigmoid(z).
// It equals mamba_ssm's RMSNorm(norm_before_gate=True, group_size=None); PyTorch has no single op for it.
//
// Contract: x, z and out are f32 [..., D] of the same shape (any leading dims, D >= 1); weight is f32 [D]; all
// on one device. The mean of squares is over the D elements of a row (no mean subtraction, no bias) and is
// accumulated in double on the CPU.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);

namespace cpu {
void rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps);
}

}  // namespace mfuser::kernels
