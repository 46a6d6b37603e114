// CUDA rmsnorm_gated forward: one block per row (grid-stride over rows). One pass sums x^2 in f32, a second
// pass writes x * rstd * weight * silu(z); the row stays in L1 between the passes.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_row(int64_t d) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(d, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

// x (or z) and out may be the same memory: each element is read and written by the same thread.
template <class T>
__global__ void rmsnorm_gated_kernel(const T* x, const T* z, const T* __restrict__ weight, T* out, int64_t rows,
                                     int64_t d, float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * d;
    const T* zr = z + row * d;
    T* yr = out + row * d;
    float squares = 0.f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(xr[i]);
      squares += v * v;
    }
    const float rstd = 1.f / sqrtf(block_sum(squares, scratch) / float(d) + eps);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float gate = to_float(zr[i]);
      const float silu = gate / (1.f + expf(-gate));  // -0 for very negative z, as the CPU reference
      yr[i] = from_float<T>(to_float(xr[i]) * rstd * to_float(weight[i]) * silu);
    }
  }
}

}  // namespace

void cuda::rmsnorm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, Tensor& out, float eps) {
  check_cuda_storage("rmsnorm_gated", x.dtype(), {&x, &z, &weight, &out});
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  if (rows == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>(rows, int64_t(1) << 20));
  with_storage_type("rmsnorm_gated", x.dtype(), [&]<class T>() {
    rmsnorm_gated_kernel<T><<<blocks, threads_for_row(d), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(z.raw_data()),
        static_cast<const T*>(weight.raw_data()), static_cast<T*>(out.raw_data()), rows, d, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
