// CUDA layout ops: bit-exact moves of opaque words, from the same plans as the CPU reference (layout_plan.h).
//   permute: an identity is one copy; when the source's last dim stays last every destination row is one
//            contiguous source run (a row kernel); otherwise each block is transposed through 32 x 32
//            shared-memory tiles, so that reads and writes are both coalesced.
//   concat / split: one row-copy launch per piece, in the widest word (up to 16 bytes) that divides the
//            piece's row, both pitches and both addresses.
#include <algorithm>
#include <cstdint>

#include "kernels/common/cuda_common.cuh"
#include "kernels/layout/layout.h"
#include "kernels/layout/layout_plan.h"

namespace mfuser::kernels {

namespace {

using namespace cuda_detail;
using namespace layout_detail;

constexpr int kThreads = 256;
constexpr int kTile = 32, kTileRows = 8;  // transpose tiles: 32 x 32 words, 32 x 8 threads

// The outer dims of a permute plan, as a kernel argument.
struct OuterDims {
  int n;
  int64_t size[kMaxDims], src_step[kMaxDims], dst_stride[kMaxDims];
};

// The plan's outer dims with offsets in words of `word` bytes (elements are `element` bytes; word divides them).
OuterDims outer_dims(const PermutePlan& p, int64_t element, int64_t word) {
  OuterDims o{p.n_outer, {}, {}, {}};
  for (int m = 0; m < p.n_outer; ++m) {
    o.size[m] = p.outer_size[m];
    o.src_step[m] = p.outer_src_step[m] * element / word;
    o.dst_stride[m] = p.outer_dst_stride[m] * element / word;
  }
  return o;
}

// Source and destination offsets of outer block `index` (unrolled: the arrays stay in the parameter bank).
__device__ __forceinline__ void outer_offsets(const OuterDims& o, int64_t index, int64_t& src_off,
                                              int64_t& dst_off) {
  src_off = dst_off = 0;
#pragma unroll
  for (int m = kMaxDims - 1; m >= 0; --m) {
    if (m >= o.n) continue;
    const int64_t i = index % o.size[m];
    index /= o.size[m];
    src_off += i * o.src_step[m];
    dst_off += i * o.dst_stride[m];
  }
}

// Without transpose: block r (y) is one row of `row` words, contiguous in both tensors.
template <class Word>
__global__ void permute_rows_kernel(const Word* __restrict__ src, Word* __restrict__ dst, OuterDims outer,
                                    int64_t blocks, int64_t row) {
  for (int64_t r = blockIdx.y; r < blocks; r += gridDim.y) {
    int64_t src_off, dst_off;
    outer_offsets(outer, r, src_off, dst_off);
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < row; j += int64_t(gridDim.x) * blockDim.x)
      dst[dst_off + j] = src[src_off + j];
  }
}

// With transpose: each outer block is [inner_size, row] in the destination, column-contiguous in the source.
// A tile is read with consecutive threads walking down a column (contiguous source words), then written with
// consecutive threads walking along a row (contiguous destination words). One tile per loop iteration of a
// block; the loop bound is the same for the whole block, so the barriers are safe.
template <class Word>
__global__ void permute_tiles_kernel(const Word* __restrict__ src, Word* __restrict__ dst, OuterDims outer,
                                     int64_t blocks, int64_t inner_size, int64_t inner_dst_stride, int64_t row,
                                     int64_t row_src_step) {
  __shared__ Word tile[kTile][kTile + 1];  // [j][a]; the +1 spreads a column over the banks
  const int64_t a_tiles = ceil_div<int64_t>(inner_size, kTile), j_tiles = ceil_div<int64_t>(row, kTile);
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t t = blockIdx.x; t < blocks * a_tiles * j_tiles; t += gridDim.x) {
    const int64_t a0 = t / j_tiles % a_tiles * kTile, j0 = t % j_tiles * kTile;
    int64_t src_off, dst_off;
    outer_offsets(outer, t / (j_tiles * a_tiles), src_off, dst_off);
    for (int jj = ty; jj < kTile; jj += kTileRows)
      if (a0 + tx < inner_size && j0 + jj < row) tile[jj][tx] = src[src_off + (a0 + tx) + (j0 + jj) * row_src_step];
    __syncthreads();
    for (int aa = ty; aa < kTile; aa += kTileRows)
      if (a0 + aa < inner_size && j0 + tx < row) dst[dst_off + (a0 + aa) * inner_dst_stride + j0 + tx] = tile[tx][aa];
    __syncthreads();
  }
}

// dst[r * dst_pitch + j] = src[r * src_pitch + j] for r < rows, j < width (all in words).
template <class Word>
__global__ void copy_rows_kernel(const Word* __restrict__ src, int64_t src_pitch, Word* __restrict__ dst,
                                 int64_t dst_pitch, int64_t rows, int64_t width) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < width;
         j += int64_t(gridDim.x) * blockDim.x)
      dst[r * dst_pitch + j] = src[r * src_pitch + j];
}

// Calls f.template operator()<Word>() with the unsigned type of `bytes` bytes (1, 2, 4, 8 or 16).
template <class F>
void with_word_type(size_t bytes, F&& f) {
  switch (bytes) {
    case 1: f.template operator()<uint8_t>(); break;
    case 2: f.template operator()<uint16_t>(); break;
    case 4: f.template operator()<uint32_t>(); break;
    case 8: f.template operator()<uint64_t>(); break;
    case 16: f.template operator()<uint4>(); break;
    default: throw Error(str_cat("layout: no word type of ", bytes, " bytes"));
  }
}

// The widest word (16, 8, 4, 2 or 1 bytes) dividing `bytes`: the OR of every size, pitch and address a copy
// uses.
size_t widest_word(uint64_t bytes) {
  size_t word = 16;
  while (bytes % word != 0) word /= 2;
  return word;
}

uint64_t address_bits(const void* p) { return reinterpret_cast<uintptr_t>(p); }


// Copies `rows` rows of `width_bytes` between two pitched byte ranges on `stream`, in the widest word that
// divides every size and address.
void copy_rows(const void* src, int64_t src_pitch, void* dst, int64_t dst_pitch, int64_t rows, int64_t width_bytes,
               cudaStream_t stream) {
  if (rows == 0 || width_bytes == 0) return;
  const size_t word = widest_word(uint64_t(width_bytes) | uint64_t(src_pitch) | uint64_t(dst_pitch) |
                                  address_bits(src) | address_bits(dst));
  with_word_type(word, [&]<class Word>() {
    const int64_t width = width_bytes / int64_t(word);
    copy_rows_kernel<Word><<<row_grid(rows, width, kThreads), kThreads, 0, stream>>>(
        static_cast<const Word*>(src), src_pitch / int64_t(word), static_cast<Word*>(dst),
        dst_pitch / int64_t(word), rows, width);
    MFUSER_CUDA_CHECK_LAUNCH();
  });
}

// concat (into_whole) or split: piece i <-> its block of every whole row.
void copy_pieces(const Tensor& whole, std::span<const Tensor> pieces, int dim, bool into_whole) {
  if (dim < 0) dim += whole.ndim();
  const PieceLayout l = piece_layout(whole, pieces, dim);
  cudaStream_t stream = stream_of(whole);
  auto* whole_bytes = static_cast<uint8_t*>(whole.raw_data());
  for (size_t i = 0; i < pieces.size(); ++i) {
    uint8_t* block = whole_bytes + l.whole_offset[i];
    if (into_whole)
      copy_rows(pieces[i].raw_data(), l.block_bytes[i], block, l.whole_row_bytes, l.outer, l.block_bytes[i], stream);
    else
      copy_rows(block, l.whole_row_bytes, pieces[i].raw_data(), l.block_bytes[i], l.outer, l.block_bytes[i], stream);
  }
}

}  // namespace

void cuda::permute(const Tensor& src, Tensor& dst, std::span<const int> perm) {
  MFUSER_CHECK(src.device().is_cuda() && dst.device().is_cuda(), "permute: expected CUDA tensors, got ", src.str(),
               " -> ", dst.str());
  if (src.numel() == 0) return;
  cudaStream_t stream = stream_of(src);
  const PermutePlan p = plan_permute(src.shape(), perm);
  if (p.ndim <= 1) {  // nothing moves
    MFUSER_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  const int64_t element = int64_t(dtype_size(src.dtype()));
  if (!p.transpose) {
    // Rows copy in the widest word that divides every row length, offset and address (e.g. 16-byte words for
    // the 64-element bf16 rows of an attention head).
    uint64_t bytes = uint64_t(p.row * element) | address_bits(src.raw_data()) | address_bits(dst.raw_data());
    for (int m = 0; m < p.n_outer; ++m)
      bytes |= uint64_t(p.outer_src_step[m] * element) | uint64_t(p.outer_dst_stride[m] * element);
    const int64_t word = int64_t(widest_word(bytes));
    const OuterDims outer = outer_dims(p, element, word);
    const int64_t row = p.row * element / word;
    // Short rows get a narrower block instead of idle threads.
    const int threads = int(std::clamp<int64_t>(ceil_div<int64_t>(row, 32) * 32, 32, kThreads));
    with_word_type(size_t(word), [&]<class Word>() {
      permute_rows_kernel<Word><<<row_grid(p.outer_count, row, threads), threads, 0, stream>>>(
          static_cast<const Word*>(src.raw_data()), static_cast<Word*>(dst.raw_data()), outer, p.outer_count, row);
      MFUSER_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const OuterDims outer = outer_dims(p, element, element);
  const int64_t tiles = p.outer_count * ceil_div<int64_t>(p.inner_size, kTile) * ceil_div<int64_t>(p.row, kTile);
  with_word_type(size_t(element), [&]<class Word>() {
    if constexpr (sizeof(Word) <= 8) {  // elements are at most 8 bytes
      permute_tiles_kernel<Word><<<grid_for(tiles, 1), dim3(kTile, kTileRows), 0, stream>>>(
          static_cast<const Word*>(src.raw_data()), static_cast<Word*>(dst.raw_data()), outer, p.outer_count,
          p.inner_size, p.inner_dst_stride, p.row, p.row_src_step);
      MFUSER_CUDA_CHECK_LAUNCH();
    }
  });
}

void cuda::concat(std::span<const Tensor> srcs, Tensor& dst, int dim) {
  copy_pieces(dst, srcs, dim, /*into_whole=*/true);
}

void cuda::split(const Tensor& src, std::span<Tensor> dsts, int dim) {
  copy_pieces(src, std::span<const Tensor>(dsts.data(), dsts.size()), dim, /*into_whole=*/false);
}

}  // namespace mfuser::kernels
