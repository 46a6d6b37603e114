// CUDA l2norm forward, x viewed as [outer, n, inner] with the vectors along n:
//   inner == 1 (the last dim, e.g. the text embeddings): one block per vector, block_sum of the squares.
//   inner > 1 (e.g. dim 1 of the visual map [B, 768, h, w]): a block holds 32 neighbouring vectors (adjacent in
//     memory, so every load is coalesced) x 8 slices of n; the slices' partial sums meet in shared memory.
// Both write x / max(||x||, eps) in a second pass over the vector; sums of squares are f32. The backward
// (l2norm_backward) uses the same two layouts, summing squares and <grad_out, x> together.
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

// ---- Backward: grad_in = grad_out / d - x * <grad_out, x> / d^3 with d = ||x|| (grad_out / eps when ||x|| <
// eps), the forward's two layouts with two sums (squares and the dot product). grad_in may be grad_out: each
// element is read and written by one thread, and every read of the sums precedes the barrier before writes.

// Scale of grad_out (1 / d) and coefficient of x (<grad_out, x> / d^3) of one vector.
struct L2Coefficients {
  float inv_d, x_coef;
};
__device__ __forceinline__ L2Coefficients l2_coefficients(float squares, float dot, float eps) {
  const float norm = sqrtf(squares);
  if (!(norm >= eps)) return {1.f / eps, 0.f};  // the clamp passes no gradient through the norm
  const float inv = 1.f / norm;
  return {inv, dot * inv * inv * inv};
}

template <class T>
__global__ void l2norm_backward_rows_kernel(const T* x, const T* grad_out, T* grad_in, int64_t rows, int64_t n,
                                            float eps) {
  __shared__ float scratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    const T* gr = grad_out + row * n;
    T* out = grad_in + row * n;
    float squares = 0.f, dot = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = to_float(xr[i]);
      squares += v * v;
      dot += v * to_float(gr[i]);
    }
    squares = block_sum(squares, scratch);
    dot = block_sum(dot, scratch);
    const L2Coefficients c = l2_coefficients(squares, dot, eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      out[i] = from_float<T>(to_float(gr[i]) * c.inv_d - c.x_coef * to_float(xr[i]));
  }
}

template <class T>
__global__ void l2norm_backward_strided_kernel(const T* x, const T* grad_out, T* grad_in, int64_t vectors,
                                               int64_t n, int64_t inner, float eps) {
  __shared__ float partial_squares[kSlices][kLanes], partial_dot[kSlices][kLanes];
  for (int64_t first = blockIdx.x * int64_t(kLanes); first < vectors; first += int64_t(gridDim.x) * kLanes) {
    const int64_t v = first + threadIdx.x;
    const bool active = v < vectors;  // inactive lanes still take part in the barriers
    const int64_t base = active ? v / inner * n * inner + v % inner : 0;
    float squares = 0.f, dot = 0.f;
    if (active)
      for (int64_t k = threadIdx.y; k < n; k += kSlices) {
        const float value = to_float(x[base + k * inner]);
        squares += value * value;
        dot += value * to_float(grad_out[base + k * inner]);
      }
    partial_squares[threadIdx.y][threadIdx.x] = squares;
    partial_dot[threadIdx.y][threadIdx.x] = dot;
    __syncthreads();
    squares = dot = 0.f;  // summed in slice order by every thread of the vector: one result for all
    for (int s = 0; s < kSlices; ++s) {
      squares += partial_squares[s][threadIdx.x];
      dot += partial_dot[s][threadIdx.x];
    }
    const L2Coefficients c = l2_coefficients(squares, dot, eps);
    if (active)
      for (int64_t k = threadIdx.y; k < n; k += kSlices) {
        const int64_t at = base + k * inner;
        grad_in[at] = from_float<T>(to_float(grad_out[at]) * c.inv_d - c.x_coef * to_float(x[at]));
      }
    __syncthreads();  // the partials are rewritten for the next vectors
  }
}

// x viewed as [outer, n, inner] with the vectors along n.
struct VectorLayout {
  int64_t outer = 1, n = 1, inner = 1;
};
VectorLayout vector_layout(const Tensor& x, int dim) {
  const int d = dim < 0 ? dim + x.ndim() : dim;
  VectorLayout l;
  for (int i = 0; i < d; ++i) l.outer *= x.dim(i);
  for (int i = d + 1; i < x.ndim(); ++i) l.inner *= x.dim(i);
  l.n = x.dim(d);
  return l;
}

}  // namespace

void cuda::l2norm_backward(const Tensor& x, const Tensor& grad_out, Tensor& grad_in, int dim, float eps) {
  check_cuda_storage("l2norm_backward", x.dtype(), {&x, &grad_out, &grad_in});
  if (x.numel() == 0) return;
  const VectorLayout l = vector_layout(x, dim);
  with_storage_type("l2norm_backward", x.dtype(), [&]<class T>() {
    const T* px = static_cast<const T*>(x.raw_data());
    const T* pg = static_cast<const T*>(grad_out.raw_data());
    T* po = static_cast<T*>(grad_in.raw_data());
    if (l.inner == 1) {
      const unsigned blocks = unsigned(std::min<int64_t>(l.outer, int64_t(1) << 20));
      l2norm_backward_rows_kernel<T><<<blocks, threads_for_row(l.n), 0, stream_of(x)>>>(px, pg, po, l.outer, l.n,
                                                                                        eps);
    } else {
      const int64_t vectors = l.outer * l.inner;
      const unsigned blocks = unsigned(std::min<int64_t>(ceil_div<int64_t>(vectors, kLanes), int64_t(1) << 20));
      l2norm_backward_strided_kernel<T><<<blocks, dim3(kLanes, kSlices), 0, stream_of(x)>>>(
          px, pg, po, vectors, l.n, l.inner, eps);
    }
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

void cuda::l2norm(const Tensor& x, Tensor& out, int dim, float eps) {
  check_cuda_storage("l2norm", x.dtype(), {&x, &out});
  if (x.numel() == 0) return;
  const auto [outer, n, inner] = vector_layout(x, dim);
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
