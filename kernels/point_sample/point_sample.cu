// CUDA point_sample (forward): one thread per output element (n, c, p), points fastest, so a warp reads
// consecutive points and writes consecutive outputs. The taps are formed exactly as the CPU reference forms them
// (pixel coordinates and weights in double, exact for f32 points; weights rounded to f32), so points on pixel
// centres and edges pick the same corners; the four-term sum runs in f32 in the same order.
//
// Backward, deterministic without float atomics: the scatter is turned into a gather. Pass 1 gives every point
// a key, its image and the top-left corner (y0, x0) of its taps; a stable radix sort (CUB) groups the points by
// key, keeping point order inside a group. Pass 2 runs one thread per (n, pixel): the points touching pixel
// (i, j) through corner k are exactly the group of top-left corner (i - k / 2, j - k % 2), found by binary
// search in the sorted keys; the thread sums their weighted grad_out, corner by corner and in point order, for
// every channel. The sum order depends on the inputs only, so the result is bit-identical run to run.
#include <algorithm>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/cuda_common.cuh"
#include "kernels/point_sample/bilinear_taps.cuh"
#include "kernels/point_sample/point_sample.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class T>
__global__ void point_sample_kernel(const T* __restrict__ input, const T* __restrict__ points, T* __restrict__ out,
                                    int64_t count, int64_t channels, int64_t height, int64_t width, int64_t num_points) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % num_points, nc = i / num_points, n = nc / channels;
    const T* map = input + nc * height * width;
    const T* point = points + 2 * (n * num_points + p);
    float acc = 0.f;
    BilinearTaps taps;
    if (bilinear_taps(to_float(point[0]), to_float(point[1]), height, width, taps)) {
#pragma unroll
      for (int k = 0; k < 4; ++k)  // corners outside: zero padding
        if (taps.inside(k, height, width)) acc += float(taps.weight[k]) * to_float(map[taps.offset(k, width)]);
    }
    out[i] = from_float<T>(acc);
  }
}

// key of point np = n * (H + 1) * (W + 1) + (y0 + 1) * (W + 1) + (x0 + 1), y0 in [-1, H), x0 in [-1, W); a point
// with no corner inside the map gets `no_corner` (greater than every real key). value = np.
template <class T>
__global__ void point_keys_kernel(const T* __restrict__ points, uint32_t* __restrict__ keys,
                                  int32_t* __restrict__ values, int64_t count, int64_t num_points, int64_t height,
                                  int64_t width, uint32_t no_corner) {
  for (int64_t np = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; np < count;
       np += int64_t(gridDim.x) * blockDim.x) {
    uint32_t key = no_corner;
    BilinearTaps taps;
    if (bilinear_taps(to_float(points[2 * np]), to_float(points[2 * np + 1]), height, width, taps)) {
      const int64_t n = np / num_points;
      key = uint32_t((n * (height + 1) + taps.row0 + 1) * (width + 1) + taps.col0 + 1);
    }
    keys[np] = key;
    values[np] = int32_t(np);
  }
}

// First index of sorted_keys[0, count) whose key is >= key.
__device__ __forceinline__ int64_t lower_bound(const uint32_t* sorted_keys, int64_t count, uint32_t key) {
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (sorted_keys[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// One thread per (n, pixel), looping over the channels. grad_out [N, C, P], grad_input [N, C, H, W].
template <class T>
__global__ void point_sample_gather_kernel(const T* __restrict__ points, const uint32_t* __restrict__ sorted_keys,
                                           const int32_t* __restrict__ sorted_points, const T* __restrict__ grad_out,
                                           T* __restrict__ grad_input, int64_t pixels_total, int64_t channels,
                                           int64_t height, int64_t width, int64_t num_points) {
  const int64_t plane = height * width, count = pixels_total / plane * num_points;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < pixels_total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / plane, pixel = i % plane, row = pixel / width, col = pixel % width;
    int64_t begin[4], end[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {  // group of the points whose corner k is this pixel
      const uint32_t key = uint32_t((n * (height + 1) + row - k / 2 + 1) * (width + 1) + col - k % 2 + 1);
      begin[k] = lower_bound(sorted_keys, count, key);
      end[k] = lower_bound(sorted_keys, count, key + 1);
    }
    for (int64_t c = 0; c < channels; ++c) {
      const T* g = grad_out + (n * channels + c) * num_points;
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        for (int64_t s = begin[k]; s < end[k]; ++s) {
          const int64_t np = sorted_points[s];
          BilinearTaps taps;  // inside the map: the point has a corner here
          bilinear_taps(to_float(points[2 * np]), to_float(points[2 * np + 1]), height, width, taps);
          acc += float(taps.weight[k]) * to_float(g[np - n * num_points]);
        }
      grad_input[(n * channels + c) * plane + pixel] = from_float<T>(acc);
    }
  }
}

}  // namespace

void cuda::point_sample_backward(const Tensor& points, const Tensor& grad_out, Tensor& grad_input) {
  constexpr const char* op = "point_sample_backward";
  check_cuda_storage(op, grad_input.dtype(), {&points, &grad_out, &grad_input});
  const int64_t batch = grad_input.dim(0), channels = grad_input.dim(1), height = grad_input.dim(2);
  const int64_t width = grad_input.dim(3), num_points = points.dim(1), count = batch * num_points;
  const int64_t pixels_total = batch * height * width;
  if (grad_input.numel() == 0) return;
  const int64_t keys_total = batch * (height + 1) * (width + 1);  // the no-corner key; real keys are below
  MFUSER_CHECK(keys_total < int64_t(UINT32_MAX) && count < int64_t(INT32_MAX), op, ": ", grad_input.str(),
               " with ", num_points, " points is too large for 32-bit sort keys");
  int end_bit = 1;
  while (end_bit < 32 && (uint64_t(1) << end_bit) <= uint64_t(keys_total)) ++end_bit;
  cudaStream_t stream = stream_of(grad_input);
  const Device device = grad_input.device();
  // count == 0 (no points) still runs the gather, which then writes zeros.
  const int64_t slots = std::max<int64_t>(count, 1);
  Tensor keys = Tensor::empty({2, slots}, DType::i32, device), values = Tensor::empty({2, slots}, DType::i32, device);
  uint32_t* keys_in = static_cast<uint32_t*>(keys.raw_data());
  uint32_t* keys_out = keys_in + slots;
  int32_t* values_in = static_cast<int32_t*>(values.raw_data());
  int32_t* values_out = values_in + slots;
  with_storage_type(op, grad_input.dtype(), [&]<class T>() {
    constexpr int threads = 256;
    const T* pts = static_cast<const T*>(points.raw_data());
    if (count > 0) {
      point_keys_kernel<T><<<grid_for(count, threads), threads, 0, stream>>>(pts, keys_in, values_in, count,
                                                                            num_points, height, width,
                                                                            uint32_t(keys_total));
      MFUSER_CUDA_CHECK_LAUNCH();
      size_t temp_bytes = 0;
      MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys_out, values_in, values_out,
                                                        count, 0, end_bit, stream));
      Tensor temp = Tensor::empty({int64_t(std::max<size_t>(temp_bytes, 1))}, DType::u8, device);
      MFUSER_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, keys_in, keys_out, values_in,
                                                        values_out, count, 0, end_bit, stream));
    }
    point_sample_gather_kernel<T><<<grid_for(pixels_total, threads), threads, 0, stream>>>(
        pts, keys_out, values_out, static_cast<const T*>(grad_out.raw_data()), static_cast<T*>(grad_input.raw_data()),
        pixels_total, channels, height, width, num_points);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::point_sample(const Tensor& input, const Tensor& points, Tensor& out) {
  constexpr const char* op = "point_sample";
  check_cuda_storage(op, input.dtype(), {&input, &points, &out});
  const int64_t count = out.numel();
  if (count == 0) return;
  with_storage_type(op, input.dtype(), [&]<class T>() {
    constexpr int threads = 256;
    point_sample_kernel<T><<<grid_for(count, threads), threads, 0, stream_of(input)>>>(
        static_cast<const T*>(input.raw_data()), static_cast<const T*>(points.raw_data()),
        static_cast<T*>(out.raw_data()), count, input.dim(1), input.dim(2), input.dim(3), points.dim(1));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
