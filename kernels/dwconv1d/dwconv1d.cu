// CUDA dwconv1d (forward): one thread per output element (b, l, c), channels fastest, so a warp reads each tap's
// source token as one contiguous run of channels and writes its outputs contiguously. K is tiny (3 in MFuser);
// the taps come through the cache. f32 accumulation in the reference's order (bias, then taps left to right).
//
// Backward: grad_x is the same gather (one thread per input element, taps mirrored). grad_weight / grad_bias
// sum over every (b, l) row without float atomics: pass 1 writes one f32 partial per (row chunk, channel, tap)
// (and per (row chunk, channel) for the bias), pass 2 (sum_partials) adds the chunks in chunk order. The chunk
// count depends on the shape only, so the results are bit-identical run to run.
#include "kernels/common/cuda_common.cuh"
#include "kernels/dwconv1d/dwconv1d.h"

#include <algorithm>
#include <climits>

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class T>
__global__ void dwconv1d_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                T* __restrict__ out, int64_t count, int64_t len, int64_t channels, int kernel) {
  const int left = (kernel - 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels, l = i / channels % len;
    float acc = bias ? to_float(bias[c]) : 0.f;
    for (int j = 0; j < kernel; ++j) {
      const int64_t source = l + j - left;  // token read by tap j; zeros outside [0, len)
      if (source >= 0 && source < len) acc += to_float(weight[c * kernel + j]) * to_float(x[i + (j - left) * channels]);
    }
    out[i] = from_float<T>(acc);
  }
}

template <class T>
__global__ void dwconv1d_grad_x_kernel(const T* __restrict__ weight, const T* __restrict__ grad_out,
                                       T* __restrict__ grad_x, int64_t count, int64_t len, int64_t channels,
                                       int kernel) {
  const int left = (kernel - 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels, m = i / channels % len;
    float acc = 0.f;
    for (int j = 0; j < kernel; ++j) {
      const int64_t target = m - j + left;  // output token that read input m through tap j
      if (target >= 0 && target < len)
        acc += to_float(weight[c * kernel + j]) * to_float(grad_out[i + (left - j) * channels]);
    }
    grad_x[i] = from_float<T>(acc);
  }
}

constexpr int kSumChannels = 32, kSumLanes = 8;
constexpr int64_t kRowsPerChunk = 256, kMaxChunks = 256;

// Block (x = 32 channels, y = 8 row lanes) of chunk blockIdx.y and tap first_tap + blockIdx.z (tap == kernel: the
// bias sum). Each lane sums every 8th row of the chunk; the lanes meet in shared memory in a fixed order.
// Partials: weight_partial [chunk][c * kernel + tap] (grad_weight's layout), bias_partial [chunk][c].
template <class T>
__global__ void dwconv1d_param_partials_kernel(const T* __restrict__ x, const T* __restrict__ grad_out,
                                               float* __restrict__ weight_partial, float* __restrict__ bias_partial,
                                               int64_t rows, int64_t len, int64_t channels, int kernel, int first_tap,
                                               int64_t chunk_rows) {
  __shared__ float lane_sums[kSumLanes][kSumChannels];
  const int64_t c = blockIdx.x * int64_t(kSumChannels) + threadIdx.x;
  const int tap = first_tap + int(blockIdx.z), shift = tap - (kernel - 1) / 2;
  const int64_t begin = blockIdx.y * chunk_rows, end = min(rows, begin + chunk_rows);
  float sum = 0.f;
  if (c < channels)
    for (int64_t r = begin + threadIdx.y; r < end; r += kSumLanes) {
      const float dy = to_float(grad_out[r * channels + c]);
      if (tap == kernel) {
        sum += dy;
      } else {
        const int64_t source = r % len + shift;  // token read by this tap; zeros outside [0, len)
        if (source >= 0 && source < len) sum += dy * to_float(x[(r + shift) * channels + c]);
      }
    }
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    float total = 0.f;
    for (int lane = 0; lane < kSumLanes; ++lane) total += lane_sums[lane][threadIdx.x];
    if (tap == kernel)
      bias_partial[blockIdx.y * channels + c] = total;
    else
      weight_partial[(blockIdx.y * channels + c) * kernel + tap] = total;
  }
}

}  // namespace

void cuda::dwconv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_out, Tensor& grad_x,
                             Tensor& grad_weight, Tensor& grad_bias) {
  constexpr const char* op = "dwconv1d_backward";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &grad_out, &grad_x, &grad_weight, &grad_bias});
  const int64_t len = x.dim(1), channels = x.dim(2), rows = x.dim(0) * len, count = x.numel();
  MFUSER_CHECK(weight.dim(2) <= 65534, op, ": kernel size ", weight.dim(2), " too large");
  const int kernel = int(weight.dim(2));
  cudaStream_t stream = stream_of(x);
  with_storage_type(op, x.dtype(), [&]<class T>() {
    constexpr int threads = 256;
    if (grad_x.defined() && count > 0) {
      dwconv1d_grad_x_kernel<T><<<grid_for(count, threads), threads, 0, stream>>>(
          static_cast<const T*>(weight.raw_data()), static_cast<const T*>(grad_out.raw_data()),
          static_cast<T*>(grad_x.raw_data()), count, len, channels, kernel);
      MFUSER_CUDA_CHECK_LAUNCH();
    }
    if ((!grad_weight.defined() && !grad_bias.defined()) || channels == 0) return;
    // rows == 0: one chunk of no rows writes zeros, the gradient of an empty sum.
    const int64_t chunks = std::clamp<int64_t>(ceil_div<int64_t>(rows, kRowsPerChunk), 1, kMaxChunks);
    const int64_t chunk_rows = std::max<int64_t>(1, ceil_div<int64_t>(rows, chunks));
    MFUSER_CHECK(ceil_div<int64_t>(channels, kSumChannels) <= INT_MAX, op, ": ", channels, " channels are too many");
    Tensor partial = Tensor::empty({chunks, kernel + 1, channels}, DType::f32, x.device());
    float* weight_partial = partial.data<float>();  // [chunks][C * K]
    float* bias_partial = weight_partial + chunks * channels * kernel;  // [chunks][C]
    // Only the taps of the wanted gradients: 0 .. kernel - 1 for grad_weight, kernel for grad_bias.
    const int first_tap = grad_weight.defined() ? 0 : kernel, last_tap = grad_bias.defined() ? kernel : kernel - 1;
    const dim3 grid(unsigned(ceil_div<int64_t>(channels, kSumChannels)), unsigned(chunks),
                    unsigned(last_tap - first_tap + 1));
    dwconv1d_param_partials_kernel<T><<<grid, dim3(kSumChannels, kSumLanes), 0, stream>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(grad_out.raw_data()), weight_partial,
        bias_partial, rows, len, channels, kernel, first_tap, chunk_rows);
    MFUSER_CUDA_CHECK_LAUNCH();
    if (grad_weight.defined())
      sum_partials(weight_partial, static_cast<T*>(grad_weight.raw_data()), chunks, channels * kernel, stream);
    if (grad_bias.defined())
      sum_partials(bias_partial, static_cast<T*>(grad_bias.raw_data()), chunks, channels, stream);
  });
}

void cuda::dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  constexpr const char* op = "dwconv1d";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &bias, &out});
  const int64_t count = x.numel();
  if (count == 0) return;
  MFUSER_CHECK(weight.dim(2) <= (1 << 30), op, ": kernel size ", weight.dim(2), " too large");
  with_storage_type(op, x.dtype(), [&]<class T>() {
    constexpr int threads = 256;
    dwconv1d_kernel<T><<<grid_for(count, threads), threads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr, static_cast<T*>(out.raw_data()), count,
        x.dim(1), x.dim(2), int(weight.dim(2)));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
