// CUDA cast: one thread per element, grid-stride. The conversions are the hardware ones (cvt.rn), which
// round to nearest even exactly as the CPU reference does.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cast/cast.h"
#include "runtime/cuda_check.h"
#include "runtime/cuda_context.h"

namespace mfuser::kernels {

namespace {

template <class T> __device__ float to_float(T v);
template <> __device__ float to_float(float v) { return v; }
template <> __device__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ float to_float(__half v) { return __half2float(v); }

template <class T> __device__ T from_float(float v);
template <> __device__ float from_float(float v) { return v; }
template <> __device__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __half from_float(float v) { return __float2half_rn(v); }

template <class In, class Out>
__global__ void cast_kernel(const In* __restrict__ in, Out* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<Out>(to_float(in[i]));
}

template <class In, class Out>
void launch(const Tensor& src, Tensor& dst, cudaStream_t stream) {
  const int64_t n = src.numel();
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, 65536));
  cast_kernel<<<blocks, threads, 0, stream>>>(static_cast<const In*>(src.raw_data()), static_cast<Out*>(dst.raw_data()), n);
  MFUSER_CUDA_CHECK_LAUNCH();
}

template <class In>
void launch_to(const Tensor& src, Tensor& dst, cudaStream_t stream) {
  switch (dst.dtype()) {
    case DType::bf16: launch<In, __nv_bfloat16>(src, dst, stream); break;
    case DType::f16: launch<In, __half>(src, dst, stream); break;
    default: launch<In, float>(src, dst, stream); break;
  }
}

}  // namespace

void cuda::cast(const Tensor& src, Tensor& dst) {
  if (src.numel() == 0) return;
  cudaStream_t stream = mfuser::cuda::context(src.device().index).stream();
  switch (src.dtype()) {
    case DType::bf16: launch_to<__nv_bfloat16>(src, dst, stream); break;
    case DType::f16: launch_to<__half>(src, dst, stream); break;
    default: launch_to<float>(src, dst, stream); break;
  }
}

}  // namespace mfuser::kernels
