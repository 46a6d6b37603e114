// CUDA l2norm forward, x viewed as [outer, n, inner] with the vectors along n:
//   inner == 1 (the last dim, e.g. the text embeddings): one block per vector, block_sum of the squares.
//   inner > 1 (e.g. dim 1 of the visual map [B, 768, h, w]): a block holds 32 neighbouring vectors (adjacent in
//     memory, so every load is coalesced) x 8 slices of n; the slices' partial sums meet in shared memory.
// Both write x / max(||x||, eps) in a second pass over the vector; sums of squares are f32.
#include <algorithm>

#include "kernels/common/cuda_common.cuh"
#include "kernels/l2norm/l2norm.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

// About four values per thread, 32..1024 threads (a multiple of 32, as block_sum needs).
int threads_for_row(int64_t n) {
  const int64_t warps = ceil_div<int64_t>(ceil_div<int64_t>(n, 4), 32);
  return int(std::clamp<int64_t>(warps, 1, 32) * 32);
}

// In both kernels x and out may be the same memory (the header allows it): each element is read and written
// by one thread, and all reads of the first pass precede the barrier before the first write.
template <class T>
__global__ void l2norm_rows_kernel(const T* x, T* out, int64_t rows, int64_t n, float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    T* yr = out + row * n;
    float squares = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = to_float(xr[i]);
      squares += v * v;
    }
    const float divisor = fmaxf(sqrtf(block_sum(squares, scratch)), eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = from_float<T>(to_float(xr[i]) / divisor);
  }
}

constexpr int kLanes = 32;  // vectors per block (threadIdx.x)
constexpr int kSlices = 8;  // threads per vector (threadIdx.y), each summing every kSlices-th value

template <class T>
__global__ void l2norm_strided_kernel(const T* x, T* out, int64_t vectors, int64_t n, int64_t inner, float eps) {
  __shared__ float partial[kSlices][kLanes];
  for (int64_t first = blockIdx.x * int64_t(kLanes); first < vectors; first += int64_t(gridDim.x) * kLanes) {
    // Vector v = (o, i) starts at o * n * inner + i; its k-th value is inner further per step.
    const int64_t v = first + threadIdx.x;
    const bool active = v < vectors;  // inactive lanes still take part in the barriers
    const int64_t base = active ? v / inner * n * inner + v % inner : 0;
    float squares = 0.f;
    if (active)
      for (int64_t k = threadIdx.y; k < n; k += kSlices) {
        const float value = to_float(x[base + k * inner]);
        squares += value * value;
      }
    partial[threadIdx.y][threadIdx.x] = squares;
    __syncthreads();
    // Every thread adds its vector's slices in the same order, so all of them get the same divisor.
    float total = 0.f;
    for (int s = 0; s < kSlices; ++s) total += partial[s][threadIdx.x];
    const float divisor = fmaxf(sqrtf(total), eps);
    if (active)
      for (int64_t k = threadIdx.y; k < n; k += kSlices)
        out[base + k * inner] = from_float<T>(to_float(x[base + k * inner]) / divisor);
    __syncthreads();  // `partial` is rewritten for the next vectors
  }
}

}  // namespace

void cuda::l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_cuda_storage("l2norm", x.dtype(), {&x, &out});
  if (x.numel() == 0) return;
  const int d = dim < 0 ? dim + x.ndim() : dim;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= x.dim(i);
  for (int i = d + 1; i < x.ndim(); ++i) inner *= x.dim(i);
  const int64_t n = x.dim(d);
  with_storage_type("l2norm", x.dtype(), [&]<class T>() {
    const T* in = static_cast<const T*>(x.raw_data());
    T* res = static_cast<T*>(out.raw_data());
    if (inner == 1) {
      const unsigned blocks = unsigned(std::min<int64_t>(outer, int64_t(1) << 20));
      l2norm_rows_kernel<T><<<blocks, threads_for_row(n), 0, stream_of(x)>>>(in, res, outer, n, eps);
    } else {
      const int64_t vectors = outer * inner;
      const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(vectors, kLanes), int64_t(1) << 20));
      l2norm_strided_kernel<T><<<blocks, dim3(kLanes, kSlices), 0, stream_of(x)>>>(in, res, vectors, n, inner, eps);
    }
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace mfuser::kernels
