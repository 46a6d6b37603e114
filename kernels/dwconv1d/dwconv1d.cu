// CUDA dwconv1d (forward): one thread per output element (b, l, c), channels fastest, so a warp reads each tap's
// source token as one contiguous run of channels and writes its outputs contiguously. K is tiny (3 in MFuser);
// the taps come through the cache. f32 accumulation in the reference's order (bias, then taps left to right).
#include "kernels/common/cuda_common.cuh"
#include "kernels/dwconv1d/dwconv1d.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class T>
__global__ void dwconv1d_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                T* __restrict__ out, int64_t count, int64_t len, int64_t channels, int kernel) {
  const int left = (kernel - 1) / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels, l = i / channels % len;
    float acc = bias ? to_float(bias[c]) : 0.f;
    for (int j = 0; j < kernel; ++j) {
      const int64_t source = l + j - left;  // token read by tap j; zeros outside [0, len)
      if (source >= 0 && source < len) acc += to_float(weight[c * kernel + j]) * to_float(x[i + (j - left) * channels]);
    }
    out[i] = from_float<T>(acc);
  }
}

}  // namespace

void cuda::dwconv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out) {
  constexpr const char* op = "dwconv1d";
  check_cuda_storage(op, x.dtype(), {&x, &weight, &bias, &out});
  const int64_t count = x.numel();
  if (count == 0) return;
  MFUSER_CHECK(weight.dim(2) <= (1 << 30), op, ": kernel size ", weight.dim(2), " too large");
  with_storage_type(op, x.dtype(), [&]<class T>() {
    constexpr int threads = 256;
    dwconv1d_kernel<T><<<grid_for(count, threads), threads, 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr, static_cast<T*>(out.raw_data()), count,
        x.dim(1), x.dim(2), int(weight.dim(2)));
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
