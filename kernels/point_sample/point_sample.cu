// CUDA point_sample (forward): one thread per output element (n, c, p), points fastest, so a warp reads
// consecutive points and writes consecutive outputs. The taps are formed exactly as the CPU reference forms them
// (pixel coordinates and weights in double, exact for f32 points; weights rounded to f32), so points on pixel
// centres and edges pick the same corners; the four-term sum runs in f32 in the same order.
#include "kernels/common/cuda_common.cuh"
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
    const double x = double(to_float(point[0])) * double(width) - 0.5;
    const double y = double(to_float(point[1])) * double(height) - 0.5;
    float acc = 0.f;
    // No corner inside the map (also keeps huge or NaN coordinates away from the integer casts).
    if (x > -1 && y > -1 && x < double(width) && y < double(height)) {
      const double x0 = floor(x), y0 = floor(y), fx = x - x0, fy = y - y0;
      const double weight[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t row = int64_t(y0) + k / 2, col = int64_t(x0) + k % 2;
        if (row < 0 || row >= height || col < 0 || col >= width) continue;  // zero padding
        acc += float(weight[k]) * to_float(map[row * width + col]);
      }
    }
    out[i] = from_float<T>(acc);
  }
}

}  // namespace

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
