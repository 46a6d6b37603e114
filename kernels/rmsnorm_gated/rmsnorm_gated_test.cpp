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

TEST_F(RmsnormGatedTest, BackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const std::string name : kCases) {
    const auto& g = golden_.file;
    const Tensor x = g.view(name + ".x");
    Tensor gx = Tensor::empty(x.shape(), DType::f32), gz = Tensor::empty(x.shape(), DType::f32),
           gw = Tensor::empty({x.dim(-1)}, DType::f32);
    test::poison(gx);
    test::poison(gz);
    test::poison(gw);
    kernels::cpu::rmsnorm_gated_backward(x, g.view(name + ".z"), g.view(name + ".weight"), g.view(name + ".grad_out"),
                                         gx, gz, gw, kEps);
    // grad_x and grad_z are O(1..30) (silu(3 N(0, 1)) gates, sigmoid' slopes); grad_weight sums up to 2050 rows.
    // Measured: double accumulation matches float64 to the last f32 bit (max abs error <= 1.5e-8).
    test::expect_close(gx, g.view(name + ".grad_x"), "rmsnorm_gated_backward " + name + " grad_x", 1e-5);
    test::expect_close(gz, g.view(name + ".grad_z"), "rmsnorm_gated_backward " + name + " grad_z", 1e-5);
    test::expect_close(gw, g.view(name + ".grad_weight"), "rmsnorm_gated_backward " + name + " grad_weight", 1e-4);
  }
}

// grad_weight is optional: grad_x and grad_z alone must not change.
TEST_F(RmsnormGatedTest, BackwardWithoutWeightGradient) {
  const auto& g = golden_.file;
  const Tensor x = g.view("tiny.x");
  Tensor gx = Tensor::empty(x.shape(), DType::f32), gz = Tensor::empty(x.shape(), DType::f32), none;
  test::poison(gx);
  test::poison(gz);
  kernels::rmsnorm_gated_backward(x, g.view("tiny.z"), g.view("tiny.weight"), g.view("tiny.grad_out"), gx, gz, none,
                                  kEps);
  test::expect_close(gx, g.view("tiny.grad_x"), "rmsnorm_gated_backward tiny grad_x only", 1e-5);
  test::expect_close(gz, g.view("tiny.grad_z"), "rmsnorm_gated_backward tiny grad_z only", 1e-5);
}

TEST_F(RmsnormGatedTest, BackwardRejectsBadArguments) {
  const Tensor x = Tensor::zeros({3, 8}, DType::f32), w = Tensor::zeros({8}, DType::f32);
  Tensor gx = Tensor::empty({3, 8}, DType::f32), gz = Tensor::empty({3, 8}, DType::f32);
  Tensor gw = Tensor::empty({8}, DType::f32), none;
  EXPECT_NO_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, gx, gz, gw, kEps));
  const Tensor short_z = Tensor::zeros({3, 7}, DType::f32);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, short_z, w, x, gx, gz, gw, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, short_z, gx, gz, gw, kEps), Error);
  Tensor wrong = Tensor::empty({24}, DType::f32), gw7 = Tensor::empty({7}, DType::f32);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, wrong, gz, gw, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, gx, wrong, gw, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, gx, gz, gw7, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, gw7, x, gx, gz, gw, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, none, gz, gw, kEps), Error);
  const Tensor bf16 = Tensor::zeros({3, 8}, DType::bf16);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, bf16, gx, gz, gw, kEps), Error);
  EXPECT_THROW(kernels::rmsnorm_gated_backward(x, x, w, x, gx, gz, gw, -1e-5f), Error);
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
