// groupnorm: group normalization with a per-channel affine, as F.group_norm(x, num_groups, weight, bias, eps)
// (the pixel decoder's GroupNorm(32, 256), eps 1e-5).
//
// Contract: x and out are f32 [N, C, *spatial] of the same shape (NCHW for images; any number of trailing
// dims, possibly none); num_groups divides C; weight and bias are f32 [C]; all on one device. The C channels
// split into num_groups consecutive groups; each (n, group) block of C/num_groups * spatial elements is
// normalized by its own mean and biased variance, then channel c is scaled by weight[c] and shifted by
// bias[c]. Statistics are accumulated in double on the CPU.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps);

namespace cpu {
void groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups, float eps);
}

}  // namespace mfuser::kernels
