// CUDA maxpool2d: one thread per output element, one output row (plane, oy) per y index of the grid. The window
// is scanned as the CPU reference does (row-major, a NaN sticks), so the results are bit-identical.
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/maxpool2d/maxpool2d.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;


struct PoolGeometry {
  int64_t h;
  int w, oh, ow, kernel, stride;
};

template <class T>
__global__ void maxpool2d_kernel(const T* __restrict__ x, T* __restrict__ out, PoolGeometry g, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t plane = row / g.oh, oy = row % g.oh;
    const T* src = x + (plane * g.h + oy * g.stride) * g.w;
    for (int ox = blockIdx.x * blockDim.x + threadIdx.x; ox < g.ow; ox += gridDim.x * blockDim.x) {
      const T* window = src + int64_t(ox) * g.stride;
      float best = to_float(window[0]);
      for (int ky = 0; ky < g.kernel; ++ky)
        for (int kx = 0; kx < g.kernel; ++kx) {
          const float v = to_float(window[int64_t(ky) * g.w + kx]);
          if (v > best || isnan(v)) best = v;
        }
      out[row * g.ow + ox] = from_float<T>(best);
    }
  }
}

// Backward as a gather (no atomics, deterministic): one thread per input element (plane, iy, ix) visits the
// windows that contain it in row-major order (the CPU's order), recomputes each window's argmax with the
// forward's scan (first maximum on ties, a NaN sticks and a later NaN takes over) and adds that window's
// grad_out when the argmax is this element. Windows containing row iy: oy in [ceil((iy - kernel + 1) /
// stride), iy / stride] within [0, oh); columns likewise.
template <class T>
__global__ void maxpool2d_backward_kernel(const T* __restrict__ x, const T* __restrict__ grad_out,
                                          T* __restrict__ grad_x, PoolGeometry g, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {  // row = (plane, iy) of x
    const int64_t plane = row / g.h;
    const int iy = int(row % g.h);
    const T* map = x + plane * g.h * g.w;
    const T* grads = grad_out + plane * g.oh * g.ow;
    const int oy_begin = max(0, (iy - g.kernel + g.stride) / g.stride), oy_end = min(g.oh - 1, iy / g.stride);
    for (int ix = blockIdx.x * blockDim.x + threadIdx.x; ix < g.w; ix += gridDim.x * blockDim.x) {
      const int ox_begin = max(0, (ix - g.kernel + g.stride) / g.stride), ox_end = min(g.ow - 1, ix / g.stride);
      float sum = 0.f;
      for (int oy = oy_begin; oy <= oy_end; ++oy)
        for (int ox = ox_begin; ox <= ox_end; ++ox) {
          const T* window = map + int64_t(oy) * g.stride * g.w + int64_t(ox) * g.stride;
          float best = to_float(window[0]);
          int best_y = 0, best_x = 0;
          for (int ky = 0; ky < g.kernel; ++ky)
            for (int kx = 0; kx < g.kernel; ++kx) {
              const float v = to_float(window[int64_t(ky) * g.w + kx]);
              if (v > best || isnan(v)) {
                best = v;
                best_y = ky;
                best_x = kx;
              }
            }
          if (oy * g.stride + best_y == iy && ox * g.stride + best_x == ix)
            sum += to_float(grads[int64_t(oy) * g.ow + ox]);
        }
      grad_x[row * g.w + ix] = from_float<T>(sum);
    }
  }
}

}  // namespace

void cuda::maxpool2d_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_x, int kernel, int stride) {
  check_cuda_storage("maxpool2d_backward", x.dtype(), {&x, &grad_out, &grad_x});
  if (x.numel() == 0) return;
  MFUSER_CHECK(x.dim(2) <= INT32_MAX && x.dim(3) <= INT32_MAX, "maxpool2d_backward: ", x.str(), " is too large");
  const PoolGeometry g{x.dim(2), int(x.dim(3)), int(grad_out.dim(2)), int(grad_out.dim(3)), kernel, stride};
  const int64_t rows = x.dim(0) * x.dim(1) * x.dim(2);
  with_storage_type("maxpool2d_backward", x.dtype(), [&]<class T>() {
    maxpool2d_backward_kernel<T><<<row_grid(rows, g.w, kThreads), kThreads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(grad_out.raw_data()),
        static_cast<T*>(grad_x.raw_data()), g, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::maxpool2d(const Tensor& x, Tensor& out, int kernel, int stride) {
  check_cuda_storage("maxpool2d", x.dtype(), {&x, &out});
  if (out.numel() == 0) return;
  MFUSER_CHECK(x.dim(3) <= INT32_MAX && out.dim(2) <= INT32_MAX, "maxpool2d: ", x.str(), " is too large");
  const PoolGeometry g{x.dim(2), int(x.dim(3)), int(out.dim(2)), int(out.dim(3)), kernel, stride};
  const int64_t rows = out.dim(0) * out.dim(1) * out.dim(2);
  with_storage_type("maxpool2d", x.dtype(), [&]<class T>() {
    maxpool2d_kernel<T><<<row_grid(rows, g.ow, kThreads), kThreads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<T*>(out.raw_data()), g, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
