// CUDA batchnorm forwards.
//   inference: element-wise; blockIdx.y walks the (image, channel) planes, so each block derives its channel's
//     scale and shift once, and blockIdx.x / threadIdx.x walk the plane's spatial values.
//   training: one block per channel (grid-stride over channels); f32 batch statistics from two passes over the
//     channel's N * spatial values (the mean, then the sum of squared deviations), then a third pass that
//     normalizes; thread 0 saves the statistics and updates the running ones.
//   SyncBN: the moments kernel is the training forward's statistics passes alone; the synced forward combines the
//     gathered moments of every rank per channel (double, in every thread: few ranks) and normalizes as above.
// Backwards (both in one kernel): one block per channel (grid-stride over channels). The channel's statistics
// are the running ones (inference), the saved ones, or recomputed as in the training forward; two block sums
// (grad_out and grad_out * xhat) give grad_bias / grad_weight (written by thread 0: one block owns a channel, so
// the order is fixed and there are no atomics) and the coefficients of grad_x, written by a last pass.
#include <algorithm>

#include "kernels/batchnorm/batchnorm.h"
#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

// x and out may be the same memory (each element is read, then written, by one thread).
template <class T>
__global__ void batchnorm_kernel(const T* x, const T* __restrict__ running_mean, const T* __restrict__ running_var,
                                 const T* __restrict__ weight, const T* __restrict__ bias, T* out, int64_t planes,
                                 int64_t channels, int64_t spatial, float eps) {
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int64_t c = plane % channels;
    const float mean = to_float(running_mean[c]), shift = to_float(bias[c]);
    const float scale = to_float(weight[c]) / sqrtf(to_float(running_var[c]) + eps);
    const T* xp = x + plane * spatial;
    T* yp = out + plane * spatial;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < spatial; i += int64_t(gridDim.x) * blockDim.x)
      yp[i] = from_float<T>((to_float(xp[i]) - mean) * scale + shift);
  }
}

// Channel c's values: index j in [0, images * spatial) is image j / spatial, position j % spatial.
struct ChannelView {
  int64_t channels, spatial, count;
  __device__ int64_t offset(int64_t c, int64_t j) const { return (j / spatial * channels + c) * spatial + j % spatial; }
};

// Channel c's mean (shift + shifted_mean) and M2 (sum of squared deviations from it): two passes over values
// shifted by the channel's first one (see layernorm.cu), so no digits are lost when |mean| >> std. Every read of
// the first value happens before the barrier of the first block_sum.
struct ChannelMoments {
  float shift, shifted_mean, m2;
};

template <class T>
__device__ ChannelMoments channel_moments(const T* x, const ChannelView& view, int64_t c, float* scratch) {
  const float shift = to_float(x[view.offset(c, 0)]);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < view.count; j += blockDim.x) sum += to_float(x[view.offset(c, j)]) - shift;
  const float shifted_mean = block_sum(sum, scratch) / float(view.count);
  float squares = 0.f;
  for (int64_t j = threadIdx.x; j < view.count; j += blockDim.x) {
    const float centered = (to_float(x[view.offset(c, j)]) - shift) - shifted_mean;
    squares += centered * centered;
  }
  return {shift, shifted_mean, block_sum(squares, scratch)};
}

// The training forward's outputs of channel c from its batch statistics (mean = shift + shifted_mean, biased
// var over `count` values, possibly several ranks'). running_mean / running_var: null when not tracked;
// statistics are f32 whatever T is. out may be x's memory (each element is read, then written, by one thread).
template <class T>
struct TrainOutputs {
  const T* __restrict__ weight;
  const T* __restrict__ bias;
  T* out;
  float momentum, eps;
  float* __restrict__ running_mean;
  float* __restrict__ running_var;
  float* __restrict__ save_mean;
  float* __restrict__ save_rstd;

  __device__ void write(const T* x, const ChannelView& view, int64_t c, float shift, float shifted_mean, float var,
                        int64_t count) const {
    const float rstd = 1.f / sqrtf(var + eps);
    const float scale = to_float(weight[c]), offset = to_float(bias[c]);
    for (int64_t j = threadIdx.x; j < view.count; j += blockDim.x) {
      const int64_t i = view.offset(c, j);
      out[i] = from_float<T>(((to_float(x[i]) - shift) - shifted_mean) * rstd * scale + offset);
    }
    if (threadIdx.x == 0) {
      const float mean = shift + shifted_mean;
      save_mean[c] = mean;
      save_rstd[c] = rstd;
      if (running_mean) {  // PyTorch's update: the running variance takes the unbiased batch variance
        const float unbiased = var * (float(count) / float(count - 1));
        running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (1.f - momentum) * running_var[c] + momentum * unbiased;
      }
    }
  }
};

template <class T>
__global__ void batchnorm_train_kernel(const T* x, ChannelView view, TrainOutputs<T> outputs) {
  __shared__ float scratch[32];
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const ChannelMoments m = channel_moments(x, view, c, scratch);
    outputs.write(x, view, c, m.shift, m.shifted_mean, m.m2 / float(view.count), view.count);
  }
}

// moments [2, C]: row 0 the channel means, row 1 their M2.
template <class T>
__global__ void batchnorm_moments_kernel(const T* x, ChannelView view, float* __restrict__ moments) {
  __shared__ float scratch[32];
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const ChannelMoments m = channel_moments(x, view, c, scratch);
    if (threadIdx.x == 0) {
      moments[c] = m.shift + m.shifted_mean;
      moments[view.channels + c] = m.m2;
    }
  }
}

// gathered [ranks, 2, C]: every rank's moments over view.count values each; combined in double (few ranks, so
// every thread does it and no broadcast is needed).
template <class T>
__global__ void batchnorm_train_synced_kernel(const T* x, ChannelView view, const float* __restrict__ gathered,
                                              int64_t ranks, TrainOutputs<T> outputs) {
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const auto rank_mean = [&](int64_t r) { return double(gathered[(r * 2) * view.channels + c]); };
    double mean = 0, m2 = 0;
    for (int64_t r = 0; r < ranks; ++r) mean += rank_mean(r);
    mean /= double(ranks);
    for (int64_t r = 0; r < ranks; ++r) {
      const double d = rank_mean(r) - mean;
      m2 += double(gathered[(r * 2 + 1) * view.channels + c]) + double(view.count) * d * d;
    }
    outputs.write(x, view, c, 0.f, float(mean), float(m2 / double(ranks * view.count)), ranks * view.count);
  }
}

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_channel(int64_t count) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(count, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

float* f32_or_null(const Tensor& t) { return t.defined() ? static_cast<float*>(t.raw_data()) : nullptr; }

// Where a backward takes channel c's statistics from: the running ones (inference: constants, grad_x =
// grad_out * weight * rstd), the training forward's saved ones, or (all null) recomputed from x.
template <class T>
struct StatsSource {
  const T* running_mean;
  const T* running_var;
  const float* saved_mean;
  const float* saved_rstd;
  float eps;
  __host__ __device__ bool batch_stats() const { return running_mean == nullptr; }
};

// x - mean = (x - shift) - shifted_mean: recomputed statistics keep the forward's shift by the channel's first
// value; running and saved ones have shift 0.
struct ChannelStats {
  float shift, shifted_mean, rstd;
  __device__ float xhat(float v) const { return ((v - shift) - shifted_mean) * rstd; }
};

template <class T>
__device__ ChannelStats channel_stats(const T* x, const ChannelView& view, int64_t c, const StatsSource<T>& src,
                                      float* scratch) {
  if (src.running_mean)
    return {0.f, to_float(src.running_mean[c]), 1.f / sqrtf(to_float(src.running_var[c]) + src.eps)};
  if (src.saved_mean) return {0.f, src.saved_mean[c], src.saved_rstd[c]};
  const ChannelMoments m = channel_moments(x, view, c, scratch);
  return {m.shift, m.shifted_mean, 1.f / sqrtf(m.m2 / float(view.count) + src.eps)};
}

// Channel c's block sums of grad_out and grad_out * xhat (every thread gets them). Every read happens before
// the barrier of the second block_sum.
template <class T>
__device__ float2 channel_grad_sums(const T* x, const T* grad_out, const ChannelView& view, int64_t c,
                                    const ChannelStats& st, float* scratch) {
  float sum_dy = 0.f, sum_dy_xhat = 0.f;
  for (int64_t j = threadIdx.x; j < view.count; j += blockDim.x) {
    const int64_t i = view.offset(c, j);
    const float dy = to_float(grad_out[i]);
    sum_dy += dy;
    sum_dy_xhat += dy * st.xhat(to_float(x[i]));
  }
  sum_dy = block_sum(sum_dy, scratch);
  return {sum_dy, block_sum(sum_dy_xhat, scratch)};
}

// grad_x of channel c = dy * a + xhat * b + shift.
template <class T>
__device__ void write_grad_x(const T* x, const T* grad_out, T* grad_x, const ChannelView& view, int64_t c,
                             const ChannelStats& st, float a, float b, float shift) {
  for (int64_t j = threadIdx.x; j < view.count; j += blockDim.x) {
    const int64_t i = view.offset(c, j);
    grad_x[i] = from_float<T>(to_float(grad_out[i]) * a + st.xhat(to_float(x[i])) * b + shift);
  }
}

// grad_weight / grad_bias: null when not wanted. grad_x may be grad_out's memory (each element is read, then
// written, by one thread; every read of the sums pass ends before the barrier of its block_sum).
template <class T>
__global__ void batchnorm_backward_kernel(const T* x, const T* __restrict__ weight, const T* grad_out, T* grad_x,
                                          T* __restrict__ grad_weight, T* __restrict__ grad_bias, ChannelView view,
                                          StatsSource<T> src) {
  __shared__ float scratch[32];
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const ChannelStats st = channel_stats(x, view, c, src, scratch);
    const float2 sums = channel_grad_sums(x, grad_out, view, c, st, scratch);
    const float a = to_float(weight[c]) * st.rstd;
    const float b = src.batch_stats() ? -a * sums.y / float(view.count) : 0.f;
    const float shift = src.batch_stats() ? -a * sums.x / float(view.count) : 0.f;
    write_grad_x(x, grad_out, grad_x, view, c, st, a, b, shift);
    if (threadIdx.x == 0) {
      if (grad_weight) grad_weight[c] = from_float<T>(sums.y);
      if (grad_bias) grad_bias[c] = from_float<T>(sums.x);
    }
  }
}

// SyncBN backward, first half: sums [2, C] = this rank's (sum of grad_out, sum of grad_out * xhat).
template <class T>
__global__ void batchnorm_grad_sums_kernel(const T* x, const T* grad_out, ChannelView view,
                                           const float* __restrict__ save_mean, const float* __restrict__ save_rstd,
                                           float* __restrict__ sums) {
  __shared__ float scratch[32];
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const float2 s = channel_grad_sums(x, grad_out, view, c, ChannelStats{0.f, save_mean[c], save_rstd[c]}, scratch);
    if (threadIdx.x == 0) {
      sums[c] = s.x;
      sums[view.channels + c] = s.y;
    }
  }
}

// SyncBN backward, second half: grad_x from the group's sums over `count` values.
template <class T>
__global__ void batchnorm_backward_synced_kernel(const T* x, const T* __restrict__ weight, const T* grad_out,
                                                 T* grad_x, ChannelView view, const float* __restrict__ save_mean,
                                                 const float* __restrict__ save_rstd, const float* __restrict__ sums,
                                                 int64_t count) {
  for (int64_t c = blockIdx.x; c < view.channels; c += gridDim.x) {
    const ChannelStats st{0.f, save_mean[c], save_rstd[c]};
    const float a = to_float(weight[c]) * st.rstd;
    write_grad_x(x, grad_out, grad_x, view, c, st, a, -a * sums[view.channels + c] / float(count),
                 -a * sums[c] / float(count));
  }
}

ChannelView channel_view(const Tensor& x) {
  const int64_t channels = x.dim(1);
  return {channels, x.numel() / (x.dim(0) * channels), x.numel() / channels};
}

unsigned channel_grid(int64_t channels) { return unsigned(std::min<int64_t>(channels, int64_t(1) << 20)); }

template <class T>
T* typed(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

template <class T>
TrainOutputs<T> train_outputs(const Tensor& weight, const Tensor& bias, Tensor& out, float momentum, float eps,
                              Tensor& running_mean, Tensor& running_var, Tensor& save_mean, Tensor& save_rstd) {
  return {typed<const T>(weight), typed<const T>(bias), typed<T>(out),       momentum,
          eps,                    f32_or_null(running_mean), f32_or_null(running_var), f32_or_null(save_mean),
          f32_or_null(save_rstd)};
}

// Both backwards: `running_mean` / `running_var` defined for the inference op, else saved stats or none.
void launch_backward(const char* op, const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                     const Tensor& save_mean, const Tensor& save_rstd, const Tensor& weight, const Tensor& grad_out,
                     Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias, float eps) {
  check_cuda_storage(op, x.dtype(),
                     {&x, &running_mean, &running_var, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  check_cuda_storage(op, DType::f32, {&save_mean, &save_rstd});
  if (x.numel() == 0) {  // empty sums: zero parameter gradients
    for (Tensor* g : {&grad_weight, &grad_bias})
      if (g->defined()) MFUSER_CUDA_CHECK(cudaMemsetAsync(g->raw_data(), 0, g->nbytes(), stream_of(x)));
    return;
  }
  const ChannelView view = channel_view(x);
  with_storage_type(op, x.dtype(), [&]<class T>() {
    const auto data = [](const Tensor& t) { return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr; };
    const StatsSource<T> src{data(running_mean), data(running_var), f32_or_null(save_mean), f32_or_null(save_rstd),
                             eps};
    batchnorm_backward_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0, stream_of(x)>>>(
        data(x), data(weight), data(grad_out), data(grad_x), data(grad_weight), data(grad_bias), view, src);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void cuda::batchnorm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var, const Tensor& weight,
                     const Tensor& bias, Tensor& out, float eps) {
  check_cuda_storage("batchnorm", x.dtype(), {&x, &running_mean, &running_var, &weight, &bias, &out});
  if (x.numel() == 0) return;
  const int64_t channels = x.dim(1), planes = x.dim(0) * channels, spatial = x.numel() / planes;
  const dim3 grid(unsigned(std::min<int64_t>(ceil_div<int64_t>(spatial, kThreads), 1024)),
                  unsigned(std::min<int64_t>(planes, 65535)));
  with_storage_type("batchnorm", x.dtype(), [&]<class T>() {
    batchnorm_kernel<T><<<grid, kThreads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(running_mean.raw_data()),
        static_cast<const T*>(running_var.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), planes, channels, spatial, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_train(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& running_mean,
                           Tensor& running_var, Tensor& out, Tensor& save_mean, Tensor& save_rstd, float momentum,
                           float eps) {
  check_cuda_storage("batchnorm_train", x.dtype(), {&x, &weight, &bias, &out});
  check_cuda_storage("batchnorm_train", DType::f32, {&running_mean, &running_var, &save_mean, &save_rstd});
  if (x.dim(1) == 0) return;
  const ChannelView view = channel_view(x);
  with_storage_type("batchnorm_train", x.dtype(), [&]<class T>() {
    batchnorm_train_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0, stream_of(x)>>>(
        typed<const T>(x), view,
        train_outputs<T>(weight, bias, out, momentum, eps, running_mean, running_var, save_mean, save_rstd));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_moments(const Tensor& x, Tensor& moments) {
  check_cuda_storage("batchnorm_moments", x.dtype(), {&x});
  check_cuda_storage("batchnorm_moments", DType::f32, {&moments});
  if (x.dim(1) == 0) return;
  const ChannelView view = channel_view(x);
  with_storage_type("batchnorm_moments", x.dtype(), [&]<class T>() {
    batchnorm_moments_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0, stream_of(x)>>>(
        typed<const T>(x), view, typed<float>(moments));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_train_synced(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& gathered,
                                  Tensor& running_mean, Tensor& running_var, Tensor& out, Tensor& save_mean,
                                  Tensor& save_rstd, float momentum, float eps) {
  check_cuda_storage("batchnorm_train_synced", x.dtype(), {&x, &weight, &bias, &out});
  check_cuda_storage("batchnorm_train_synced", DType::f32,
                     {&gathered, &running_mean, &running_var, &save_mean, &save_rstd});
  if (x.dim(1) == 0) return;
  const ChannelView view = channel_view(x);
  with_storage_type("batchnorm_train_synced", x.dtype(), [&]<class T>() {
    batchnorm_train_synced_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0,
                                       stream_of(x)>>>(
        typed<const T>(x), view, typed<const float>(gathered), gathered.dim(0),
        train_outputs<T>(weight, bias, out, momentum, eps, running_mean, running_var, save_mean, save_rstd));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_grad_sums(const Tensor& x, const Tensor& save_mean, const Tensor& save_rstd,
                               const Tensor& grad_out, Tensor& sums) {
  check_cuda_storage("batchnorm_grad_sums", x.dtype(), {&x, &grad_out});
  check_cuda_storage("batchnorm_grad_sums", DType::f32, {&save_mean, &save_rstd, &sums});
  if (x.dim(1) == 0) return;
  const ChannelView view = channel_view(x);
  with_storage_type("batchnorm_grad_sums", x.dtype(), [&]<class T>() {
    batchnorm_grad_sums_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0, stream_of(x)>>>(
        typed<const T>(x), typed<const T>(grad_out), view, typed<const float>(save_mean),
        typed<const float>(save_rstd), typed<float>(sums));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_train_backward_synced(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                           const Tensor& save_rstd, const Tensor& grad_out, const Tensor& sums,
                                           int64_t count, Tensor& grad_x) {
  check_cuda_storage("batchnorm_train_backward_synced", x.dtype(), {&x, &weight, &grad_out, &grad_x});
  check_cuda_storage("batchnorm_train_backward_synced", DType::f32, {&save_mean, &save_rstd, &sums});
  if (x.numel() == 0) return;
  const ChannelView view = channel_view(x);
  with_storage_type("batchnorm_train_backward_synced", x.dtype(), [&]<class T>() {
    batchnorm_backward_synced_kernel<T><<<channel_grid(view.channels), threads_for_channel(view.count), 0,
                                          stream_of(x)>>>(
        typed<const T>(x), typed<const T>(weight), typed<const T>(grad_out), typed<T>(grad_x), view,
        typed<const float>(save_mean), typed<const float>(save_rstd), typed<const float>(sums), count);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::batchnorm_backward(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                              const Tensor& weight, const Tensor& grad_out, Tensor& grad_x, Tensor& grad_weight,
                              Tensor& grad_bias, float eps) {
  launch_backward("batchnorm_backward", x, running_mean, running_var, Tensor(), Tensor(), weight, grad_out, grad_x,
                  grad_weight, grad_bias, eps);
}

void cuda::batchnorm_train_backward(const Tensor& x, const Tensor& weight, const Tensor& save_mean,
                                    const Tensor& save_rstd, const Tensor& grad_out, Tensor& grad_x,
                                    Tensor& grad_weight, Tensor& grad_bias, float eps) {
  launch_backward("batchnorm_train_backward", x, Tensor(), Tensor(), save_mean, save_rstd, weight, grad_out, grad_x,
                  grad_weight, grad_bias, eps);
}

}  // namespace mfuser::kernels
