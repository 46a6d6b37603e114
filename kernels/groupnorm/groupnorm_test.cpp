// groupnorm: CPU reference vs PyTorch's F.group_norm (float64) at tiny and pixel-decoder shapes.
#include "kernels/groupnorm/groupnorm.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

struct Case {
  const char* name;
  int num_groups;
};
// Same table as groupnorm_golden.py.
const Case kCases[] = {{"tiny", 3}, {"tiny_1d", 4}, {"real", 32}};
constexpr float kEps = 1e-5f;

class GroupnormTest : public ::testing::Test {
 protected:
  test::Golden golden_{"groupnorm"};
};

TEST_F(GroupnormTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const auto& g = golden_.file;
    Tensor out = Tensor::empty(g.view(name + ".x").shape(), DType::f32);
    test::poison(out);
    kernels::cpu::groupnorm(g.view(name + ".x"), g.view(name + ".weight"), g.view(name + ".bias"), out,
                            c.num_groups, kEps);
    // Outputs are O(1..10); measured max abs error ~1e-6.
    test::expect_close(out, g.view(name + ".out"), "groupnorm " + name, 1e-5);
  }
}

TEST_F(GroupnormTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 6, 4, 4}, DType::f32), w = Tensor::zeros({6}, DType::f32);
  Tensor out = Tensor::empty({1, 6, 4, 4}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w, w, out, 4, kEps), Error);  // 4 does not divide 6
  EXPECT_THROW(kernels::groupnorm(x, w, w, out, 0, kEps), Error);
  const Tensor w5 = Tensor::zeros({5}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w5, w, out, 3, kEps), Error);
  Tensor wrong_out = Tensor::empty({1, 6, 16}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(x, w, w, wrong_out, 3, kEps), Error);
  const Tensor flat = Tensor::zeros({6}, DType::f32);
  Tensor flat_out = Tensor::empty({6}, DType::f32);
  EXPECT_THROW(kernels::groupnorm(flat, w, w, flat_out, 3, kEps), Error);
  const Tensor i32_x = Tensor::zeros({1, 6, 4, 4}, DType::i32);
  EXPECT_THROW(kernels::groupnorm(i32_x, w, w, out, 3, kEps), Error);
}

}  // namespace
}  // namespace mfuser
