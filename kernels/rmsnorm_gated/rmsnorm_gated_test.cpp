// rmsnorm_gated: CPU reference vs the PyTorch formula (float64) at tiny and MVFuser shapes.
#include "kernels/rmsnorm_gated/rmsnorm_gated.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as rmsnorm_gated_golden.py.
const char* const kCases[] = {"tiny", "tiny_rows", "backbone", "enhancer"};
constexpr float kEps = 1e-5f;

class RmsnormGatedTest : public ::testing::Test {
 protected:
  test::Golden golden_{"rmsnorm_gated"};
};

TEST_F(RmsnormGatedTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::rmsnorm_gated(g.view(name + ".x"), g.view(name + ".z"), g.view(name + ".weight"), out, kEps);
    // silu(3 * N(0, 1)) gates push outputs to ~50 (ulp 4e-6); measured max abs error 7.6e-6.
    test::expect_close(out, g.view(name + ".out"), "rmsnorm_gated " + name, 1e-4);
  }
}

TEST_F(RmsnormGatedTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({3, 8}, DType::f32), w = Tensor::zeros({8}, DType::f32);
  Tensor out = Tensor::empty({3, 8}, DType::f32);
  const Tensor short_z = Tensor::zeros({3, 7}, DType::f32);
  EXPECT_THROW(kernels::rmsnorm_gated(x, short_z, w, out, kEps), Error);
  const Tensor w7 = Tensor::zeros({7}, DType::f32);
  EXPECT_THROW(kernels::rmsnorm_gated(x, x, w7, out, kEps), Error);
  Tensor wrong_out = Tensor::empty({24}, DType::f32);
  EXPECT_THROW(kernels::rmsnorm_gated(x, x, w, wrong_out, kEps), Error);
  const Tensor bf16_z = Tensor::zeros({3, 8}, DType::bf16);
  EXPECT_THROW(kernels::rmsnorm_gated(x, bf16_z, w, out, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated(x, x, w, out, -1e-5f), Error);
}

}  // namespace
}  // namespace mfuser
