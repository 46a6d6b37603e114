// CUDA attn_mask: one block per row (last dim). A first pass asks whether any element of the row survives
// (__syncthreads_or over the block), a second writes the mask, all false when nothing survived.
#include <cstdint>

#include "kernels/attn_mask/attn_mask.h"
#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

// torch.sigmoid(x) < 0.5 in f32, as the CPU reference computes it. exp goes through double and is rounded
// once to f32 (what a correctly rounded expf gives), so the rare |x| ~ 1e-7 cases, where the f32 sigmoid rounds
// to exactly 0.5, decide as on the CPU.
__device__ __forceinline__ bool masked(float x) {
  const float e = float(exp(-double(x)));
  return __fdiv_rn(1.f, __fadd_rn(1.f, e)) < 0.5f;
}

template <class T>
__global__ void attn_mask_kernel(const T* __restrict__ logits, bool* __restrict__ out, int64_t rows, int64_t n) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {  // the same trip count for the whole block
    const T* x = logits + r * n;
    bool* m = out + r * n;
    int any_kept = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) any_kept |= !masked(to_float(x[j]));
    const bool all_masked = !__syncthreads_or(any_kept);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m[j] = !all_masked && masked(to_float(x[j]));
  }
}

}  // namespace

void cuda::attn_mask(const Tensor& logits, Tensor& out) {
  check_cuda_storage("attn_mask", logits.dtype(), {&logits});
  MFUSER_CHECK(out.device().is_cuda(), "attn_mask: expected a CUDA output, got ", out.str());
  if (logits.numel() == 0) return;
  const int64_t n = logits.dim(-1), rows = logits.numel() / n;
  with_storage_type("attn_mask", logits.dtype(), [&]<class T>() {
    attn_mask_kernel<T><<<grid_for(rows * kThreads, kThreads), kThreads, 0, stream_of(logits)>>>(
        static_cast<const T*>(logits.raw_data()), out.data<bool>(), rows, n);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
