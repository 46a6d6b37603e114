// CUDA resize (bilinear, bicubic): one thread per output element, one output row (plane, y) per y index of the
// grid. Each thread derives its taps with the CPU reference's arithmetic (coordinates and weights in double,
// rounded to f32 weights) and blends them in the same order: the source rows of each tap column first, then
// the columns.
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/resize/resize.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;


// Source indices (clamped into the map) and weights of one output index along one axis; 2 taps: bilinear,
// 4 taps: bicubic.
template <int kTaps>
struct AxisTaps {
  int64_t index[kTaps];
  float weight[kTaps];
};

// Keys' cubic convolution kernel, A = -0.75 (PyTorch's and OpenCV's choice).
constexpr double kCubicA = -0.75;
__device__ double cubic_near(double x) { return ((kCubicA + 2) * x - (kCubicA + 3)) * x * x + 1; }  // |x| <= 1
__device__ double cubic_far(double x) {  // 1 < |x| < 2
  return ((kCubicA * x - 5 * kCubicA) * x + 8 * kCubicA) * x - 4 * kCubicA;
}

template <int kTaps>
__device__ AxisTaps<kTaps> axis_taps(int64_t i, double step, int64_t in) {
  // Half-pixel centres; _rn keeps the compiler from fusing this into an FMA, so floor(s) is the CPU's.
  const double s = __dadd_rn(__dmul_rn(double(i) + 0.5, step), -0.5);
  AxisTaps<kTaps> a;
  if constexpr (kTaps == 2) {
    const double clamped = fmax(s, 0.0);
    const int64_t lo = int64_t(clamped);  // >= 0: truncation is floor
    const double frac = clamped - double(lo);
    a.index[0] = min(lo, in - 1);
    a.index[1] = min(lo + 1, in - 1);
    a.weight[0] = float(1 - frac);
    a.weight[1] = float(frac);
  } else {
    const double lo = floor(s), t = s - lo;
    const double w[4] = {cubic_far(t + 1), cubic_near(t), cubic_near(1 - t), cubic_far(2 - t)};
    for (int k = 0; k < 4; ++k) {
      a.index[k] = max(int64_t(0), min(int64_t(lo) - 1 + k, in - 1));
      a.weight[k] = float(w[k]);
    }
  }
  return a;
}

struct ResizeGeometry {
  int64_t in_h, in_w, out_h;
  int out_w;
  double step_h, step_w;  // source pixels per output pixel
};

template <int kTaps, class T>
__global__ void resize_kernel(const T* __restrict__ src, T* __restrict__ dst, ResizeGeometry g, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t plane = row / g.out_h;
    const AxisTaps<kTaps> ry = axis_taps<kTaps>(row % g.out_h, g.step_h, g.in_h);
    const T* map = src + plane * g.in_h * g.in_w;
    for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < g.out_w; x += gridDim.x * blockDim.x) {
      const AxisTaps<kTaps> rx = axis_taps<kTaps>(x, g.step_w, g.in_w);
      float acc = 0.f;
      for (int kx = 0; kx < kTaps; ++kx) {
        float blended = 0.f;
        for (int ky = 0; ky < kTaps; ++ky)
          blended += ry.weight[ky] * to_float(map[ry.index[ky] * g.in_w + rx.index[kx]]);
        acc += rx.weight[kx] * blended;
      }
      dst[row * g.out_w + x] = from_float<T>(acc);
    }
  }
}

template <int kTaps>
void launch(const char* op, const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  check_cuda_storage(op, src.dtype(), {&src, &dst});
  MFUSER_CHECK(dst.dim(3) <= INT32_MAX, op, ": ", dst.str(), " has too many columns");
  const int64_t in_h = src.dim(2), in_w = src.dim(3), out_h = dst.dim(2), out_w = dst.dim(3);
  // The CPU reference's step: 1 / scale with a scale factor, else the size ratio.
  const ResizeGeometry g{in_h,
                         in_w,
                         out_h,
                         int(out_w),
                         scale_h > 0 ? 1.0 / scale_h : double(in_h) / double(out_h),
                         scale_w > 0 ? 1.0 / scale_w : double(in_w) / double(out_w)};
  const int64_t rows = dst.dim(0) * dst.dim(1) * out_h;
  with_storage_type(op, src.dtype(), [&]<class T>() {
    resize_kernel<kTaps, T><<<row_grid(rows, out_w, kThreads), kThreads, 0, stream_of(src)>>>(
        static_cast<const T*>(src.raw_data()), static_cast<T*>(dst.raw_data()), g, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void cuda::resize_bilinear(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  launch<2>("resize_bilinear", src, dst, scale_h, scale_w);
}

void cuda::resize_bicubic(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  launch<4>("resize_bicubic", src, dst, scale_h, scale_w);
}

}  // namespace mfuser::kernels
