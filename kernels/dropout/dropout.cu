// CUDA dropout / DropPath: one thread per element (grid-stride); every thread recomputes its unit's draw, which
// costs a few integer multiplies against one memory round trip. The seed is read from device memory, so a
// captured graph replays with whatever seed the step wrote.
#include "kernels/common/cuda_common.cuh"
#include "kernels/dropout/dropout.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class T>
__global__ void dropout_kernel(const T* __restrict__ x, const int64_t* __restrict__ seed, T* out, int64_t n,
                               DropoutMask mask, int64_t units) {
  const uint64_t key = dropout_key(uint64_t(*seed), mask.salt);
  const float scale = 1.f / (1.f - mask.p);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = dropout_keeps(key, uint64_t((i / mask.inner) % units), mask.p) ? from_float<T>(to_float(x[i]) * scale)
                                                                            : from_float<T>(0.f);
}

}  // namespace

void cuda::dropout(const Tensor& x, const Tensor& seed, Tensor& out, const DropoutMask& mask) {
  const int64_t n = x.numel();
  if (n == 0) return;
  check_cuda_storage("dropout", x.dtype(), {&x, &out});
  const int64_t units = dropout_units(mask, n);
  with_storage_type("dropout", x.dtype(), [&]<class T>() {
    constexpr int kThreads = 256;
    dropout_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), seed.data<int64_t>(), static_cast<T*>(out.raw_data()), n, mask, units);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
