// Helpers for the GPU tests ("...Cuda" suites): every CUDA kernel is checked against the CPU reference on
// fresh random inputs, with its outputs poisoned before the launch.
//
// Inputs are drawn on the host in f32. For bf16 runs they are rounded to bf16 on the host first
// (`representable`), so the CPU reference and the kernel see exactly the same input values and the error
// measured is the kernel's own (f32 accumulation, bf16 output rounding).
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

#include "kernels/cast/cast.h"
#include "tests/common/test_util.h"

namespace mfuser::test {

// The storage types every CUDA kernel is tested in.
inline constexpr DType kCudaDtypes[] = {DType::f32, DType::bf16};

// Relative-L2 bounds of CUDA vs the CPU reference: fp32 1e-4, bf16 2e-2 (the project's standards).
inline double cuda_tolerance(DType dtype) { return dtype == DType::bf16 ? 2e-2 : 1e-4; }

// A host f32 tensor whose values are exactly representable in `dtype` (rounded to nearest even).
inline Tensor representable(const Tensor& host_f32, DType dtype) {
  if (dtype == DType::f32) return host_f32;
  return kernels::cast_to(kernels::cast_to(host_f32, dtype), DType::f32);
}

// Random uniform host f32 tensor in [lo, hi), already representable in `dtype`.
inline Tensor random_host(const Shape& shape, DType dtype, float lo = -1.f, float hi = 1.f) {
  Tensor t = Tensor::empty(shape, DType::f32);
  fill_uniform(t, lo, hi);
  return representable(t, dtype);
}

// A CUDA copy of a host f32 tensor in `dtype`. Undefined stays undefined (optional arguments).
inline Tensor to_cuda(const Tensor& host_f32, DType dtype) {
  if (!host_f32.defined()) return Tensor();
  return kernels::cast_to(host_f32.to(Device::cuda()), dtype);
}

// An output tensor on CUDA, every byte 0xFF (NaN) so an element the kernel skips is caught.
inline Tensor poisoned_cuda(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda());
  poison(t);
  return t;
}

// CUDA output vs CPU reference: no non-finite element, relative L2 within `rel_tol` (default: the dtype's
// bound). Prints the measured error and, on failure, the seed that reproduces it.
// `norm_floor`: where the true output is zero or nearly so because terms cancel (softmax over one key, the
// gradient of a length-1 normalization), both sides hold rounding of those terms only; the error is then
// measured against the norm of the cancelling terms, max(||ref||, norm_floor).
inline void expect_cuda_close(const Tensor& out, const Tensor& ref, const std::string& what, double rel_tol = 0,
                              double norm_floor = 0) {
  if (rel_tol == 0) rel_tol = cuda_tolerance(out.dtype());
  const ErrorStats e = compare(out, ref);
  const double rel = e.ref_l2 >= norm_floor ? e.rel_l2 : e.diff_l2 / norm_floor;
  std::printf("[ errors   ] %s (%s): %s%s\n", what.c_str(), std::string(dtype_name(out.dtype())).c_str(),
              describe(e).c_str(), rel == e.rel_l2 ? "" : str_cat(", rel to the cancelling terms ", rel).c_str());
  EXPECT_EQ(e.nonfinite, 0) << what << " (seed " << seed() << ")";
  EXPECT_LE(rel, rel_tol) << what << " (seed " << seed() << ", rerun with MFUSER_SEED=" << seed() << ")";
}

// ||t|| of a host f32 tensor, in double.
inline double l2_norm(const Tensor& t) {
  double sum = 0;
  for (int64_t i = 0; i < t.numel(); ++i) sum += double(t.data<float>()[i]) * t.data<float>()[i];
  return std::sqrt(sum);
}

}  // namespace mfuser::test
