// dwconv1d: depthwise 1-D convolution over a token sequence with 'same' zero padding, in the tokens-major
// layout the Mamba (MVFuser) block has after in_proj. It equals
//   F.conv1d(x.transpose(1, 2), weight, bias, padding='same', groups=C).transpose(1, 2)
// (MVFuser's conv1d_x / conv1d_z: K = 3, no bias; the SiLU that follows is a separate op).
//
// Contract (all on one device, all f32):
//   x [B, L, C] (row l holds token l's C channels, contiguous), weight [C, 1, K] (PyTorch's depthwise layout),
//   bias [C] or undefined (no bias), out [B, L, C].
//   out[b, l, c] = bias[c] + sum_{j < K} weight[c, 0, j] * x[b, l + j - (K - 1) / 2, c], with x = 0 outside
//   [0, L): (K - 1) / 2 zeros on the left, the rest on the right (as PyTorch's 'same' for even K).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);

namespace cpu {
void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
}

}  // namespace mfuser::kernels
