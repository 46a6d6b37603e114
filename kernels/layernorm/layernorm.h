// layernorm: normalization over the last dim with an elementwise affine, as F.layer_norm(x, [D], weight, bias,
// eps) (the CLIP and DINOv2 blocks: eps 1e-5 for CLIP, 1e-6 for DINOv2).
//
// Contract: x and out are f32 [..., D] of the same shape (any leading dims, D >= 1); weight and bias are f32
// [D]; all on one device. Per row: out = (x - mean) / sqrt(var + eps) * weight + bias, var biased (divided by
// D). Statistics are accumulated in double on the CPU.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps);

namespace cpu {
void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps);
}

}  // namespace mfuser::kernels
