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

}  // namespace

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
