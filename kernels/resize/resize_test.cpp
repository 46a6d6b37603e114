// resize: CPU reference vs PyTorch's F.interpolate (float64), bilinear and bicubic, size and scale-factor forms.
#include "kernels/resize/resize.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

enum class Mode { bilinear, bicubic };

struct Case {
  const char* name;
  const char* input;
  Mode mode;
  double scale_h = 0, scale_w = 0;  // 0: the size form (dst's shape gives the size)
};
// Same table as resize_golden.py.
const Case kCases[] = {
    {"tiny.bilinear_up", "tiny.a", Mode::bilinear},
    {"tiny.bilinear_down", "tiny.b", Mode::bilinear},
    {"tiny.bilinear_same", "tiny.a", Mode::bilinear},
    {"tiny.bilinear_mixed", "tiny.b", Mode::bilinear},
    {"tiny.bilinear_scale", "tiny.a", Mode::bilinear, 1.7, 0.6},
    {"tiny.bilinear_one_pixel", "tiny.one_pixel", Mode::bilinear},
    {"tiny.bilinear_clip_pos", "tiny.clip_grid", Mode::bilinear},
    {"tiny.bicubic_up", "tiny.a", Mode::bicubic},
    {"tiny.bicubic_down", "tiny.b", Mode::bicubic},
    {"tiny.bicubic_same", "tiny.a", Mode::bicubic},
    {"tiny.bicubic_scale", "tiny.b", Mode::bicubic, 0.55, 1.3},
    {"tiny.bicubic_one_pixel", "tiny.one_pixel", Mode::bicubic},
    {"tiny.bicubic_dino_pos", "tiny.dino_grid", Mode::bicubic, 32.1 / 37, 32.1 / 37},
    {"real.fpn_upsample", "real.fpn_memory", Mode::bilinear},
    {"real.logits_to_crop", "real.mask_logits", Mode::bilinear},
    {"real.attn_mask_16", "real.mask_logits", Mode::bilinear},
    {"real.dino_pos_convert", "real.dino_pos", Mode::bicubic},
    {"real.dino_pos_runtime", "real.dino_pos", Mode::bicubic, 32.1 / 37, 32.1 / 37},
};

class ResizeTest : public ::testing::Test {
 protected:
  test::Golden golden_{"resize"};
};

TEST_F(ResizeTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const Case& c : kCases) {
    const std::string name = c.name;
    const Tensor ref = g.view(name + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    if (c.mode == Mode::bilinear)
      kernels::cpu::resize_bilinear(g.view(c.input), out, c.scale_h, c.scale_w);
    else
      kernels::cpu::resize_bicubic(g.view(c.input), out, c.scale_h, c.scale_w);
    // Inputs are N(0, 1) (|x| < 6): a sum of at most 16 products is within a few 1e-6 of the exact value.
    test::expect_close(out, ref, "resize " + name, 2e-5);
  }
}

TEST_F(ResizeTest, RejectsBadArguments) {
  const Tensor x = Tensor::zeros({1, 2, 5, 7}, DType::f32);
  Tensor out = Tensor::empty({1, 2, 8, 4}, DType::f32);
  EXPECT_NO_THROW(kernels::resize_bilinear(x, out, 1.7, 0.6));
  EXPECT_THROW(kernels::resize_bilinear(x, out, 2.0, 0.6), Error);   // floor(5 * 2) != 8
  EXPECT_THROW(kernels::resize_bicubic(x, out, -1.0, 0.6), Error);
  Tensor other_channels = Tensor::empty({1, 3, 8, 4}, DType::f32);
  EXPECT_THROW(kernels::resize_bilinear(x, other_channels), Error);
  Tensor three_dims = Tensor::empty({2, 8, 4}, DType::f32);
  EXPECT_THROW(kernels::resize_bicubic(x, three_dims), Error);
  Tensor empty = Tensor::empty({1, 2, 0, 4}, DType::f32);
  EXPECT_THROW(kernels::resize_bilinear(x, empty), Error);
  Tensor bf16_out = Tensor::empty({1, 2, 8, 4}, DType::bf16);
  EXPECT_THROW(kernels::resize_bicubic(x, bf16_out), Error);
}

}  // namespace
}  // namespace mfuser
