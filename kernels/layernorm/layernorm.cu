// CUDA layernorm forward: one block per row (grid-stride over rows), f32 statistics from two passes over
// the row (the mean, then the sum of squared deviations), then a third pass that normalizes and applies the
// affine. The passes re-read the row from global memory; a model row (1024 values) stays in L1 between them.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/layernorm/layernorm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_row(int64_t d) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(d, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

unsigned grid_for_rows(int64_t rows) { return unsigned(std::min<int64_t>(rows, int64_t(1) << 20)); }

// x and out may be the same memory: each element is read and written by the same thread, and every read of
// the row's first value (the shift) happens before the barrier of the first block_sum.
// mean_out / rstd_out: null, or f32 [rows] for the saved statistics.
template <class T>
__global__ void layernorm_kernel(const T* x, const T* __restrict__ weight, const T* __restrict__ bias, T* out,
                                 int64_t rows, int64_t d, float eps, float* __restrict__ mean_out,
                                 float* __restrict__ rstd_out) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    T* yr = out + row * d;
    // Sums of x - x[0]: when |mean| >> std the shifted values are O(std), so the f32 sums lose no digits
    // to the magnitude of the mean, and the centered values below are formed without cancellation.
    const float shift = to_float(xr[0]);
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += to_float(xr[i]) - shift;
    const float shifted_mean = block_sum(sum, scratch) / float(d);
    float squares = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float centered = (to_float(xr[i]) - shift) - shifted_mean;
      squares += centered * centered;
    }
    const float rstd = 1.f / sqrtf(block_sum(squares, scratch) / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float centered = (to_float(xr[i]) - shift) - shifted_mean;
      yr[i] = from_float<T>(centered * rstd * to_float(weight[i]) + to_float(bias[i]));
    }
    if (threadIdx.x == 0 && mean_out) {
      mean_out[row] = shift + shifted_mean;
      rstd_out[row] = rstd;
    }
  }
}

void launch(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps, float* mean,
            float* rstd) {
  check_cuda_storage("layernorm", x.dtype(), {&x, &weight, &bias, &out});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  if (rows == 0) return;
  with_storage_type("layernorm", x.dtype(), [&]<class T>() {
    layernorm_kernel<T><<<grid_for_rows(rows), threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), rows, d, eps, mean, rstd);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace

void cuda::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps) {
  launch(x, weight, bias, out, eps, nullptr, nullptr);
}

void cuda::layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float eps,
                     Tensor& mean, Tensor& rstd) {
  check_cuda_storage("layernorm", DType::f32, {&mean, &rstd});
  launch(x, weight, bias, out, eps, static_cast<float*>(mean.raw_data()), static_cast<float*>(rstd.raw_data()));
}

}  // namespace mfuser::kernels
