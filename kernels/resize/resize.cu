// CUDA resize (bilinear, bicubic): one thread per output element, one output row (plane, y) per y index of the
// grid. Each thread derives its taps with the CPU reference's arithmetic (coordinates and weights in double,
// rounded to f32 weights) and blends them in the same order: the source rows of each tap column first, then
// the columns. The bilinear backward is a gather over the output pixels per source pixel (see below).
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

ResizeGeometry geometry(const Tensor& src, const Tensor& dst, double scale_h, double scale_w) {
  const int64_t in_h = src.dim(2), in_w = src.dim(3), out_h = dst.dim(2), out_w = dst.dim(3);
  // The CPU reference's step: 1 / scale with a scale factor, else the size ratio.
  return {in_h, in_w, out_h, int(out_w), scale_h > 0 ? 1.0 / scale_h : double(in_h) / double(out_h),
          scale_w > 0 ? 1.0 / scale_w : double(in_w) / double(out_w)};
}

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
  const ResizeGeometry g = geometry(src, dst, scale_h, scale_w);
  const int64_t rows = dst.dim(0) * dst.dim(1) * g.out_h;
  with_storage_type(op, src.dtype(), [&]<class T>() {
    resize_kernel<kTaps, T><<<row_grid(rows, g.out_w, kThreads), kThreads, 0, stream_of(src)>>>(
        static_cast<const T*>(src.raw_data()), static_cast<T*>(dst.raw_data()), g, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

// ---- resize_bilinear_backward as a gather (deterministic, no atomics): one thread per SOURCE pixel sums
// wy * wx * grad_dst over the output pixels whose taps include it. Per axis, the outputs tapping source index i
// have s = (o + 0.5) * step - 0.5 in [i - 1, i + 1) (or s < 0 for i = 0: clamped onto 0), i.e. o within
// bounds that rounding could shift by one; the range is widened by a pixel each way and every candidate is
// checked with the forward's own taps, so exactly the right outputs count.
struct OutputRange {
  int64_t begin, end;
};
__device__ OutputRange outputs_tapping(int64_t i, double step, int64_t out) {
  const int64_t begin = int64_t(floor((double(i) - 0.5) / step - 0.5)) - 1;
  const int64_t end = int64_t(ceil((double(i) + 1.5) / step - 0.5)) + 2;
  return {max(int64_t(0), begin), min(out, end)};
}

// The weight with which output index o (taps `a`) reads source index i: both taps may be i at the border.
__device__ __forceinline__ float tap_weight(const AxisTaps<2>& a, int64_t i) {
  return (a.index[0] == i ? a.weight[0] : 0.f) + (a.index[1] == i ? a.weight[1] : 0.f);
}

template <class T>
__global__ void resize_bilinear_backward_kernel(const T* __restrict__ grad_dst, T* __restrict__ grad_src,
                                                ResizeGeometry g, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {  // row = (plane, iy) of the source
    const int64_t plane = row / g.in_h, iy = row % g.in_h;
    const T* grads = grad_dst + plane * g.out_h * g.out_w;
    const OutputRange ys = outputs_tapping(iy, g.step_h, g.out_h);
    for (int64_t ix = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; ix < g.in_w;
         ix += int64_t(gridDim.x) * blockDim.x) {
      const OutputRange xs = outputs_tapping(ix, g.step_w, g.out_w);
      float sum = 0.f;
      for (int64_t oy = ys.begin; oy < ys.end; ++oy) {
        const float wy = tap_weight(axis_taps<2>(oy, g.step_h, g.in_h), iy);
        if (wy == 0.f) continue;
        float row_sum = 0.f;
        for (int64_t ox = xs.begin; ox < xs.end; ++ox)
          row_sum += tap_weight(axis_taps<2>(ox, g.step_w, g.in_w), ix) * to_float(grads[oy * g.out_w + ox]);
        sum += wy * row_sum;
      }
      grad_src[row * g.in_w + ix] = from_float<T>(sum);
    }
  }
}

}  // namespace

void cuda::resize_bilinear_backward(const Tensor& grad_dst, Tensor& grad_src, double scale_h, double scale_w) {
  constexpr const char* op = "resize_bilinear_backward";
  check_cuda_storage(op, grad_dst.dtype(), {&grad_dst, &grad_src});
  MFUSER_CHECK(grad_dst.dim(3) <= INT32_MAX, op, ": ", grad_dst.str(), " has too many columns");
  const ResizeGeometry g = geometry(grad_src, grad_dst, scale_h, scale_w);
  const int64_t rows = grad_src.dim(0) * grad_src.dim(1) * g.in_h;
  with_storage_type(op, grad_dst.dtype(), [&]<class T>() {
    resize_bilinear_backward_kernel<T><<<row_grid(rows, g.in_w, kThreads), kThreads, 0, stream_of(grad_dst)>>>(
        static_cast<const T*>(grad_dst.raw_data()), static_cast<T*>(grad_src.raw_data()), g, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::resize_bilinear(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  launch<2>("resize_bilinear", src, dst, scale_h, scale_w);
}

void cuda::resize_bicubic(const Tensor& src, Tensor& dst, double scale_h, double scale_w) {
  launch<4>("resize_bicubic", src, dst, scale_h, scale_w);
}

}  // namespace mfuser::kernels
