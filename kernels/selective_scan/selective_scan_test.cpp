// selective_scan: CPU reference vs a float64 PyTorch loop, at tiny shapes and MFuser's two scans.
#include "kernels/selective_scan/selective_scan.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  bool delta_softplus;
  double max_abs_y, max_abs_state;
};
// Same table as selective_scan_golden.py. Max-abs bounds: 5-30x the largest errors seen over many seeds (outputs
// reach ~300 in tiny.full and one_step, whose softplus outliers make dt ~ 25; O(1..30) in the real cases).
const Case kCases[] = {{"tiny.full", true, 1e-3, 1e-4},     {"tiny.plain", false, 1e-6, 1e-6},
                       {"tiny.one_step", true, 1e-4, 1e-4}, {"real.backbone", true, 1e-4, 1e-5},
                       {"real.context", true, 1e-4, 1e-5}};

class SelectiveScanTest : public ::testing::Test {
 protected:
  // An optional input absent from the golden file is an undefined tensor.
  Tensor optional(const std::string& name) const {
    return golden_.file.contains(name) ? golden_.file.view(name) : Tensor();
  }
  test::Golden golden_{"selective_scan"};
};

TEST_F(SelectiveScanTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const Case& c : kCases) {
    const std::string n = c.name;
    const Tensor ref_y = g.view(n + ".y"), ref_state = g.view(n + ".last_state");
    Tensor y = Tensor::empty(ref_y.shape(), DType::f32), state = Tensor::empty(ref_state.shape(), DType::f32);
    test::poison(y);
    test::poison(state);
    kernels::cpu::selective_scan(g.view(n + ".u"), g.view(n + ".delta"), g.view(n + ".A"), g.view(n + ".B"),
                                 g.view(n + ".C"), optional(n + ".D"), optional(n + ".delta_bias"), y, &state,
                                 c.delta_softplus);
    test::expect_close(y, ref_y, "selective_scan " + n + " y", c.max_abs_y);
    test::expect_close(state, ref_state, "selective_scan " + n + " last_state", c.max_abs_state);

    // The final state is optional and does not change y.
    Tensor y_only = Tensor::empty(ref_y.shape(), DType::f32);
    kernels::selective_scan(g.view(n + ".u"), g.view(n + ".delta"), g.view(n + ".A"), g.view(n + ".B"),
                            g.view(n + ".C"), optional(n + ".D"), optional(n + ".delta_bias"), y_only, nullptr,
                            c.delta_softplus);
    EXPECT_EQ(test::compare(y_only, y).max_abs, 0.0) << n;
  }
}

TEST_F(SelectiveScanTest, RejectsBadArguments) {
  const int64_t b = 1, d = 4, l = 6, n = 3;
  const Tensor u = Tensor::zeros({b, d, l}, DType::f32), A = Tensor::zeros({d, n}, DType::f32);
  const Tensor bc = Tensor::zeros({b, n, l}, DType::f32), vec = Tensor::zeros({d}, DType::f32);
  Tensor y = Tensor::empty({b, d, l}, DType::f32), state = Tensor::empty({b, d, n}, DType::f32);
  EXPECT_NO_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &state, true));
  const Tensor short_u = Tensor::zeros({b, d, l - 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, short_u, A, bc, bc, vec, vec, y, &state, true), Error);
  const Tensor wrong_a = Tensor::zeros({d + 1, n}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, wrong_a, bc, bc, vec, vec, y, &state, true), Error);
  const Tensor per_channel_b = Tensor::zeros({b, d, n, l}, DType::f32);  // only B shared over channels
  EXPECT_THROW(kernels::selective_scan(u, u, A, per_channel_b, bc, vec, vec, y, &state, true), Error);
  const Tensor wrong_vec = Tensor::zeros({d + 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, wrong_vec, vec, y, &state, true), Error);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, wrong_vec, y, &state, true), Error);
  Tensor wrong_state = Tensor::empty({b, d, n + 1}, DType::f32);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, y, &wrong_state, true), Error);
  Tensor bf16_y = Tensor::empty({b, d, l}, DType::bf16);
  EXPECT_THROW(kernels::selective_scan(u, u, A, bc, bc, vec, vec, bf16_y, nullptr, true), Error);
}

}  // namespace
}  // namespace mfuser
