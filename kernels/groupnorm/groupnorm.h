// groupnorm: group normalization with a per-channel affine, as F.group_norm(x, num_groups, weight, bias, eps)
// (the pixel decoder's GroupNorm(32, 256), eps 1e-5).
//
// Contract: x and out are f32 (or bf16 on CUDA) [N, C, *spatial] of the same shape (NCHW for images; any
// number of trailing dims, possibly none); num_groups divides C; weight and bias are [C] of x's dtype; all on
// one device. The C channels split into num_groups consecutive groups; each (n, group) block of
// C/num_groups * spatial elements is normalized by its own mean and biased variance, then channel c is scaled
// by weight[c] and shifted by bias[c]. Statistics are accumulated in double on the CPU, in f32 on CUDA (two
// passes, shifted by the block's first value).
//
// groupnorm_backward (CPU and CUDA): gradients given grad_out (x's shape). x, weight, grad_out and every
// gradient share one dtype: f32 (or bf16 on CUDA). Nothing is saved from the forward: each block's mean and
// rstd are recomputed from x (in double on the CPU; in f32 on CUDA, two passes shifted as in the forward).
// Per (n, group) block, with xhat = (x - mean) * rstd and g = grad_out * weight[channel]:
//   grad_x      x's shape, required:  rstd * (g - mean(g) - xhat * mean(g * xhat)), means over the block
//   grad_weight [C], optional:        sum over n and spatial of grad_out * xhat
//   grad_bias   [C], optional:        sum over n and spatial of grad_out
// An undefined grad_weight / grad_bias is not computed. Every gradient output is OVERWRITTEN, never
// accumulated into. The sums are deterministic: in double in a fixed order on the CPU; on CUDA in f32, per
// (image, channel) block sums in a fixed layout, then summed over images in order (no atomics). On CUDA grad_x
// may be grad_out's memory.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps);
void groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                        Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps);

namespace cpu {
void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps);
void groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                        Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps);
}
// The CUDA launchers (groupnorm.cu); call them through the dispatchers above, which check the shapes.
namespace cuda {
void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps);
void groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                        Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps);
}

}  // namespace mfuser::kernels
