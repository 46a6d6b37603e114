// conv_transpose2d: transposed 2-D convolution whose stride equals its kernel size (the taps never overlap),
// as F.conv_transpose2d(x, weight, bias, stride=K) (the FPN's ConvTranspose2d(2048, 2048, 2, 2) upsamplers).
//
// Contract (all on one device, all f32, or all bf16 on CUDA):
//   x [N, I, H, W], weight [I, O, K, K] (PyTorch's layout: input channels first), bias [O] or undefined (no
//   bias), out [N, O, H*K, W*K]; stride = K, no padding, no output padding, groups 1.
//   out[n, o, y*K + dy, x*K + dx] = bias[o] + sum_i x[n, i, y, x] * weight[i, o, dy, dx].
// The CPU reference is one cblas GEMM (weight^T x) per band of input rows (buffer <= 4 MB), then a scatter of
// the K*K taps. The CUDA kernel is one batched kernels::gemm (f32 accumulation) into a scratch tensor from the
// caching allocator (<= 32 M elements, or one image's taps), then a scatter kernel that adds the bias.
//
// conv_transpose2d_backward (CPU and CUDA): gradients given grad_out ([N, O, H*K, W*K], x's dtype); nothing saved
// but x and weight.
//   grad_x      [N, I, H, W]: sum over o, dy, dx of grad_out[n, o, y*K + dy, x*K + dx] * weight[i, o, dy, dx]
//   grad_weight [I, O, K, K]: sum over n, y, x of x[n, i, y, x] * grad_out[n, o, y*K + dy, x*K + dx]
//   grad_bias   [O]:          sum of grad_out over n and the output pixels
// Each of the three may be undefined (not computed: e.g. no grad_x for a network input, no grad_weight for a
// frozen layer); the defined ones are OVERWRITTEN, never accumulated into. The CPU reference gathers each band's
// K*K taps of grad_out (the forward's scatter, inverted) and runs the two GEMMs on them. The CUDA version (f32 or
// bf16, all one dtype) does the same per chunk of images, and sums grad_bias one block per channel:
// deterministic, no float atomics. With bf16 storage and more than one chunk of images (> 32 M tap elements),
// grad_weight is rounded to bf16 between chunks (it accumulates through the GEMM's beta = 1).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                               Tensor& grad_weight, Tensor& grad_bias);

namespace cpu {
void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                               Tensor& grad_weight, Tensor& grad_bias);
}
namespace cuda {
void conv_transpose2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out);
void conv_transpose2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                               Tensor& grad_weight, Tensor& grad_bias);
}  // namespace cuda

}  // namespace mfuser::kernels
