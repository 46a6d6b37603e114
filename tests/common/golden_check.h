// Test-side helpers shared by the operator tests: the op's PyTorch golden file, and the comparison every
// CPU-vs-PyTorch check makes (relative L2, max abs, no non-finite values), with the measured errors printed.
#pragma once

#include <cstdio>
#include <string>

#include "loaders/safetensors.h"
#include "tests/common/test_util.h"

namespace mfuser::test {

// The golden file of `op` (written by the ctest fixture) and the trace line naming the seed that made it.
struct Golden {
  explicit Golden(const std::string& op)
      : file(golden_path(op)), seed_trace("golden seed " + file.metadata().at("seed")) {}
  SafetensorsReader file;
  std::string seed_trace;
};

inline void expect_close(const Tensor& out, const Tensor& ref, const std::string& what, double max_abs,
                         double max_rel_l2 = 1e-5) {
  const ErrorStats e = compare(out, ref);
  std::printf("[ errors   ] %s: %s\n", what.c_str(), describe(e).c_str());
  EXPECT_EQ(e.nonfinite, 0) << what;
  EXPECT_LE(e.rel_l2, max_rel_l2) << what;
  EXPECT_LE(e.max_abs, max_abs) << what;
}

}  // namespace mfuser::test
