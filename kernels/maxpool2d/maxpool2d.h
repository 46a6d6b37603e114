// maxpool2d: 2-D max pooling without padding, as F.max_pool2d(x, kernel, stride) (ceil_mode False, dilation 1)
// (the FPN's MaxPool2d(kernel 2, stride 2) on 2048 x 32 x 32).
//
// Contract: x [N, C, H, W], out [N, C, OH, OW] on the same device, both f32 (or both bf16 on CUDA), OH = (H -
// kernel) / stride + 1 and OW likewise (floor: trailing rows/columns that do not fill a window are dropped);
// kernel, stride >= 1, kernel <= H, W. A window holding a NaN yields NaN, as in PyTorch.
//
// maxpool2d_backward (CPU, and CUDA as a gather: one thread per x element, no atomics): grad_x (x's shape and
// dtype, required, OVERWRITTEN) given grad_out (out's shape; f32, or bf16 on CUDA, like x). Each window's argmax is recomputed from x (nothing saved) and receives that window's grad_out; every
// other element gets 0, and an element that wins several overlapping windows gets their sum. The argmax is
// PyTorch's: the first maximum in row-major window order on ties, and the last NaN when the window holds NaNs.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void maxpool2d(const Tensor& x, Tensor& out, int kernel = 2, int stride = 2);
void maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel = 2, int stride = 2);

namespace cpu {
void maxpool2d(const Tensor& x, Tensor& out, int kernel = 2, int stride = 2);
void maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel = 2, int stride = 2);
}
namespace cuda {
void maxpool2d(const Tensor& x, Tensor& out, int kernel, int stride);
void maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel, int stride);
}  // namespace cuda

}  // namespace mfuser::kernels
