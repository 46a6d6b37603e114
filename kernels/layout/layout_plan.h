// The index plans shared by the CPU reference (layout.cpp) and the CUDA kernels (layout.cu) of the layout ops:
// both move the same blocks, only the copying differs.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "runtime/tensor.h"

namespace mfuser::kernels::layout_detail {

// permute as the destination walks it, on the fewest dims (size-1 dims dropped, and source dims that stay
// neighbours, in the same order, in the destination merged into one). The destination is outer_count blocks,
// one per index of the outer dims (sizes outer_size, in destination order; block offsets outer_src_step and
// outer_dst_stride), each
//   - without transpose (the source's last dim stays last): one row of `row` words, contiguous on both sides;
//   - with transpose: inner_size rows of `row` words, inner_dst_stride apart in the destination; down a
//     column the source is contiguous, along a row it advances by row_src_step.
// An identity permutation has ndim <= 1: a plain copy.
struct PermutePlan {
  int ndim = 0;
  bool transpose = false;
  int64_t row = 1, row_src_step = 1, inner_size = 1, inner_dst_stride = 0;
  int n_outer = 0;
  int64_t outer_count = 1;
  std::array<int64_t, kMaxDims> outer_size{}, outer_src_step{}, outer_dst_stride{};
};
PermutePlan plan_permute(const Shape& shape, std::span<const int> perm);

// concat / split as block copies: the whole tensor is `outer` rows of `whole_row_bytes`; piece i is `outer`
// rows of block_bytes[i], which sit at byte whole_offset[i] of each whole row. `dim` must be normalized.
struct PieceLayout {
  int64_t outer = 1, whole_row_bytes = 0;
  std::vector<int64_t> block_bytes, whole_offset;
};
PieceLayout piece_layout(const Tensor& whole, std::span<const Tensor> pieces, int dim);

}  // namespace mfuser::kernels::layout_detail
