// Argument checks shared by the operator kernels. Every message names the op, the argument and the shapes, so
// a failure deep inside a graph run says what was wrong without a debugger.
#pragma once

#include <initializer_list>
#include <string_view>

#include "runtime/error.h"
#include "runtime/tensor.h"

namespace mfuser::kernels {

// The reference kernels compute in f32 and accept f32 tensors only.
inline void check_f32(std::string_view op, std::string_view arg, const Tensor& t) {
  MFUSER_CHECK(t.defined(), op, ": ", arg, " is undefined");
  MFUSER_CHECK(t.dtype() == DType::f32, op, ": ", arg, " must be f32, got ", t.str());
}

// f32 anywhere; bf16 also on CUDA (the CUDA kernels store bf16 and compute in f32; the CPU reference is
// f32 only).
inline void check_float(std::string_view op, std::string_view arg, const Tensor& t) {
  MFUSER_CHECK(t.defined(), op, ": ", arg, " is undefined");
  MFUSER_CHECK(t.dtype() == DType::f32 || (t.dtype() == DType::bf16 && t.device().is_cuda()), op, ": ", arg,
               " must be f32 (or bf16 on CUDA), got ", t.str());
}

// check_float, and the dtype of `like`: all float tensors of one op call share one storage type.
inline void check_float_like(std::string_view op, std::string_view arg, const Tensor& t, const Tensor& like) {
  check_float(op, arg, t);
  MFUSER_CHECK(t.dtype() == like.dtype(), op, ": ", arg, " is ", t.str(), " but the op runs in ",
               dtype_name(like.dtype()));
}

inline void check_shape(std::string_view op, std::string_view arg, const Tensor& t, const Shape& expected) {
  MFUSER_CHECK(t.shape() == expected, op, ": ", arg, " must have shape ", expected.str(), ", got ", t.str());
}

// An optional output (a gradient nobody may want): undefined, or f32 of the expected shape.
inline void check_optional_f32(std::string_view op, std::string_view arg, const Tensor& t, const Shape& expected) {
  if (!t.defined()) return;
  check_f32(op, arg, t);
  check_shape(op, arg, t, expected);
}

// All defined tensors live on the device of the first one (optional arguments may be undefined).
inline void check_same_device(std::string_view op, std::initializer_list<const Tensor*> tensors) {
  const Tensor& first = **tensors.begin();
  for (const Tensor* t : tensors)
    MFUSER_CHECK(!t->defined() || t->device() == first.device(), op, ": tensors on different devices (",
                 first.str(), " and ", t->str(), ")");
}

// First statement of a cpu:: kernel after the argument checks: a CUDA pointer must never be dereferenced here.
inline void check_host(std::string_view op, const Tensor& t) {
  MFUSER_CHECK(t.device().is_cpu(), op, ": the CPU kernel got a device tensor ", t.str());
}

// The dispatchers' CUDA branch: `if (x.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::op(args...));`.
// A build without CUDA compiles no .cu file and cannot hold device tensors; the macro keeps it linkable.
#ifdef MFUSER_HAVE_CUDA
#define MFUSER_CUDA_KERNEL(call) call
#else
#define MFUSER_CUDA_KERNEL(call) throw ::mfuser::Error(#call ": this build has no CUDA backend")
#endif

// The dispatchers' CUDA branch of the ops that have no CUDA kernel yet (the backward kernels).
[[noreturn]] inline void no_cuda_kernel_yet(std::string_view op) { throw Error(str_cat(op, ": no CUDA kernel yet")); }

}  // namespace mfuser::kernels
