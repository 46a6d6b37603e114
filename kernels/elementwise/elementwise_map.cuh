// Element-wise maps out[i] = fn(in[i]) for the CUDA kernels of elementwise (scale) and activation. `fn` is a
// functor float -> float (loads widen to f32, stores round to T). 16-byte vectors when both pointers are
// 16-byte aligned and the size is a whole number of vectors, a scalar loop otherwise; out may be in.
#pragma once

#include <cstdint>

#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels::cuda_detail {

// 16 bytes of T: 4 floats or 8 bf16, loaded and stored as one vector.
template <class T>
inline constexpr int kPack = int(16 / sizeof(T));
template <class T>
struct alignas(16) Pack {
  T v[kPack<T>];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T, class Fn>
__global__ void map_kernel(const T* in, T* out, int64_t n, Fn fn) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(fn(to_float(in[i])));
}

template <class T, class Fn>
__global__ void map_pack_kernel(const Pack<T>* in, Pack<T>* out, int64_t packs, Fn fn) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
    Pack<T> p = in[i];
#pragma unroll
    for (int j = 0; j < kPack<T>; ++j) p.v[j] = from_float<T>(fn(to_float(p.v[j])));
    out[i] = p;
  }
}

template <class T, class Fn>
void launch_map(const T* in, T* out, int64_t n, cudaStream_t stream, Fn fn) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  if (n % kPack<T> == 0 && aligned16(in) && aligned16(out)) {
    const int64_t packs = n / kPack<T>;
    map_pack_kernel<T><<<grid_for(packs, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const Pack<T>*>(in), reinterpret_cast<Pack<T>*>(out), packs, fn);
  } else {
    map_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(in, out, n, fn);
  }
  MFUSER_CUDA_CHECK_LAUNCH();
}

// Typed device pointers of a tensor (Tensor::data<T> knows no __nv_bfloat16).
template <class T>
const T* device_ptr(const Tensor& t) {
  return static_cast<const T*>(t.raw_data());
}
template <class T>
T* device_ptr(Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

}  // namespace mfuser::kernels::cuda_detail
