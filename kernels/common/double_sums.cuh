// Deterministic sums in double for the CUDA loss kernels (cross_entropy, bce_dice, mask_loss).
//
// A first pass leaves one partial sum per block (a fixed shuffle tree over its threads), a second pass, one
// block, adds the partials in a fixed order. No atomics, and the block count depends on the problem size only,
// so a loss repeats bit for bit run to run; double keeps a sum of ~10^6 terms as exact as the CPU reference's.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"

namespace mfuser::kernels::cuda_detail {

// Threads of every partial-sum kernel and of the final one-block pass.
constexpr int kSumThreads = 256;
// At most this many partials per sum (the final pass reads them all).
constexpr int64_t kMaxPartials = 1024;

// Blocks of a grid-stride partial-sum pass over n items: a function of n only, so is the order of the sums.
inline unsigned partial_blocks(int64_t n) {
  return unsigned(std::clamp<int64_t>(ceil_div<int64_t>(n, kSumThreads), 1, kMaxPartials));
}

// Device scratch of n doubles (the runtime has no f64 dtype: i64 storage of the same size).
inline Tensor double_scratch(int64_t n, Device device) { return Tensor::empty({std::max<int64_t>(n, 1)}, DType::i64, device); }
inline double* double_data(const Tensor& scratch) { return static_cast<double*>(scratch.raw_data()); }

// First pass: each thread's `values` summed over the block into partial[blockIdx.x * Width + k].
template <int Width>
__device__ void store_block_partials(const double (&values)[Width], double* partial, double* scratch) {
#pragma unroll
  for (int k = 0; k < Width; ++k) {
    const double total = block_sum(values[k], scratch);
    if (threadIdx.x == 0) partial[blockIdx.x * Width + k] = total;
  }
}

// Second pass, inside a one-block kernel: totals[k] = sum over the `blocks` partials of column k (every thread
// gets them). Thread i adds partials i, i + blockDim.x, ... in order, then the block tree adds the threads.
template <int Width>
__device__ void sum_block_partials(const double* partial, int64_t blocks, double (&totals)[Width], double* scratch) {
#pragma unroll
  for (int k = 0; k < Width; ++k) {
    double sum = 0.0;
    for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) sum += partial[b * Width + k];
    totals[k] = block_sum(sum, scratch);
  }
}

}  // namespace mfuser::kernels::cuda_detail
