// layernorm: normalization over the last dim with an elementwise affine, as F.layer_norm(x, [D], weight, bias,
// eps) (the CLIP and DINOv2 blocks: eps 1e-5 for CLIP, 1e-6 for DINOv2).
//
// Contract: x and out are f32 (or bf16 on CUDA) [..., D] of the same shape (any leading dims, D >= 1); weight
// and bias are [D] of x's dtype; all on one device. Per row: out = (x - mean) / sqrt(var + eps) * weight + bias,
// var biased (divided by D). Statistics are accumulated in double on the CPU, in f32 on CUDA (two passes,
// shifted by the row's first value, so |mean| >> std costs no digits).
//
// The overload with `mean` and `rstd` also writes each row's statistics (f32 [rows] whatever x's dtype,
// rows = x.numel() / D, rstd = 1 / sqrt(var + eps)) for the backward to reuse.
//
// layernorm_backward (CPU and CUDA): gradients of the forward above given grad_out (x's shape). x, weight,
// grad_out and every gradient share one dtype: f32 (or bf16 on CUDA). Saved statistics are optional: pass the
// forward's `mean` and `rstd` (both, f32 [rows]) or two undefined tensors to recompute them from x (in double
// on the CPU; on CUDA in f32 inside the kernel, two passes shifted as in the forward: one extra read of the
// row). Recomputing is exact on the CPU, whereas the saved f32 mean loses digits when |mean| >> std.
//   grad_x      x's shape, required:   rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_out * weight
//   grad_weight [D], optional:         sum over rows of grad_out * xhat
//   grad_bias   [D], optional:         sum over rows of grad_out
// An undefined grad_weight / grad_bias is not computed (a frozen norm). Every gradient output is
// OVERWRITTEN, never accumulated into. Row sums are deterministic: in double in a fixed order on the CPU; on
// CUDA in f32, per-block partial sums in a fixed layout then one column-sum kernel (no atomics). grad_x may be
// the memory of grad_out (each element is read and written by one thread).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps);
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, Tensor& mean,
               Tensor& rstd);
void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);

namespace cpu {
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps);
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, Tensor& mean,
               Tensor& rstd);
void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);
}
// The CUDA launchers (layernorm.cu); call them through the dispatchers above, which check the shapes.
namespace cuda {
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps);
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, Tensor& mean,
               Tensor& rstd);
void layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                        const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps);
}

}  // namespace mfuser::kernels
