// l2norm: out = x / max(||x||_2, eps) along one dim, i.e. F.normalize(x, p=2, dim=dim, eps=eps).
//
// x and out: f32 of one shape (out may be x). dim: any dim, negative counts from the back (-1 = last).
// eps (default 1e-12, PyTorch's) bounds the divisor, so an all-zero vector stays zero. Sums of squares are
// accumulated in f64. Used for the score map: visual embedding [B, 768, h, w] over dim 1, text over dim -1.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void l2norm(const Tensor& x, Tensor& out, int dim = -1, float eps = 1e-12f);

namespace cpu {
void l2norm(const Tensor& x, Tensor& out, int dim = -1, float eps = 1e-12f);
}

}  // namespace mfuser::kernels
