// CUDA embedding: a row gather copied bit for bit, so one kernel over raw units serves every storage type:
// 16-byte units when a row is a whole number of them and both pointers are 16-byte aligned, else units of
// the element size. One thread per unit of the output, grid-stride.
//
// An id outside the table cannot throw here (that would need the ids on the host, i.e. a synchronization,
// which CUDA-graph capture forbids): its output row is filled with all-ones bytes, NaN in f32 and bf16, so
// the error shows downstream instead of a silent wrong row.
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/embedding/embedding.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;

template <class Unit> __device__ __forceinline__ Unit all_ones();
template <> __device__ __forceinline__ uint4 all_ones<uint4>() { return make_uint4(~0u, ~0u, ~0u, ~0u); }
template <> __device__ __forceinline__ uint32_t all_ones<uint32_t>() { return ~0u; }
template <> __device__ __forceinline__ uint16_t all_ones<uint16_t>() { return uint16_t(0xffffu); }

// out[r, :] = table[ids[r], :], rows of `width` units.
template <class Unit>
__global__ void gather_rows_kernel(const int64_t* ids, const Unit* table, Unit* out, int64_t rows, int64_t width,
                                   int64_t vocab) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, column = i - row * width;
    const int64_t id = ids[row];
    out[i] = id >= 0 && id < vocab ? table[id * width + column] : all_ones<Unit>();
  }
}

template <class Unit>
void gather_rows(const Tensor& ids, const Tensor& table, Tensor& out, size_t row_bytes, cudaStream_t stream) {
  const int64_t rows = ids.numel(), width = int64_t(row_bytes / sizeof(Unit));
  constexpr int kThreads = 256;
  gather_rows_kernel<Unit><<<grid_for(rows * width, kThreads), kThreads, 0, stream>>>(
      static_cast<const int64_t*>(ids.raw_data()), static_cast<const Unit*>(table.raw_data()),
      static_cast<Unit*>(out.raw_data()), rows, width, table.dim(0));
  MFUSER_CUDA_CHECK_LAUNCH();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void cuda::embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  check_cuda_storage("embedding", table.dtype(), {&table, &out});
  if (out.numel() == 0) return;
  const size_t row_bytes = size_t(table.dim(1)) * dtype_size(table.dtype());
  cudaStream_t stream = stream_of(table);
  if (row_bytes % 16 == 0 && aligned16(table.raw_data()) && aligned16(out.raw_data()))
    gather_rows<uint4>(ids, table, out, row_bytes, stream);
  else if (table.dtype() == DType::f32)
    gather_rows<uint32_t>(ids, table, out, row_bytes, stream);
  else
    gather_rows<uint16_t>(ids, table, out, row_bytes, stream);
}

}  // namespace mfuser::kernels
