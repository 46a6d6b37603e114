// The bilinear taps of point_sample on the device (align_corners=False, zeros outside), shared by its kernels and
// by kernels/mask_loss, which samples its uncertainty and target maps with the same corners and weights.
// Formed as the CPU reference forms them: pixel coordinates and weights in double (exact for f32 points), so
// points on pixel centres and edges pick the same corners floor(x), floor(x) + 1 as grid_sample.
#pragma once

#include <cstdint>

namespace mfuser::kernels::cuda_detail {

struct BilinearTaps {
  int64_t row0, col0;  // the top-left corner; corner k is (row0 + k / 2, col0 + k % 2)
  double weight[4];
  // Whether corner k lies inside the height x width map (outside ones read as zero).
  __device__ bool inside(int k, int64_t height, int64_t width) const {
    const int64_t row = row0 + k / 2, col = col0 + k % 2;
    return row >= 0 && row < height && col >= 0 && col < width;
  }
  __device__ int64_t offset(int k, int64_t width) const { return (row0 + k / 2) * width + col0 + k % 2; }
};

// The taps of the normalized point (x, y) on a height x width map; false when no corner is inside the map
// (also for huge or NaN coordinates, which thus never reach the integer casts).
__device__ __forceinline__ bool bilinear_taps(float px, float py, int64_t height, int64_t width, BilinearTaps& taps) {
  const double x = double(px) * double(width) - 0.5, y = double(py) * double(height) - 0.5;
  if (!(x > -1 && y > -1 && x < double(width) && y < double(height))) return false;
  const double x0 = floor(x), y0 = floor(y), fx = x - x0, fy = y - y0;
  taps.row0 = int64_t(y0);
  taps.col0 = int64_t(x0);
  taps.weight[0] = (1 - fy) * (1 - fx);
  taps.weight[1] = (1 - fy) * fx;
  taps.weight[2] = fy * (1 - fx);
  taps.weight[3] = fy * fx;
  return true;
}

}  // namespace mfuser::kernels::cuda_detail
