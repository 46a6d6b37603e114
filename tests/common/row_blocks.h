// Golden outputs too large to store whole are stored as row blocks: `<name>.blocks` (i64 [n, 2], [begin, end)
// row ranges of the output viewed as [rows, last dim]) and `<name>.out` (those rows, concatenated in order).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser::test {

struct RowBlockErrors {
  struct Block {
    int64_t begin = 0, end = 0;
    ErrorStats error;
  };
  std::vector<Block> blocks;
  int64_t nonfinite = 0;  // over the whole output, stored rows or not: catches rows never written (poison)
};

inline RowBlockErrors compare_row_blocks(const Tensor& out, const SafetensorsReader& golden, const std::string& name) {
  const Tensor ranges = golden.view(name + ".blocks"), ref = golden.view(name + ".out");
  const Tensor rows = out.reshape({-1, out.dim(-1)});
  RowBlockErrors result;
  int64_t ref_row = 0;
  for (int64_t i = 0; i < ranges.dim(0); ++i) {
    RowBlockErrors::Block b{ranges.data<int64_t>()[2 * i], ranges.data<int64_t>()[2 * i + 1], {}};
    b.error = compare(rows.slice_rows(b.begin, b.end), ref.slice_rows(ref_row, ref_row + b.end - b.begin));
    ref_row += b.end - b.begin;
    result.blocks.push_back(b);
  }
  for (int64_t i = 0; i < out.numel(); ++i) result.nonfinite += !std::isfinite(value_at(out, i));
  return result;
}

}  // namespace mfuser::test
