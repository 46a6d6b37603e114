// posenc: CPU reference vs the sine encoding rebuilt in float64 PyTorch (tiny and the pixel decoder's levels).
#include "kernels/posenc/posenc.h"

#include <numbers>

#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  double temperature, scale, eps, offset;
};
// Same table as posenc_golden.py (the shapes come from the golden outputs).
constexpr double kTwoPi = 2 * std::numbers::pi;
const Case kCases[] = {{"tiny.default", 10000, kTwoPi, 1e-6, 0},  {"tiny.params", 20, 1, 0.5, 0.25},
                       {"real.level16", 10000, kTwoPi, 1e-6, 0},  {"real.level32", 10000, kTwoPi, 1e-6, 0},
                       {"real.level64", 10000, kTwoPi, 1e-6, 0}};

class PosencTest : public ::testing::Test {
 protected:
  test::Golden golden_{"posenc"};
};

TEST_F(PosencTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const Tensor ref = golden_.file.view(name + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::posenc(out, c.temperature, c.scale, c.eps, c.offset);
    // Values in [-1, 1] rounded once from double: half an ulp of 1 at most.
    test::expect_close(out, ref, "posenc " + name, 1e-7);
  }
}

TEST_F(PosencTest, DefaultsAreMFusersConfig) {
  const Tensor ref = golden_.file.view("real.level32.out");
  Tensor out = Tensor::empty(ref.shape(), DType::f32);
  kernels::posenc(out);
  test::expect_close(out, ref, "posenc defaults", 1e-7);
}

TEST_F(PosencTest, RejectsBadArguments) {
  Tensor odd_feats = Tensor::empty({1, 6, 4, 4}, DType::f32);  // F = 3 has no cosine partner
  EXPECT_THROW(kernels::posenc(odd_feats), Error);
  Tensor three_dims = Tensor::empty({8, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::posenc(three_dims), Error);
  Tensor bf16 = Tensor::empty({1, 8, 4, 4}, DType::bf16);
  EXPECT_THROW(kernels::posenc(bf16), Error);
  Tensor good = Tensor::empty({1, 8, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::posenc(good, 0.0), Error);
  EXPECT_THROW(kernels::posenc(good, 10000, 1, -1), Error);
}

// ---- CUDA vs the CPU reference (both in double: f32 agrees to an ulp) ----------------------------------------------

TEST(PosencCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  struct Case {
    Shape shape;
    double temperature, scale, eps, offset;
  };
  const Case cases[] = {
      {{1, 256, 64, 64}, 10000, 2 * std::numbers::pi, 1e-6, 0},  // MFuser's pixel-decoder levels
      {{2, 256, 32, 32}, 10000, 2 * std::numbers::pi, 1e-6, 0},
      {{1, 256, 16, 16}, 10000, 2 * std::numbers::pi, 1e-6, 0},
      {{1, 8, 3, 300}, 20, 1, 0, -0.5},  // wide rows, other parameters
      {{3, 4, 5, 1}, 100, 3, 1e-3, 0.25},
  };
  for (const DType dtype : test::kCudaDtypes) {
    for (const Case& c : cases) {
      Tensor ref = Tensor::empty(c.shape, DType::f32);
      kernels::cpu::posenc(ref, c.temperature, c.scale, c.eps, c.offset);
      Tensor out = test::poisoned_cuda(c.shape, dtype);
      kernels::posenc(out, c.temperature, c.scale, c.eps, c.offset);
      test::expect_cuda_close(out, ref, "posenc " + c.shape.str());
    }
  }
}

TEST(PosencCuda, RejectsBadArguments) {
  MFUSER_REQUIRE_CUDA();
  Tensor f16 = Tensor::empty({1, 8, 4, 4}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::posenc(f16), Error);
  Tensor odd_feats = Tensor::empty({1, 6, 4, 4}, DType::bf16, Device::cuda());
  EXPECT_THROW(kernels::posenc(odd_feats), Error);
  Tensor good = Tensor::empty({1, 8, 4, 4}, DType::bf16, Device::cuda());
  EXPECT_NO_THROW(kernels::posenc(good));
}

}  // namespace
}  // namespace mfuser
