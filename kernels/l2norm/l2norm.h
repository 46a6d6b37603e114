// l2norm: out = x / max(||x||_2, eps) along one dim, i.e. F.normalize(x, p=2, dim=dim, eps=eps).
//
// x and out: f32 (or bf16 on CUDA) of one shape and dtype (out may be x). dim: any dim, negative counts from
// the back (-1 = last). eps (default 1e-12, PyTorch's) bounds the divisor, so an all-zero vector stays zero.
// Sums of squares are accumulated in f64 on the CPU, in f32 on CUDA. Used for the score map: visual embedding
// [B, 768, h, w] over dim 1, text [classes, 768] over dim -1.
//
// l2norm_backward(x, grad_out, grad_in, dim, eps) (f32, or bf16 on CUDA; one dtype): the gradient of F.normalize
// with respect to x, from the forward's INPUT x (saved), with d = max(||x||, eps) per vector:
//   ||x|| >= eps:  grad_in = grad_out / d - x * <grad_out, x> / d^3   (the gradient through the norm)
//   ||x|| <  eps:  grad_in = grad_out / eps                           (clamp_min passes no gradient below eps)
// exactly as PyTorch's autograd of x / norm.clamp_min(eps) (its clamp_min lets the gradient through at
// ||x|| == eps). eps = 0 with an all-zero vector divides by zero (NaN, as in PyTorch): out of contract.
// grad_in is OVERWRITTEN and may be grad_out itself; sums accumulate in f64 on the CPU, f32 on CUDA.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void l2norm(const Tensor& x, Tensor& out, int dim = -1, float eps = 1e-12f);
void l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim = -1, float eps = 1e-12f);

namespace cpu {
void l2norm(const Tensor& x, Tensor& out, int dim = -1, float eps = 1e-12f);
void l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim = -1, float eps = 1e-12f);
}  // namespace cpu
// The CUDA launchers (l2norm.cu); call it through the dispatcher above, which checks the arguments.
namespace cuda {
void l2norm(const Tensor& x, Tensor& out, int dim, float eps);
void l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim, float eps);
}  // namespace cuda

}  // namespace mfuser::kernels
