// CUDA rmsnorm_gated forward: one block per row (grid-stride over rows). One pass sums x^2 in f32, a second
// pass writes x * rstd * weight * silu(z); the row stays in L1 between the passes.
//
// Backward: the same row blocks; one pass sums x^2 and g * x (g = grad_out * weight * silu(z)), a second writes
// grad_x and grad_z. grad_weight: each block accumulates its rows into its own f32 slice of a scratch
// [blocks, D] (thread t always owns the same columns: no races), then one kernel sums the slices column by
// column in block order. Fixed grid for a given shape: reproducible, no atomics.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_row(int64_t d) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(d, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

// x (or z) and out may be the same memory: each element is read and written by the same thread.
template <class T>
__global__ void rmsnorm_gated_kernel(const T* x, const T* z, const T* __restrict__ weight, T* out, int64_t rows,
                                     int64_t d, float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    const T* zr = z + row * d;
    T* yr = out + row * d;
    float squares = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(xr[i]);
      squares += v * v;
    }
    const float rstd = 1.f / sqrtf(block_sum(squares, scratch) / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float gate = to_float(zr[i]);
      const float silu = gate / (1.f + expf(-gate));  // -0 for very negative z, as the CPU reference
      yr[i] = from_float<T>(to_float(xr[i]) * rstd * to_float(weight[i]) * silu);
    }
  }
}

// partial: null (no grad_weight) or f32 [gridDim.x, d], this block's sums of grad_out * x * rstd * silu(z).
// grad_x / grad_z may be the memory of x, z or grad_out: a thread reads all of its element before writing.
template <class T>
__global__ void rmsnorm_gated_backward_kernel(const T* x, const T* z, const T* __restrict__ weight,
                                              const T* grad_out, T* grad_x, T* grad_z, float* __restrict__ partial,
                                              int64_t rows, int64_t d, float eps) {
  __shared__ float scratch[32];
  float* block_partial = partial ? partial + int64_t(blockIdx.x) * d : nullptr;
  if (block_partial)
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) block_partial[i] = 0.f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t offset = row * d;
    float squares = 0.f, sum_gx = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(x[offset + i]), gate = to_float(z[offset + i]);
      squares += v * v;
      sum_gx += to_float(grad_out[offset + i]) * to_float(weight[i]) * (gate / (1.f + expf(-gate))) * v;
    }
    const float rstd = 1.f / sqrtf(block_sum(squares, scratch) / float(d) + eps);
    const float x_coef = rstd * rstd * rstd * block_sum(sum_gx, scratch) / float(d);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(x[offset + i]), gate = to_float(z[offset + i]), dy = to_float(grad_out[offset + i]);
      const float w = to_float(weight[i]);
      const float sig = 1.f / (1.f + expf(-gate)), silu = gate * sig, xn = v * rstd;
      const float dx = rstd * dy * w * silu - v * x_coef;
      const float dz = dy * xn * w * sig * (1.f + gate * (1.f - sig));
      grad_x[offset + i] = from_float<T>(dx);
      grad_z[offset + i] = from_float<T>(dz);
      if (block_partial) block_partial[i] += dy * xn * silu;
    }
  }
}

// grad_weight[i] = the blocks' partial sums of column i, in block order.
template <class T>
__global__ void rmsnorm_gated_weight_grad_kernel(const float* __restrict__ partial, int blocks, int64_t d,
                                                 T* __restrict__ grad_weight) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < d; i += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.f;
    for (int b = 0; b < blocks; ++b) sum += partial[int64_t(b) * d + i];
    grad_weight[i] = from_float<T>(sum);
  }
}

}  // namespace

void cuda::rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps) {
  check_cuda_storage("rmsnorm_gated", x.dtype(), {&x, &z, &weight, &out});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  if (rows == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  with_storage_type("rmsnorm_gated", x.dtype(), [&]<class T>() {
    rmsnorm_gated_kernel<T><<<blocks, threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(z.raw_data()),
        static_cast<const T*>(weight.raw_data()), static_cast<T*>(out.raw_data()), rows, d, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::rmsnorm_gated_backward(const Tensor& x, const Tensor& z, const Tensor& weight, const Tensor& grad_out,
                                  Tensor& grad_x, Tensor& grad_z, Tensor& grad_weight, float eps) {
  constexpr const char* op = "rmsnorm_gated_backward";
  check_cuda_storage(op, x.dtype(), {&x, &z, &weight, &grad_out, &grad_x, &grad_z, &grad_weight});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const bool want_weight = grad_weight.defined();
  if (rows == 0) {  // an empty sum: zero grad_weight
    if (want_weight) MFUSER_CUDA_CHECK(cudaMemsetAsync(grad_weight.raw_data(), 0, grad_weight.nbytes(), stream_of(x)));
    return;
  }
  // Enough row blocks to fill the GPU; with grad_weight each block also owns d partial sums.
  const int blocks = int(std::min<int64_t>(rows, want_weight ? 512 : int64_t(1) << 20));
  Tensor partial = want_weight ? Tensor::empty({blocks, d}, DType::f32, x.device()) : Tensor();
  float* partial_data = want_weight ? static_cast<float*>(partial.raw_data()) : nullptr;
  with_storage_type(op, x.dtype(), [&]<class T>() {
    rmsnorm_gated_backward_kernel<T><<<unsigned(blocks), threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(z.raw_data()),
        static_cast<const T*>(weight.raw_data()), static_cast<const T*>(grad_out.raw_data()),
        static_cast<T*>(grad_x.raw_data()), static_cast<T*>(grad_z.raw_data()), partial_data, rows, d, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
    if (!want_weight) return;
    rmsnorm_gated_weight_grad_kernel<T><<<grid_for(d, 256), 256, 0, stream_of(x)>>>(
        partial_data, blocks, d, static_cast<T*>(grad_weight.raw_data()));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
