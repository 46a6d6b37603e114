// dwconv1d: depthwise 1-D convolution over a token sequence with 'same' zero padding, in the tokens-major
// layout the Mamba (MVFuser) block has after in_proj. It equals
//   F.conv1d(x.transpose(1, 2), weight, bias, padding='same', groups=C).transpose(1, 2)
// (MVFuser's conv1d_x / conv1d_z: K = 3, no bias; the SiLU that follows is a separate op).
//
// Contract (all on one device; f32, or bf16 on CUDA, one dtype for all; f32 accumulation):
//   x [B, L, C] (row l holds token l's C channels, contiguous), weight [C, 1, K] (PyTorch's depthwise layout),
//   bias [C] or undefined (no bias), out [B, L, C].
//   out[b, l, c] = bias[c] + sum_{j < K} weight[c, 0, j] * x[b, l + j - (K - 1) / 2, c], with x = 0 outside
//   [0, L): (K - 1) / 2 zeros on the left, the rest on the right (as PyTorch's 'same' for even K).
//
// dwconv1d_backward (CPU and CUDA): gradients given grad_out ([B, L, C], x's dtype); nothing saved but x and
// weight.
//   grad_x      [B, L, C]:  grad_x[b, m, c] = sum_j weight[c, 0, j] * grad_out[b, m - j + (K - 1) / 2, c]
//                           (terms whose output index falls outside [0, L) are absent)
//   grad_weight [C, 1, K]:  sum over b, l of grad_out[b, l, c] * x[b, l + j - (K - 1) / 2, c] (0 outside)
//   grad_bias   [C]:        sum over b, l of grad_out[b, l, c]
// Each of the three may be undefined (not computed); the defined ones are OVERWRITTEN, never accumulated
// into; they have x's dtype. grad_weight and grad_bias are summed in a fixed order (deterministic results): in
// double on the CPU, in f32 on CUDA (per-chunk partials of 256 rows, then the chunks in order; no atomics).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                       Tensor& grad_weight, Tensor& grad_bias);

namespace cuda {
void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                       Tensor& grad_weight, Tensor& grad_bias);
}

namespace cpu {
void dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                       Tensor& grad_weight, Tensor& grad_bias);
}

}  // namespace mfuser::kernels
