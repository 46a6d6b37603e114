// CPU reference of the layout ops (permute, concat, split), and the device dispatch. Elements are moved as
// opaque words of the dtype's size, so every dtype is copied bit-exactly.
#include "kernels/layout/layout.h"

#include <array>
#include <cstring>
#include <vector>

#include "kernels/common/checks.h"
#include "kernels/layout/layout_plan.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

using namespace layout_detail;

// Below this many bytes a copy runs on one thread: waking the pool costs more than it saves.
constexpr int64_t kParallelBytes = 1 << 20;

int normalize_dim(const char* op, int dim, int ndim) {
  MFUSER_CHECK(dim >= -ndim && dim < ndim, op, ": dim ", dim, " is out of range for ", ndim, " dims");
  return dim < 0 ? dim + ndim : dim;
}

// ---- permute ------------------------------------------------------------------------------------------------

std::string perm_str(std::span<const int> perm) {
  std::string s = "(";
  for (size_t i = 0; i < perm.size(); ++i) s += (i ? ", " : "") + std::to_string(perm[i]);
  return s + ")";
}

void check_permute(const Tensor& src, const Tensor& dst, std::span<const int> perm) {
  const int n = src.ndim();
  MFUSER_CHECK(int(perm.size()) == n, "permute: ", perm_str(perm), " has ", perm.size(), " axes for ", src.str());
  std::array<bool, kMaxDims> seen{};
  for (int axis : perm) {
    MFUSER_CHECK(axis >= 0 && axis < n && !seen[axis], "permute: ", perm_str(perm), " is not a permutation of ",
                 n, " dims");
    seen[axis] = true;
  }
  bool shape_ok = dst.ndim() == n;
  for (int i = 0; shape_ok && i < n; ++i) shape_ok = dst.dim(i) == src.dim(perm[i]);
  MFUSER_CHECK(shape_ok, "permute: ", src.str(), " permuted by ", perm_str(perm), " does not give ", dst.str());
  MFUSER_CHECK(src.dtype() == dst.dtype() && src.device() == dst.device(), "permute: ", src.str(), " -> ",
               dst.str(), ": dtypes or devices differ");
}

// The same permutation on the fewest dims: size-1 dims dropped, and source dims that stay neighbours (in the
// same order) in the destination merged into one. An identity permutation reduces to at most one dim.
struct ReducedPermutation {
  int ndim = 0;
  std::array<int64_t, kMaxDims> src_sizes{};
  std::array<int, kMaxDims> perm{};
};

ReducedPermutation reduce(const Shape& shape, std::span<const int> perm) {
  // Source dims of size > 1, renumbered in order.
  std::array<int, kMaxDims> kept_index{};
  std::array<int64_t, kMaxDims> kept_size{};
  int kept = 0;
  for (int d = 0; d < shape.ndim(); ++d) {
    if (shape[d] == 1) continue;
    kept_index[d] = kept;
    kept_size[kept++] = shape[d];
  }
  // Runs [first, last] of consecutive kept source dims that the destination keeps together, in destination
  // order.
  std::vector<std::pair<int, int>> runs;
  for (int axis : perm) {
    if (shape[axis] == 1) continue;
    const int k = kept_index[axis];
    if (!runs.empty() && runs.back().second + 1 == k)
      runs.back().second = k;
    else
      runs.emplace_back(k, k);
  }
  ReducedPermutation r;
  r.ndim = int(runs.size());
  for (int i = 0; i < r.ndim; ++i) {
    int rank = 0;  // position of run i among the runs in source order
    for (const auto& other : runs) rank += other.first < runs[i].first;
    r.perm[i] = rank;
    int64_t size = 1;
    for (int k = runs[i].first; k <= runs[i].second; ++k) size *= kept_size[k];
    r.src_sizes[rank] = size;
  }
  return r;
}

}  // namespace

layout_detail::PermutePlan layout_detail::plan_permute(const Shape& shape, std::span<const int> perm) {
  const ReducedPermutation r = reduce(shape, perm);
  PermutePlan p;
  p.ndim = r.ndim;
  if (r.ndim <= 1) return p;
  const int last = r.ndim - 1;
  // Destination dim i: size dst_sizes[i], stride dst_strides[i]; it walks the source with stride src_step[i].
  std::array<int64_t, kMaxDims> src_strides{}, dst_sizes{}, dst_strides{}, src_step{};
  src_strides[last] = 1;
  for (int d = last - 1; d >= 0; --d) src_strides[d] = src_strides[d + 1] * r.src_sizes[d + 1];
  for (int i = 0; i < r.ndim; ++i) {
    dst_sizes[i] = r.src_sizes[r.perm[i]];
    src_step[i] = src_strides[r.perm[i]];
  }
  dst_strides[last] = 1;
  for (int i = last - 1; i >= 0; --i) dst_strides[i] = dst_strides[i + 1] * dst_sizes[i + 1];
  int inner = 0;  // the destination dim that walks the source contiguously
  while (src_step[inner] != 1) ++inner;
  p.transpose = inner != last;
  p.row = dst_sizes[last];
  p.row_src_step = src_step[last];
  if (p.transpose) {
    p.inner_size = dst_sizes[inner];
    p.inner_dst_stride = dst_strides[inner];
  }
  for (int i = 0; i < last; ++i) {
    if (i == inner) continue;
    p.outer_size[p.n_outer] = dst_sizes[i];
    p.outer_src_step[p.n_outer] = src_step[i];
    p.outer_dst_stride[p.n_outer++] = dst_strides[i];
    p.outer_count *= dst_sizes[i];
  }
  return p;
}

namespace {

// Side of the square tiles a transposing copy moves at a time: the reads of one tile touch kTile runs of kTile
// consecutive source words, which stay in cache while the tile's rows are written.
constexpr int64_t kTile = 32;

template <class Word>
void permute_words(const Tensor& src_tensor, Tensor& dst_tensor, const PermutePlan& p) {
  const auto* src = static_cast<const Word*>(src_tensor.raw_data());
  auto* dst = static_cast<Word*>(dst_tensor.raw_data());
  const int64_t numel = src_tensor.numel();
  if (p.ndim <= 1) {  // nothing moves
    std::memcpy(dst, src, size_t(numel) * sizeof(Word));
    return;
  }
  // Without transpose every destination row is one contiguous source run. Otherwise the copy transposes each
  // outer block in kTile x kTile tiles, one band of kTile rows per work item.
  const int64_t bands = p.transpose ? (p.inner_size + kTile - 1) / kTile : 1;
  const int64_t item_words = p.transpose ? kTile * p.row : p.row;
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / int64_t(sizeof(Word)) / item_words);
  parallel_for(p.outer_count * bands, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t rest = item / bands, src_off = 0, dst_off = 0;
      for (int m = p.n_outer - 1; m >= 0; --m) {
        const int64_t index = rest % p.outer_size[m];
        rest /= p.outer_size[m];
        src_off += index * p.outer_src_step[m];
        dst_off += index * p.outer_dst_stride[m];
      }
      if (!p.transpose) {
        std::memcpy(dst + dst_off, src + src_off, size_t(p.row) * sizeof(Word));
        continue;
      }
      const int64_t a_begin = item % bands * kTile, a_end = std::min(a_begin + kTile, p.inner_size);
      for (int64_t j_begin = 0; j_begin < p.row; j_begin += kTile) {
        const int64_t j_end = std::min(j_begin + kTile, p.row);
        for (int64_t a = a_begin; a < a_end; ++a) {
          Word* out = dst + dst_off + a * p.inner_dst_stride;
          const Word* in = src + src_off + a;
          for (int64_t j = j_begin; j < j_end; ++j) out[j] = in[j * p.row_src_step];
        }
      }
    }
  });
}

// ---- concat / split -----------------------------------------------------------------------------------------

int check_pieces(const char* op, const Tensor& whole, std::span<const Tensor> pieces, int dim) {
  MFUSER_CHECK(!pieces.empty(), op, ": no pieces for ", whole.str());
  dim = normalize_dim(op, dim, whole.ndim());
  int64_t total = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const Tensor& p = pieces[i];
    bool fits = p.ndim() == whole.ndim();
    for (int d = 0; fits && d < whole.ndim(); ++d) fits = d == dim || p.dim(d) == whole.dim(d);
    MFUSER_CHECK(fits, op, ": piece ", i, " ", p.str(), " does not match ", whole.str(), " outside dim ", dim);
    MFUSER_CHECK(p.dtype() == whole.dtype() && p.device() == whole.device(), op, ": piece ", i, " ", p.str(),
                 " and ", whole.str(), ": dtypes or devices differ");
    total += p.dim(dim);
  }
  MFUSER_CHECK(total == whole.dim(dim), op, ": pieces add up to ", total, " along dim ", dim, ", but ", whole.str(),
               " has ", whole.dim(dim));
  return dim;
}

}  // namespace

layout_detail::PieceLayout layout_detail::piece_layout(const Tensor& whole, std::span<const Tensor> pieces,
                                                       int dim) {
  PieceLayout l;
  int64_t inner_bytes = int64_t(dtype_size(whole.dtype()));
  for (int d = 0; d < dim; ++d) l.outer *= whole.dim(d);
  for (int d = dim + 1; d < whole.ndim(); ++d) inner_bytes *= whole.dim(d);
  l.whole_row_bytes = whole.dim(dim) * inner_bytes;
  for (int64_t offset = 0; const Tensor& p : pieces) {
    l.block_bytes.push_back(p.dim(dim) * inner_bytes);
    l.whole_offset.push_back(offset);
    offset += l.block_bytes.back();
  }
  return l;
}

namespace {

// Moves bytes between `whole` and its consecutive `pieces` along `dim`: out of the pieces (concat) or into
// them (split). Each (outer index, piece) pair is one contiguous block on both sides.
void copy_pieces(const Tensor& whole, std::span<const Tensor> pieces, int dim, bool into_whole) {
  const PieceLayout layout = piece_layout(whole, pieces, dim);
  const std::vector<int64_t>& block_bytes = layout.block_bytes;
  const std::vector<int64_t>& whole_offset = layout.whole_offset;
  const int64_t n = int64_t(pieces.size()), outer = layout.outer, whole_row = layout.whole_row_bytes;
  const int64_t blocks = outer * n;
  if (whole_row == 0 || outer == 0) return;
  auto* whole_data = static_cast<uint8_t*>(whole.raw_data());
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / (whole_row / n + 1));
  parallel_for(blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b / n, i = b % n;
      uint8_t* w = whole_data + o * whole_row + whole_offset[i];
      auto* p = static_cast<uint8_t*>(pieces[i].raw_data()) + o * block_bytes[i];
      if (into_whole)
        std::memcpy(w, p, size_t(block_bytes[i]));
      else
        std::memcpy(p, w, size_t(block_bytes[i]));
    }
  });
}

}  // namespace

void cpu::permute(const Tensor& src, Tensor& dst, std::span<const int> perm) {
  check_permute(src, dst, perm);
  check_host("permute", src);
  if (src.numel() == 0) return;
  const PermutePlan p = plan_permute(src.shape(), perm);
  switch (dtype_size(src.dtype())) {
    case 1: permute_words<uint8_t>(src, dst, p); break;
    case 2: permute_words<uint16_t>(src, dst, p); break;
    case 4: permute_words<uint32_t>(src, dst, p); break;
    default: permute_words<uint64_t>(src, dst, p); break;
  }
}

void cpu::concat(std::span<const Tensor> srcs, Tensor& dst, int dim) {
  dim = check_pieces("concat", dst, srcs, dim);
  check_host("concat", dst);
  copy_pieces(dst, srcs, dim, /*into_whole=*/true);
}

void cpu::split(const Tensor& src, std::span<Tensor> dsts, int dim) {
  dim = check_pieces("split", src, dsts, dim);
  check_host("split", src);
  copy_pieces(src, dsts, dim, /*into_whole=*/false);
}

void permute(const Tensor& src, Tensor& dst, std::span<const int> perm) {
  check_permute(src, dst, perm);
  if (src.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::permute(src, dst, perm));
  cpu::permute(src, dst, perm);
}

void concat(std::span<const Tensor> srcs, Tensor& dst, int dim) {
  check_pieces("concat", dst, srcs, dim);
  if (dst.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::concat(srcs, dst, dim));
  cpu::concat(srcs, dst, dim);
}

void split(const Tensor& src, std::span<Tensor> dsts, int dim) {
  check_pieces("split", src, dsts, dim);
  if (src.device().is_cuda()) return MFUSER_CUDA_KERNEL(cuda::split(src, dsts, dim));
  cpu::split(src, dsts, dim);
}

}  // namespace mfuser::kernels
