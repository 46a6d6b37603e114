// conv2d: 2-D cross-correlation with zero padding, as F.conv2d(x, weight, bias, stride, padding) with groups=1
// (the ViT patch embeddings 3->1024 k16 s16, the pixel decoder's 1x1 2048->256 and 3x3 256->256 convs).
//
// Contract (all on one device, all f32):
//   x [N, I, H, W], weight [O, I, KH, KW], bias [O] or undefined (no bias), out [N, O, OH, OW] with
//   OH = (H + 2 * padding - KH) / stride + 1 and OW likewise (floor), both >= 1; stride >= 1, padding >= 0,
//   the same along both axes.
//   out[n, o, y, x] = bias[o] + sum_{i, ky, kx} weight[o, i, ky, kx] * x[n, i, y*stride - padding + ky,
//                                                                          x*stride - padding + kx]
//   with x = 0 outside the image.
// The CPU reference is im2col + one cblas GEMM per band of output rows (columns buffer <= 16 MB); a 1x1
// stride-1 unpadded conv multiplies x directly.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding);

namespace cpu {
void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding);
}

}  // namespace mfuser::kernels
