// CUDA layernorm forward: one block per row (grid-stride over rows), f32 statistics from two passes over
// the row (the mean, then the sum of squared deviations), then a third pass that normalizes and applies the
// affine. The passes re-read the row from global memory; a model row (1024 values) stays in L1 between them.
//
// Backward: the same row blocks (statistics saved, or recomputed as in the forward), two block sums per row
// (g and g * xhat), then grad_x. grad_weight / grad_bias: each block accumulates its rows into its own f32
// slice of a scratch [blocks, 2, D] (thread t always owns the same columns: no races), then one kernel sums
// the slices column by column in block order. Fixed grid for a given shape: reproducible, no atomics.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/layernorm/layernorm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_row(int64_t d) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(d, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

unsigned grid_for_rows(int64_t rows) { return unsigned(std::min<int64_t>(rows, int64_t(1) << 20)); }

// x and out may be the same memory: each element is read and written by the same thread, and every read of
// the row's first value (the shift) happens before the barrier of the first block_sum.
// mean_out / rstd_out: null, or f32 [rows] for the saved statistics.
template <class T>
__global__ void layernorm_kernel(const T* x, const T* __restrict__ weight, const T* __restrict__ bias, T* out,
                                 int64_t rows, int64_t d, float eps, float* __restrict__ mean_out,
                                 float* __restrict__ rstd_out) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    T* yr = out + row * d;
    const ShiftedStats st = shifted_stats(xr, d, eps, scratch);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float centered = (to_float(xr[i]) - st.shift) - st.shifted_mean;
      yr[i] = from_float<T>(centered * st.rstd * to_float(weight[i]) + to_float(bias[i]));
    }
    if (threadIdx.x == 0 && mean_out) {
      mean_out[row] = st.shift + st.shifted_mean;
      rstd_out[row] = st.rstd;
    }
  }
}

void launch(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, float* mean,
            float* rstd) {
  check_cuda_storage("layernorm", x.dtype(), {&x, &weight, &bias, &out});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  if (rows == 0) return;
  with_storage_type("layernorm", x.dtype(), [&]<class T>() {
    layernorm_kernel<T><<<grid_for_rows(rows), threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), rows, d, eps, mean, rstd);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

// saved_mean / saved_rstd: both null (recompute) or f32 [rows]. partial: null (no parameter gradients) or
// f32 [gridDim.x, 2, d]: this block's sums of grad_out * xhat (first d) and grad_out (next d).
template <class T>
__global__ void layernorm_backward_kernel(const T* x, const T* __restrict__ weight,
                                          const float* __restrict__ saved_mean, const float* __restrict__ saved_rstd,
                                          const T* grad_out, T* grad_x, float* __restrict__ partial, int64_t rows,
                                          int64_t d, float eps) {
  __shared__ float scratch[32];
  float* block_partial = partial ? partial + int64_t(blockIdx.x) * 2 * d : nullptr;
  if (block_partial)
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) block_partial[i] = block_partial[d + i] = 0.f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    const T* dyr = grad_out + row * d;
    const ShiftedStats st =
        saved_mean ? ShiftedStats{0.f, saved_mean[row], saved_rstd[row]} : shifted_stats(xr, d, eps, scratch);
    float sum_g = 0.f, sum_g_xhat = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float g = to_float(dyr[i]) * to_float(weight[i]);
      sum_g += g;
      sum_g_xhat += g * st.xhat(to_float(xr[i]));
    }
    const float mean_g = block_sum(sum_g, scratch) / float(d);
    const float mean_g_xhat = block_sum(sum_g_xhat, scratch) / float(d);
    T* dxr = grad_x + row * d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float dy = to_float(dyr[i]), xhat = st.xhat(to_float(xr[i]));
      dxr[i] = from_float<T>(st.rstd * (dy * to_float(weight[i]) - mean_g - xhat * mean_g_xhat));
      if (block_partial) {
        block_partial[i] += dy * xhat;
        block_partial[d + i] += dy;
      }
    }
  }
}

// grad_weight[i] / grad_bias[i] (each may be null) = the blocks' partial sums of column i, in block order.
template <class T>
__global__ void layernorm_param_grads_kernel(const float* __restrict__ partial, int blocks, int64_t d,
                                             T* __restrict__ grad_weight, T* __restrict__ grad_bias) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < d; i += int64_t(gridDim.x) * blockDim.x) {
    float sum_dy_xhat = 0.f, sum_dy = 0.f;
    for (int b = 0; b < blocks; ++b) {
      sum_dy_xhat += partial[int64_t(b) * 2 * d + i];
      sum_dy += partial[int64_t(b) * 2 * d + d + i];
    }
    if (grad_weight) grad_weight[i] = from_float<T>(sum_dy_xhat);
    if (grad_bias) grad_bias[i] = from_float<T>(sum_dy);
  }
}

}  // namespace

void cuda::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  launch(x, weight, bias, out, eps, nullptr, nullptr);
}

void cuda::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps,
                     Tensor& mean, Tensor& rstd) {
  check_cuda_storage("layernorm", DType::f32, {&mean, &rstd});
  launch(x, weight, bias, out, eps, static_cast<float*>(mean.raw_data()), static_cast<float*>(rstd.raw_data()));
}

void cuda::layernorm_backward(const Tensor& x, const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                              const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias,
                              float eps) {
  constexpr const char* op = "layernorm_backward";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  check_cuda_storage(op, DType::f32, {&mean, &rstd});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const bool want_params = grad_weight.defined() || grad_bias.defined();
  if (rows == 0) {  // empty sums: zero parameter gradients
    for (Tensor* g : {&grad_weight, &grad_bias})
      if (g->defined()) MFUSER_CUDA_CHECK(cudaMemsetAsync(g->raw_data(), 0, g->nbytes(), stream_of(x)));
    return;
  }
  // Enough row blocks to fill the GPU; with parameter gradients each block also owns 2 * d partial sums.
  const int blocks = int(std::min<int64_t>(rows, want_params ? 512 : int64_t(1) << 20));
  Tensor partial = want_params ? Tensor::empty({blocks, 2, d}, DType::f32, x.device()) : Tensor();
  float* partial_data = want_params ? static_cast<float*>(partial.raw_data()) : nullptr;
  with_storage_type(op, x.dtype(), [&]<class T>() {
    layernorm_backward_kernel<T><<<unsigned(blocks), threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        mean.defined() ? static_cast<const float*>(mean.raw_data()) : nullptr,
        rstd.defined() ? static_cast<const float*>(rstd.raw_data()) : nullptr,
        static_cast<const T*>(grad_out.raw_data()), static_cast<T*>(grad_x.raw_data()), partial_data, rows, d, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
    if (!want_params) return;
    layernorm_param_grads_kernel<T><<<grid_for(d, 256), 256, 0, stream_of(x)>>>(
        partial_data, blocks, d, grad_weight.defined() ? static_cast<T*>(grad_weight.raw_data()) : nullptr,
        grad_bias.defined() ? static_cast<T*>(grad_bias.raw_data()) : nullptr);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
