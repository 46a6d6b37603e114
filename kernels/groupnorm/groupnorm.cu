// CUDA groupnorm forward: one block per (image, group) (grid-stride over them). A group's
// channels are contiguous in [N, C, *spatial], so its statistics are two f32 passes over one contiguous run
// (the mean, then the sum of squared deviations); a third pass normalizes channel by channel with that
// channel's weight and bias. The pixel decoder's groups are 8 x 128^2 values (512 KB of f32): the later passes
// re-read them through L2.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/groupnorm/groupnorm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs): the model's groups
// get 1024.
int threads_for_group(int64_t group_size) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(group_size, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

// x and out may be the same memory: each element is read and written by the same thread, and every read of
// the group's first value (the shift) happens before the barrier of the first block_sum.
template <class T>
__global__ void groupnorm_kernel(const T* x, const T* __restrict__ weight, const T* __restrict__ bias, T* out,
                                 int64_t blocks, int num_groups, int64_t channels_per_group, int64_t spatial,
                                 float eps) {
  __shared__ float scratch[32];
  const int64_t group_size = channels_per_group * spatial;
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const T* xg = x + block * group_size;
    T* yg = out + block * group_size;
    // Sums of x - x[0] (see layernorm.cu): no digits lost when |mean| >> std.
    const float shift = to_float(xg[0]);
    float sum = 0.f;
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) sum += to_float(xg[i]) - shift;
    const float shifted_mean = block_sum(sum, scratch) / float(group_size);
    float squares = 0.f;
    for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
      const float centered = (to_float(xg[i]) - shift) - shifted_mean;
      squares += centered * centered;
    }
    const float rstd = 1.f / sqrtf(block_sum(squares, scratch) / float(group_size) + eps);
    const int64_t first_channel = (block % num_groups) * channels_per_group;
    for (int64_t k = 0; k < channels_per_group; ++k) {
      const float scale = to_float(weight[first_channel + k]), offset = to_float(bias[first_channel + k]);
      for (int64_t i = k * spatial + threadIdx.x; i < (k + 1) * spatial; i += blockDim.x) {
        const float centered = (to_float(xg[i]) - shift) - shifted_mean;
        yg[i] = from_float<T>(centered * rstd * scale + offset);
      }
    }
  }
}

}  // namespace

void cuda::groupnorm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, int num_groups,
                     float eps) {
  check_cuda_storage("groupnorm", x.dtype(), {&x, &weight, &bias, &out});
  if (x.numel() == 0) return;
  const int64_t n = x.dim(0), c = x.dim(1), spatial = x.numel() / (n * c);
  const int64_t blocks = n * num_groups, channels_per_group = c / num_groups;
  const unsigned grid = unsigned(std::min<int64_t>(blocks, int64_t(1) << 20));
  with_storage_type("groupnorm", x.dtype(), [&]<class T>() {
    groupnorm_kernel<T><<<grid, threads_for_group(channels_per_group * spatial), 0, stream_of(x)>>>(
        static_cast<const T*>(x.raw_data()), static_cast<const T*>(weight.raw_data()),
        static_cast<const T*>(bias.raw_data()), static_cast<T*>(out.raw_data()), blocks, num_groups,
        channels_per_group, spatial, eps);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
