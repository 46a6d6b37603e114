// conv_transpose2d: transposed 2-D convolution whose stride equals its kernel size (the taps never overlap),
// as F.conv_transpose2d(x, weight, bias, stride=K) (the FPN's ConvTranspose2d(2048, 2048, 2, 2) upsamplers).
//
// Contract (all on one device, all f32):
//   x [N, I, H, W], weight [I, O, K, K] (PyTorch's layout: input channels first), bias [O] or undefined (no
//   bias), out [N, O, H*K, W*K]; stride = K, no padding, no output padding, groups 1.
//   out[n, o, y*K + dy, x*K + dx] = bias[o] + sum_i x[n, i, y, x] * weight[i, o, dy, dx].
// The CPU reference is one cblas GEMM (weight^T x) per band of input rows (buffer <= 4 MB), then a scatter of
// the K*K taps.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);

namespace cpu {
void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
}

}  // namespace mfuser::kernels
