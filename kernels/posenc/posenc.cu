// CUDA posenc: one thread per output element, one output row (b, channel, i) per y index of the grid. Angles,
// periods and sin/cos are computed in double as in the CPU reference, then rounded to the storage type.
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/posenc/posenc.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;


struct PosencParams {
  int64_t feats, h;
  int w;
  double temperature, scale, eps, offset;
};

// Feature k of position p (counted from 0) along an axis of n positions.
__device__ double axis_feature(int64_t k, int64_t p, int64_t n, const PosencParams& q) {
  const double period = pow(q.temperature, double(2 * (k / 2)) / double(q.feats));
  const double angle = (double(p + 1) + q.offset) / (double(n) + q.eps) * q.scale / period;
  return k % 2 == 0 ? sin(angle) : cos(angle);
}

template <class T>
__global__ void posenc_kernel(T* __restrict__ out, PosencParams q, int64_t rows) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t c = row / q.h % (2 * q.feats), i = row % q.h;
    T* dst = out + row * q.w;
    // The y channels (c < F) are constant along a row; the x channels vary with the column.
    const float y_feature = c < q.feats ? float(axis_feature(c, i, q.h, q)) : 0.f;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < q.w; j += gridDim.x * blockDim.x)
      dst[j] = from_float<T>(c < q.feats ? y_feature : float(axis_feature(c - q.feats, j, q.w, q)));
  }
}

}  // namespace

void cuda::posenc(Tensor& out, double temperature, double scale, double eps, double offset) {
  check_cuda_storage("posenc", out.dtype(), {&out});
  MFUSER_CHECK(out.dim(3) <= INT32_MAX, "posenc: ", out.str(), " has too many columns");
  const PosencParams q{out.dim(1) / 2, out.dim(2), int(out.dim(3)), temperature, scale, eps, offset};
  const int64_t rows = out.dim(0) * out.dim(1) * out.dim(2);
  with_storage_type("posenc", out.dtype(), [&]<class T>() {
    posenc_kernel<T><<<row_grid(rows, q.w, kThreads), kThreads, 0, stream_of(out)>>>(static_cast<T*>(out.raw_data()), q, rows);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
