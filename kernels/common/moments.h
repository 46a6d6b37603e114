// Mean and inverse standard deviation of a contiguous run of floats, shared by the normalization kernels.
#pragma once

#include <cmath>
#include <cstdint>

namespace mfuser::kernels {

struct Moments {
  double mean;
  double rstd;  // 1 / sqrt(biased variance + eps)
};

// Two passes in double, and callers center in double too: the reference must not lose digits to
// cancellation when |mean| >> std (a mean rounded to f32 is off by half an ulp of the mean).
inline Moments moments(const float* x, int64_t n, double eps) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / double(n);
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  return {mean, 1.0 / std::sqrt(sq / double(n) + eps)};
}

}  // namespace mfuser::kernels
