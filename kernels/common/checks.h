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

// The dispatchers' CUDA branch until the CUDA kernels exist.
[[noreturn]] inline void no_cuda_kernel_yet(std::string_view op) { throw Error(str_cat(op, ": no CUDA kernel yet")); }

}  // namespace mfuser::kernels
