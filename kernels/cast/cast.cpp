// CPU reference of cast, and the device dispatch.
#include "kernels/cast/cast.h"

#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

void check_args(const Tensor& src, const Tensor& dst) {
  MFUSER_CHECK(src.numel() == dst.numel(), "cast: ", src.str(), " -> ", dst.str(), ": element counts differ");
  MFUSER_CHECK(src.device() == dst.device(), "cast: ", src.str(), " -> ", dst.str(), ": devices differ");
  MFUSER_CHECK(is_floating(src.dtype()) && is_floating(dst.dtype()), "cast: ", src.str(), " -> ", dst.str(),
               ": only f32/bf16/f16 are supported");
}

float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::bf16: return bf16_to_float(static_cast<const bf16_t*>(p)[i]);
    case DType::f16: return f16_to_float(static_cast<const f16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::bf16: static_cast<bf16_t*>(p)[i] = float_to_bf16(v); break;
    case DType::f16: static_cast<f16_t*>(p)[i] = float_to_f16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

}  // namespace

void cpu::cast(const Tensor& src, Tensor& dst) {
  check_args(src, dst);
  const void* in = src.raw_data();
  void* out = dst.raw_data();
  parallel_for(src.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) store(out, dst.dtype(), i, load(in, src.dtype(), i));
  });
}

void cast(const Tensor& src, Tensor& dst) {
  check_args(src, dst);
  if (src.device().is_cuda())
    cuda::cast(src, dst);
  else
    cpu::cast(src, dst);
}

Tensor cast_to(const Tensor& src, DType dtype) {
  Tensor out = Tensor::empty(src.shape(), dtype, src.device());
  cast(src, out);
  return out;
}

#ifndef MFUSER_HAVE_CUDA
void cuda::cast(const Tensor&, Tensor&) { throw Error("cast: CUDA tensor in a build without CUDA"); }
#endif

}  // namespace mfuser::kernels
