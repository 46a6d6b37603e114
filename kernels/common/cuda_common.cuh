// Device-side helpers shared by the CUDA kernels (only .cu files include this).
//
// Storage types: every CUDA kernel takes f32 or bf16 tensors ("storage type" T) and computes in f32:
// loads widen with to_float, stores round to nearest even with from_float. Reductions, norm statistics,
// softmax and scan state stay in f32 whatever T is.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>

#include "kernels/common/checks.h"
#include "runtime/cuda_check.h"
#include "runtime/cuda_context.h"
#include "runtime/tensor.h"

namespace mfuser::kernels::cuda_detail {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

// Calls `f.template operator()<T>()` with T = float or bf16 for the tensor dtype `dtype` (C++20 templated
// lambdas: `with_storage_type(t.dtype(), [&]<class T>() { ... })`). Other dtypes throw, naming the op.
template <class F>
void with_storage_type(std::string_view op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f.template operator()<float>(); break;
    case DType::bf16: f.template operator()<bf16>(); break;
    default: throw Error(str_cat(op, ": the CUDA kernels take f32 or bf16 tensors, got ", dtype_name(dtype)));
  }
}

// Every defined tensor in `tensors` is a CUDA tensor of dtype `dtype` (f32 or bf16).
inline void check_cuda_storage(std::string_view op, DType dtype, std::initializer_list<const Tensor*> tensors) {
  MFUSER_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": the CUDA kernels take f32 or bf16 tensors, got ",
               dtype_name(dtype));
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    MFUSER_CHECK(t->device().is_cuda(), op, ": expected a CUDA tensor, got ", t->str());
    MFUSER_CHECK(t->dtype() == dtype, op, ": every float tensor must be ", dtype_name(dtype), ", got ", t->str());
  }
}

// The stream every kernel of this op launches on: the one of the device holding `t`.
inline cudaStream_t stream_of(const Tensor& t) { return mfuser::cuda::context(t.device().index).stream(); }

template <class T> __host__ __device__ constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

// A grid-stride launch size: enough blocks to fill the GPU several times, never more than needed.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = ceil_div<int64_t>(n, threads);
  return unsigned(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

// Grid of a row kernel: rows along y, the columns of a row along x (both grid-stride loops in the kernel), so
// the per-row index math runs once per row and the per-column math can stay 32-bit.
inline dim3 row_grid(int64_t rows, int64_t cols, int threads) {
  const int64_t x = ceil_div<int64_t>(cols, threads);
  return dim3(unsigned(x < 1 ? 1 : (x > 1024 ? 1024 : x)), unsigned(rows < 1 ? 1 : (rows > 65535 ? 65535 : rows)));
}

template <class T>  // float or double
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is 32 values of shared memory; the call ends with a barrier so scratch can be reused.
template <class T>  // float or double
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  v = warp_sum(v);
  __syncthreads();
  return v;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  v = warp_max(v);
  __syncthreads();
  return v;
}

// Mean and 1/sqrt(var + eps) of n values, two passes over sums of x - x[0]: when |mean| >> std the shifted
// values are O(std), so the f32 sums lose no digits to the magnitude of the mean, and the centered values
// (x - shift) - shifted_mean are formed without cancellation. Every thread of the block gets the result; it
// ends with a barrier (block_sum), after which x may be overwritten in place.
struct ShiftedStats {
  float shift, shifted_mean, rstd;  // mean = shift + shifted_mean (saved statistics: shift 0)
  __device__ float xhat(float v) const { return ((v - shift) - shifted_mean) * rstd; }
};

template <class T>
__device__ ShiftedStats shifted_stats(const T* x, int64_t n, float eps, float* scratch) {
  const float shift = to_float(x[0]);
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += to_float(x[i]) - shift;
  const float shifted_mean = block_sum(sum, scratch) / float(n);
  float squares = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float centered = (to_float(x[i]) - shift) - shifted_mean;
    squares += centered * centered;
  }
  return {shift, shifted_mean, 1.f / sqrtf(block_sum(squares, scratch) / float(n) + eps)};
}

// Second pass of a deterministic reduction: out[j] = sum over c of partial[c * n + j], chunks added in order
// (no float atomics, so results repeat bit for bit). The first pass writes one row of partials per chunk.
template <class T>
__global__ void sum_partials_kernel(const float* partial, T* out, int64_t chunks, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    float total = 0.f;
    for (int64_t c = 0; c < chunks; ++c) total += partial[c * n + j];
    out[j] = from_float<T>(total);
  }
}

template <class T>
void sum_partials(const float* partial, T* out, int64_t chunks, int64_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  sum_partials_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(partial, out, chunks, n);
  MFUSER_CUDA_CHECK_LAUNCH();
}

// dst[c][n][p] = src[n][c][p]: NCHW -> CNHW for the `images` images of a chunk (row = n * channels + c), e.g.
// to make a convolution's weight gradient one GEMM over images and pixels. A row kernel (row_grid).
template <class T>
__global__ void nchw_to_cnhw_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t channels,
                                    int64_t images, int pixels, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / channels, c = row % channels;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += gridDim.x * blockDim.x)
      dst[(c * images + n) * pixels + p] = src[row * pixels + p];
  }
}

// sums[c] = sum over images and pixels of x[n, c, :] (a bias gradient): one block per channel, a fixed order.
template <class T>
__global__ void channel_sums_kernel(const T* __restrict__ x, T* __restrict__ sums, int64_t images, int64_t channels,
                                    int64_t pixels) {
  __shared__ float scratch[32];
  const int64_t c = blockIdx.x;
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < images * pixels; j += blockDim.x)
    sum += to_float(x[(j / pixels * channels + c) * pixels + j % pixels]);
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) sums[c] = from_float<T>(sum);
}

}  // namespace mfuser::kernels::cuda_detail
