// Deterministic reductions over rows for the backward kernels (weight/bias gradients sum over every row).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "runtime/parallel.h"

namespace mfuser::kernels {

// Splits [0, rows) into a fixed number of contiguous blocks, runs body(begin, end, partial) on each in
// parallel with its own zeroed `width` doubles, and returns the partials summed in block order. The block
// count does not depend on the thread count, so the result is bit-identical whatever the parallelism.
template <class Body>
std::vector<double> row_block_sums(int64_t rows, int64_t width, const Body& body) {
  const int64_t blocks = std::clamp<int64_t>(rows / 16, 1, 64);
  std::vector<double> partial(size_t(blocks * width), 0.0);
  parallel_for(blocks, 2, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      body(rows * b / blocks, rows * (b + 1) / blocks, partial.data() + b * width);
  });
  std::vector<double> total(size_t(width), 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t i = 0; i < width; ++i) total[size_t(i)] += partial[size_t(b * width + i)];
  return total;
}

}  // namespace mfuser::kernels
