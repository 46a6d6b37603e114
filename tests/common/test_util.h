// Shared test helpers: seeds, random fills, poisoning, and the error metrics every kernel test reports.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#include "runtime/cuda.h"
#include "runtime/tensor.h"

namespace mfuser::test {

// The run's seed: $MFUSER_SEED if set, otherwise fresh. Printed at start and in every failure message.
uint64_t seed();
std::mt19937_64& rng();

// Uniform floats in [lo, hi) into a host tensor of any float dtype.
void fill_uniform(Tensor& t, float lo = -1.f, float hi = 1.f);
// Overwrites every byte with 0xFF (NaN for the float types) so a kernel that skips an element is caught.
void poison(Tensor& t);

// Element i of a host float tensor (any float dtype) as double.
double value_at(const Tensor& host, int64_t i);

struct ErrorStats {
  double rel_l2 = 0;   // ||out - ref|| / ||ref||
  double max_abs = 0;  // max |out - ref|
  double diff_l2 = 0;  // ||out - ref||
  double ref_l2 = 0;   // ||ref||
  int64_t nonfinite = 0;
};
// Compares two float tensors (any float dtypes, any devices) element by element in double.
ErrorStats compare(const Tensor& out, const Tensor& ref);
std::string describe(const ErrorStats& e);

// Path of the PyTorch golden file for `op` written by tools/reference/op_golden.py (a ctest fixture).
std::string golden_path(const std::string& op);

}  // namespace mfuser::test

// First statement of every GPU test: skips, saying why, when no device is usable.
#define MFUSER_REQUIRE_CUDA()                                                           \
  do {                                                                                  \
    if (!::mfuser::cuda::available()) GTEST_SKIP() << ::mfuser::cuda::unavailable_reason(); \
  } while (0)

#define MFUSER_SEED_TRACE() SCOPED_TRACE(::testing::Message() << "seed " << ::mfuser::test::seed() << " (rerun with MFUSER_SEED=" << ::mfuser::test::seed() << ")")
