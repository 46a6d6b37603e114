// conv2d: 2-D cross-correlation with zero padding, as F.conv2d(x, weight, bias, stride, padding) with groups=1
// (the ViT patch embeddings 3->1024 k16 s16, the pixel decoder's 1x1 2048->256 and 3x3 256->256 convs).
//
// Contract (all on one device, all f32, or all bf16 on CUDA):
//   x [N, I, H, W], weight [O, I, KH, KW], bias [O] or undefined (no bias), out [N, O, OH, OW] with
//   OH = (H + 2 * padding - KH) / stride + 1 and OW likewise (floor), both >= 1; stride >= 1, padding >= 0,
//   the same along both axes.
//   out[n, o, y, x] = bias[o] + sum_{i, ky, kx} weight[o, i, ky, kx] * x[n, i, y*stride - padding + ky,
//                                                                          x*stride - padding + kx]
//   with x = 0 outside the image.
// The CPU reference is im2col + one cblas GEMM per band of output rows (columns buffer <= 16 MB); a 1x1
// stride-1 unpadded conv multiplies x directly. The CUDA kernel is im2col into a scratch tensor from the
// caching allocator (<= 32 M elements, or one image's columns) + kernels::gemm (f32 accumulation).
//
// conv2d_backward (CPU and CUDA): gradients given grad_out ([N, O, OH, OW], x's dtype); nothing saved but x and
// weight.
//   grad_x      [N, I, H, W]:    sum over o, ky, kx of weight[o, i, ky, kx] * grad_out at the outputs whose
//                                window covers (y, x) (zero-padding positions receive nothing)
//   grad_weight [O, I, KH, KW]:  sum over n and output pixels of grad_out[n, o, oy, ox] * x[n, i, oy*stride -
//                                padding + ky, ox*stride - padding + kx] (0 in the padding)
//   grad_bias   [O]:             sum of grad_out over n and the output pixels
// Each of the three may be undefined (not computed: e.g. no grad_x for the patch embedding, whose input is the
// image; no grad_weight for a frozen layer); the defined ones are OVERWRITTEN, never accumulated into. The CPU
// reference reuses the forward's bands: grad_weight += grad_out_band im2col(x)^T, and
// col2im(weight^T grad_out_band) adds into grad_x. The CUDA version (f32 or bf16, all one dtype) is GEMMs on
// chunks of images plus a gather-form col2im, and a one-block-per-channel grad_bias: deterministic, no float
// atomics. With bf16 storage and more than one chunk of images (> 32 M column elements), grad_weight is rounded
// to bf16 between chunks (it accumulates through the GEMM's beta = 1).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding);
void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias, int stride, int padding);

namespace cpu {
void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding);
void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias, int stride, int padding);
}
namespace cuda {
void conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int stride, int padding);
void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                     Tensor& grad_weight, Tensor& grad_bias, int stride, int padding);
}  // namespace cuda

}  // namespace mfuser::kernels
