// CPU reference of the layout ops (permute, concat, split), and the device dispatch. Elements are moved as
// opaque words of the dtype's size, so every dtype is copied bit-exactly.
#include "kernels/layout/layout.h"

#include <array>
#include <cstring>
#include <vector>

#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

// Below this many bytes a copy runs on one thread: waking the pool costs more than it saves.
constexpr int64_t kParallelBytes = 1 << 20;

int normalize_dim(const char* op, int dim, int ndim) {
  MFUSER_CHECK(dim >= -ndim && dim < ndim, op, ": dim ", dim, " is out of range for ", ndim, " dims");
  return dim < 0 ? dim + ndim : dim;
}

void check_host(const char* op, const Tensor& t) {
  MFUSER_CHECK(t.device().is_cpu(), op, ": the CPU kernel got ", t.str());
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
  // Runs of source dims [first, last] that the destination keeps together, in destination order.
  std::vector<std::pair<int, int>> runs;
  for (int axis : perm) {
    if (shape[axis] == 1) continue;
    if (!runs.empty() && runs.back().second + 1 == axis)
      runs.back().second = axis;
    else
      runs.emplace_back(axis, axis);
  }
  // A run that skipped only size-1 dims is still one run: merge it with the next one when they are adjacent
  // in the source once those dims are ignored.
  ReducedPermutation r;
  r.ndim = int(runs.size());
  for (int i = 0; i < r.ndim; ++i) {
    int rank = 0;  // position of run i among the runs in source order
    for (const auto& other : runs) rank += other.first < runs[i].first;
    r.perm[i] = rank;
    int64_t size = 1;
    for (int d = runs[i].first; d <= runs[i].second; ++d) size *= shape[d];
    r.src_sizes[rank] = size;
  }
  return r;
}

template <class Word>
void permute_words(const Word* src, Word* dst, const ReducedPermutation& r, int64_t numel) {
  if (r.ndim <= 1) {  // nothing moves
    std::memcpy(dst, src, size_t(numel) * sizeof(Word));
    return;
  }
  std::array<int64_t, kMaxDims> src_strides{};
  src_strides[r.ndim - 1] = 1;
  for (int d = r.ndim - 2; d >= 0; --d) src_strides[d] = src_strides[d + 1] * r.src_sizes[d + 1];
  // Destination dim i walks the source with stride src_step[i].
  std::array<int64_t, kMaxDims> dst_sizes{}, src_step{};
  for (int i = 0; i < r.ndim; ++i) {
    dst_sizes[i] = r.src_sizes[r.perm[i]];
    src_step[i] = src_strides[r.perm[i]];
  }
  const int last = r.ndim - 1;
  const int64_t row = dst_sizes[last], step = src_step[last], rows = numel / row;
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / int64_t(sizeof(Word)) / row);
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    // Odometer over the destination's outer dims, tracking the matching source offset.
    std::array<int64_t, kMaxDims> index{};
    int64_t offset = 0;
    for (int64_t rest = begin, i = last - 1; i >= 0; --i) {
      index[i] = rest % dst_sizes[i];
      rest /= dst_sizes[i];
      offset += index[i] * src_step[i];
    }
    for (int64_t r_out = begin; r_out < end; ++r_out) {
      const Word* in = src + offset;
      Word* out = dst + r_out * row;
      if (step == 1)
        std::memcpy(out, in, size_t(row) * sizeof(Word));
      else
        for (int64_t j = 0; j < row; ++j) out[j] = in[j * step];
      for (int i = last - 1; i >= 0; --i) {
        offset += src_step[i];
        if (++index[i] < dst_sizes[i]) break;
        offset -= index[i] * src_step[i];
        index[i] = 0;
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

// Moves bytes between `whole` and its consecutive `pieces` along `dim`: out of the pieces (concat) or into
// them (split). Each (outer index, piece) pair is one contiguous block on both sides.
void copy_pieces(const Tensor& whole, std::span<const Tensor> pieces, int dim, bool into_whole) {
  const size_t word = dtype_size(whole.dtype());
  int64_t outer = 1, inner_bytes = int64_t(word);
  for (int d = 0; d < dim; ++d) outer *= whole.dim(d);
  for (int d = dim + 1; d < whole.ndim(); ++d) inner_bytes *= whole.dim(d);
  const int64_t n = int64_t(pieces.size());
  std::vector<int64_t> block_bytes(n), whole_offset(n);
  for (int64_t i = 0, offset = 0; i < n; ++i) {
    block_bytes[i] = pieces[i].dim(dim) * inner_bytes;
    whole_offset[i] = offset;
    offset += block_bytes[i];
  }
  const int64_t whole_row = whole.dim(dim) * inner_bytes, blocks = outer * n;
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
  const ReducedPermutation r = reduce(src.shape(), perm);
  switch (dtype_size(src.dtype())) {
    case 1: permute_words(src.data<uint8_t>(), dst.data<uint8_t>(), r, src.numel()); break;
    case 2: permute_words(static_cast<const uint16_t*>(src.raw_data()), static_cast<uint16_t*>(dst.raw_data()), r, src.numel()); break;
    case 4: permute_words(static_cast<const uint32_t*>(src.raw_data()), static_cast<uint32_t*>(dst.raw_data()), r, src.numel()); break;
    default: permute_words(static_cast<const uint64_t*>(src.raw_data()), static_cast<uint64_t*>(dst.raw_data()), r, src.numel()); break;
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
  MFUSER_CHECK(!src.device().is_cuda(), "permute: no CUDA kernel yet");
  cpu::permute(src, dst, perm);
}

void concat(std::span<const Tensor> srcs, Tensor& dst, int dim) {
  check_pieces("concat", dst, srcs, dim);
  MFUSER_CHECK(!dst.device().is_cuda(), "concat: no CUDA kernel yet");
  cpu::concat(srcs, dst, dim);
}

void split(const Tensor& src, std::span<Tensor> dsts, int dim) {
  check_pieces("split", src, dsts, dim);
  MFUSER_CHECK(!src.device().is_cuda(), "split: no CUDA kernel yet");
  cpu::split(src, dsts, dim);
}

}  // namespace mfuser::kernels
