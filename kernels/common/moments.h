// Mean and inverse standard deviation of a contiguous run of floats, shared by the normalization kernels.
#pragma once

#include <cmath>
#include <cstdint>

namespace mfuser::kernels {

struct Moments {
  float mean;
  float rstd;  // 1 / sqrt(biased variance + eps)
};

// Two passes in double: the reference must not lose digits to cancellation when |mean| >> std.
inline Moments moments(const float* x, int64_t n, double eps) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / double(n);
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  return {float(mean), float(1.0 / std::sqrt(sq / double(n) + eps))};
}

}  // namespace mfuser::kernels
