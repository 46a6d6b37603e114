// layernorm: CPU reference vs PyTorch's F.layer_norm (float64) at tiny and ViT-L shapes.
#include "kernels/layernorm/layernorm.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  float eps;
};
// Same table as layernorm_golden.py.
const Case kCases[] = {{"tiny", 1e-5f}, {"tiny_offset", 1e-6f}, {"clip", 1e-5f}, {"dino", 1e-6f}};

class LayernormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"layernorm"};
};

TEST_F(LayernormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::layernorm(g.view(name + ".x"), g.view(name + ".weight"), g.view(name + ".bias"), out, c.eps);
    // Outputs are O(1..10); measured max abs error ~1e-6.
    test::expect_close(out, g.view(name + ".out"), "layernorm " + name, 1e-5);
  }
}

TEST_F(LayernormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({4, 8}, DType::f32), w = Tensor::zeros({8}, DType::f32);
  Tensor out = Tensor::empty({4, 8}, DType::f32);
  const Tensor short_w = Tensor::zeros({7}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x, short_w, w, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, short_w, out, 1e-5f), Error);
  Tensor wrong_out = Tensor::empty({8, 4}, DType::f32);
  EXPECT_THROW(kernels::layernorm(x, w, w, wrong_out, 1e-5f), Error);
  const Tensor bf16_x = Tensor::zeros({4, 8}, DType::bf16);
  EXPECT_THROW(kernels::layernorm(bf16_x, w, w, out, 1e-5f), Error);
  EXPECT_THROW(kernels::layernorm(x, w, w, out, -1.f), Error);
  EXPECT_THROW(kernels::layernorm(x, Tensor(), w, out, 1e-5f), Error);
}

}  // namespace
}  // namespace mfuser
