// CUDA groupnorm forward: one block per (image, group) (grid-stride over them). A group's
// channels are contiguous in [N, C, *spatial], so its statistics are two f32 passes over one contiguous run
// (the mean, then the sum of squared deviations); a third pass normalizes channel by channel with that
// channel's weight and bias. The pixel decoder's groups are 8 x 128^2 values (512 KB of f32): the later passes
// re-read them through L2.
//
// Backward: the same (image, group) blocks. Statistics recomputed as in the forward; then per channel of the
// group two block sums over its spatial run (grad_out and grad_out * xhat): they give grad_bias / grad_weight's
// per-image terms (written to a scratch [N, 2, C], one slot per (image, channel): no races) and, weighted by
// the channel's weight, the group sums grad_x needs. A last pass writes grad_x; a second kernel sums the
// scratch over images in order (deterministic, no atomics).
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/groupnorm/groupnorm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs): the model's groups
// get 1024.
int threads_for_group(int64_t group_size) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(group_size, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

// x and out may be the same memory: each element is read and written by the same thread, and every read of
// the group's first value (the shift) happens before the barrier of the first block_sum.
template <class T>
__global__ void groupnorm_kernel(const T* x, const T* __restrict__ weight, const T* __restrict__ bias, T* out,
                                 int64_t blocks, int num_groups, int64_t channels_per_group, int64_t spatial,
                                 float eps) {
  __shared__ float scratch[32];
  const int64_t group_size = channels_per_group * spatial;
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const T* xg = x + block * group_size;
    T* yg = out + block * group_size;
    const ShiftedStats st = shifted_stats(xg, group_size, eps, scratch);
    const int64_t first_channel = (block % num_groups) * channels_per_group;
    for (int64_t k = 0; k < channels_per_group; ++k) {
      const float scale = to_float(weight[first_channel + k]), offset = to_float(bias[first_channel + k]);
      for (int64_t i = k * spatial + threadIdx.x; i < (k + 1) * spatial; i += blockDim.x) {
        const float centered = (to_float(xg[i]) - st.shift) - st.shifted_mean;
        yg[i] = from_float<T>(centered * st.rstd * scale + offset);
      }
    }
  }
}

// partial: null (no parameter gradients) or f32 [N, 2, C]: per image, sums over spatial of grad_out * xhat
// (first C) and grad_out (next C). grad_x may be grad_out's memory (each element is read and written by one
// thread, and the last pass reads grad_out only at the element it writes).
template <class T>
__global__ void groupnorm_backward_kernel(const T* x, const T* __restrict__ weight, const T* grad_out, T* grad_x,
                                          float* __restrict__ partial, int64_t blocks, int num_groups,
                                          int64_t channels_per_group, int64_t spatial, float eps) {
  __shared__ float scratch[32];
  const int64_t group_size = channels_per_group * spatial, channels = num_groups * channels_per_group;
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const T* xg = x + block * group_size;
    const T* dyg = grad_out + block * group_size;
    const ShiftedStats st = shifted_stats(xg, group_size, eps, scratch);
    const int64_t image = block / num_groups, first_channel = (block % num_groups) * channels_per_group;
    float sum_g = 0.f, sum_g_xhat = 0.f;  // over the group, g = grad_out * weight[channel]
    for (int64_t k = 0; k < channels_per_group; ++k) {
      float dy_sum = 0.f, dy_xhat_sum = 0.f;
      for (int64_t i = k * spatial + threadIdx.x; i < (k + 1) * spatial; i += blockDim.x) {
        const float dy = to_float(dyg[i]);
        dy_sum += dy;
        dy_xhat_sum += dy * st.xhat(to_float(xg[i]));
      }
      dy_sum = block_sum(dy_sum, scratch);
      dy_xhat_sum = block_sum(dy_xhat_sum, scratch);
      const float scale = to_float(weight[first_channel + k]);
      sum_g += scale * dy_sum;
      sum_g_xhat += scale * dy_xhat_sum;
      if (partial && threadIdx.x == 0) {
        partial[image * 2 * channels + first_channel + k] = dy_xhat_sum;
        partial[image * 2 * channels + channels + first_channel + k] = dy_sum;
      }
    }
    const float mean_g = sum_g / float(group_size), mean_g_xhat = sum_g_xhat / float(group_size);
    T* dxg = grad_x + block * group_size;
    for (int64_t k = 0; k < channels_per_group; ++k) {
      const float scale = to_float(weight[first_channel + k]);
      for (int64_t i = k * spatial + threadIdx.x; i < (k + 1) * spatial; i += blockDim.x) {
        const float xhat = st.xhat(to_float(xg[i]));
        dxg[i] = from_float<T>(st.rstd * (to_float(dyg[i]) * scale - mean_g - xhat * mean_g_xhat));
      }
    }
  }
}

// grad_weight[c] / grad_bias[c] (each may be null) = the per-image partial sums of channel c, in image order.
template <class T>
__global__ void groupnorm_param_grads_kernel(const float* __restrict__ partial, int64_t images, int64_t channels,
                                             T* __restrict__ grad_weight, T* __restrict__ grad_bias) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < channels;
       c += int64_t(gridDim.x) * blockDim.x) {
    float sum_dy_xhat = 0.f, sum_dy = 0.f;
    for (int64_t n = 0; n < images; ++n) {
      sum_dy_xhat += partial[n * 2 * channels + c];
      sum_dy += partial[n * 2 * channels + channels + c];
    }
    if (grad_weight) grad_weight[c] = from_float<T>(sum_dy_xhat);
    if (grad_bias) grad_bias[c] = from_float<T>(sum_dy);
  }
}

}  // namespace

void cuda::groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups,
                     float eps) {
  check_cuda_storage("groupnorm", x.dtype(), {&x, &weight, &bias, &out});
  if (x.numel() == 0) return;
  const int64_t n = x.dim(0), c = x.dim(1), spatial = x.numel() / (n * c);
  const int64_t blocks = n * num_groups, channels_per_group = c / num_groups;
  const unsigned grid = unsigned(std::min<int64_t>(blocks, int64_t(1) << 20));
  with_storage_type("groupnorm", x.dtype(), [&]<class T>() {
    groupnorm_kernel<T><<<grid, threads_for_group(channels_per_group * spatial), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), blocks, num_groups,
        channels_per_group, spatial, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::groupnorm_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                              Tensor& grad_weight, Tensor& grad_bias, int num_groups, float eps) {
  constexpr const char* op = "groupnorm_backward";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  const int64_t n = x.dim(0), c = x.dim(1);
  const bool want_params = grad_weight.defined() || grad_bias.defined();
  if (x.numel() == 0) {  // empty sums: zero parameter gradients
    for (Tensor* g : {&grad_weight, &grad_bias})
      if (g->defined()) MFUSER_CUDA_CHECK(cudaMemsetAsync(g->raw_data(), 0, g->nbytes(), stream_of(x)));
    return;
  }
  const int64_t spatial = x.numel() / (n * c), blocks = n * num_groups, channels_per_group = c / num_groups;
  const unsigned grid = unsigned(std::min<int64_t>(blocks, int64_t(1) << 20));
  Tensor partial = want_params ? Tensor::empty({n, 2, c}, DType::f32, x.device()) : Tensor();
  float* partial_data = want_params ? static_cast<float*>(partial.raw_data()) : nullptr;
  with_storage_type(op, x.dtype(), [&]<class T>() {
    groupnorm_backward_kernel<T><<<grid, threads_for_group(channels_per_group * spatial), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(grad_out.raw_data()), static_cast<T*>(grad_x.raw_data()), partial_data, blocks,
        num_groups, channels_per_group, spatial, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
    if (!want_params) return;
    groupnorm_param_grads_kernel<T><<<grid_for(c, 256), 256, 0, stream_of(x)>>>(
        partial_data, n, c, grad_weight.defined() ? static_cast<T*>(grad_weight.raw_data()) : nullptr,
        grad_bias.defined() ? static_cast<T*>(grad_bias.raw_data()) : nullptr);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
