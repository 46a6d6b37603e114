// elementwise: binary add / mul with broadcasting, and scale (x * factor + bias).
//
// Contract (f32, or bf16 on CUDA: a, b and out share one dtype; the CUDA kernels compute in f32 and round
// once on the store; the backward ops too, on the CPU and on CUDA):
//   add(a, b, out):  out = a + b     (torch.add)
//   mul(a, b, out):  out = a * b     (torch.mul)
//     `b` broadcasts numpy-style onto a's shape: dims are aligned from the right, b has at most a.ndim dims,
//     and each of b's dims is 1 or equal to a's. `out` has a's shape. `out` may be `a` itself (in place);
//     it must not overlap `b` unless b has a's full shape.
//   scale(x, out, factor, bias): out = x * factor + bias, bias a scalar (0 by default); out may be x.
//
// Backward (every wanted gradient is OVERWRITTEN; an undefined Tensor() means "not wanted"):
//   add_backward(grad_out, grad_a, grad_b):        grad_a = grad_out; grad_b = grad_out summed over the dims b
//                                                  was broadcast along (grad_b has b's shape). Saves nothing.
//   mul_backward(a, b, grad_out, grad_a, grad_b):  grad_a = grad_out * b (broadcast);
//                                                  grad_b = (grad_out * a) summed over b's broadcast dims.
//                                                  Needs both forward inputs a and b.
//   scale_backward(grad_out, grad_x, factor):      grad_x = grad_out * factor (the bias has no input).
// grad_out has a's (resp. x's) shape; all tensors of one call share one dtype. Sums over broadcast dims
// accumulate in f64, serially (one pass over grad_out) on the CPU; on CUDA in f32, as per-chunk partial sums
// in a fixed layout added in chunk order (no atomics: identical run to run). When b has a's full shape there
// is nothing to sum and the gradient is element-wise.
// grad_a may be grad_out itself; grad_b must not overlap the inputs unless b has a's full shape.
//
// The helpers in `detail` are shared by the other element-wise-shaped ops (activation, softmax, l2norm).
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void add(const Tensor& a, const Tensor& b, Tensor& out);
void mul(const Tensor& a, const Tensor& b, Tensor& out);
void scale(const Tensor& x, Tensor& out, float factor, float bias = 0.f);
void add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor);

namespace cpu {
void add(const Tensor& a, const Tensor& b, Tensor& out);
void mul(const Tensor& a, const Tensor& b, Tensor& out);
void scale(const Tensor& x, Tensor& out, float factor, float bias = 0.f);
void add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor);
}  // namespace cpu

namespace cuda {
void add(const Tensor& a, const Tensor& b, Tensor& out);
void mul(const Tensor& a, const Tensor& b, Tensor& out);
void scale(const Tensor& x, Tensor& out, float factor, float bias = 0.f);
void add_backward(const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void mul_backward(const Tensor& a, const Tensor& b, const Tensor& grad_out, Tensor& grad_a, Tensor& grad_b);
void scale_backward(const Tensor& grad_out, Tensor& grad_x, float factor);
}  // namespace cuda

namespace detail {

// Throws unless `x` and `out` are f32 tensors of the same shape on the same device; messages start with `op`.
void check_same_f32(const char* op, const Tensor& x, const Tensor& out);

// As check_same_f32, but f32 or bf16 on CUDA (one dtype for both): the checks of ops with CUDA kernels.
void check_same_float(const char* op, const Tensor& x, const Tensor& out);

// Throws unless `t` is a host tensor (a cpu:: reference was handed device memory).
void check_host(const char* op, const Tensor& t);

// Where element i of `target` (flat, row-major) finds its value in an `operand` broadcast onto it
// numpy-style. Trailing dims over which the operand is either fully present or fully broadcast are merged
// into one run of `run` elements, inside which the operand advances by `run_stride` (1 or 0) per element,
// so kernels pay the index arithmetic once per run, not once per element.
class BroadcastIndex {
 public:
  // Throws (naming `op` and both shapes) when `operand` cannot be broadcast onto `target`.
  BroadcastIndex(const char* op, const Shape& target, const Shape& operand);

  int64_t run() const { return run_; }
  int64_t run_stride() const { return run_stride_; }
  // Operand offset of the target element with flat index i.
  int64_t offset(int64_t i) const;

 private:
  int64_t run_ = 1, run_stride_ = 1;
  int outer_ndim_ = 0;  // target dims in front of the run
  int64_t outer_dims_[kMaxDims] = {}, outer_strides_[kMaxDims] = {};
};

}  // namespace detail

}  // namespace mfuser::kernels
