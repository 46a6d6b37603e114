// layout: pure data movement between contiguous tensors (no arithmetic, any dtype, bit-exact).
//
// permute(src, dst, perm)  dst = src.permute(perm).contiguous(): perm is a permutation of [0, src.ndim())
//                          (up to 6 dims) and dst.shape[i] == src.shape[perm[i]].
// concat(srcs, dst, dim)   dst = torch.cat(srcs, dim): every src has dst's shape except along `dim`, where the
//                          sizes add up to dst's.
// split(src, dsts, dim)    the inverse of concat, as torch.split(src, [d.shape[dim] for d in dsts], dim) with
//                          each piece made contiguous: the piece sizes are read from the preallocated dsts.
// Negative dims count from the back. All tensors share one dtype and one device (CPU or CUDA: every dtype on
// both); outputs must not overlap the inputs.
//
// Backward: no separate kernels, because each op's gradient is another layout op (exact, nothing saved from
// the forward but the perm / dim / piece shapes; the gradient output is OVERWRITTEN, as by any call here):
//   permute(src, dst, perm)  grad_src = permute(grad_dst, inv) with inv[perm[i]] = i
//   concat(srcs, dst, dim)   grad_srcs = split(grad_dst, dim), pieces shaped as the srcs
//   split(src, dsts, dim)    grad_src = concat(grad_dsts, dim)
// layout_test checks these against PyTorch's autograd.
#pragma once

#include <span>

#include "runtime/tensor.h"

namespace mfuser::kernels {

// Dispatch on the device.
void permute(const Tensor& src, Tensor& dst, std::span<const int> perm);
void concat(std::span<const Tensor> srcs, Tensor& dst, int dim);
void split(const Tensor& src, std::span<Tensor> dsts, int dim);

namespace cpu {
void permute(const Tensor& src, Tensor& dst, std::span<const int> perm);
void concat(std::span<const Tensor> srcs, Tensor& dst, int dim);
void split(const Tensor& src, std::span<Tensor> dsts, int dim);
}  // namespace cpu
namespace cuda {  // the arguments as the dispatchers checked them
void permute(const Tensor& src, Tensor& dst, std::span<const int> perm);
void concat(std::span<const Tensor> srcs, Tensor& dst, int dim);
void split(const Tensor& src, std::span<Tensor> dsts, int dim);
}  // namespace cuda

}  // namespace mfuser::kernels
