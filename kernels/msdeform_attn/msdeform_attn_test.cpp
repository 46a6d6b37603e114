// msdeform_attn: CPU reference vs F.grid_sample-based sampling in float64 PyTorch (tiny and the pixel decoder).
#include "kernels/msdeform_attn/msdeform_attn.h"

#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// Same cases as msdeform_attn_golden.py; shapes and level tables come from the file.
const char* const kCases[] = {"tiny.basic", "tiny.single_level", "real.pixel_decoder"};

class MsdeformAttnTest : public ::testing::Test {
 protected:
  test::Golden golden_{"msdeform_attn"};
};

TEST_F(MsdeformAttnTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string n : kCases) {
    const Tensor ref = g.view(n + ".out");
    Tensor out = Tensor::empty(ref.shape(), DType::f32);
    test::poison(out);
    kernels::cpu::msdeform_attn(g.view(n + ".value"), g.view(n + ".spatial_shapes"),
                                g.view(n + ".level_start_index"), g.view(n + ".sampling_locations"),
                                g.view(n + ".attention_weights"), out);
    // |out| < 3 (convex combinations of N(0, 1) values): f32 sampling coordinates and a 48-term sum stay
    // within ~1e-6 of the exact value.
    test::expect_close(out, ref, "msdeform_attn " + n, 1e-5);
  }
}

TEST_F(MsdeformAttnTest, RejectsBadArguments) {
  const int64_t b = 1, q = 3, h = 2, dh = 4, l = 2, p = 2;
  const Tensor value = Tensor::zeros({b, 4 * 4 + 2 * 2, h, dh}, DType::f32);
  const Tensor shapes = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 2}, {l, 2});
  const Tensor starts = Tensor::from_vector(std::vector<int64_t>{0, 16}, {l});
  const Tensor locs = Tensor::zeros({b, q, h, l, p, 2}, DType::f32);
  const Tensor weights = Tensor::zeros({b, q, h, l, p}, DType::f32);
  Tensor out = Tensor::empty({b, q, h * dh}, DType::f32);
  EXPECT_NO_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, out));

  const Tensor bad_starts = Tensor::from_vector(std::vector<int64_t>{0, 15}, {l});
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, bad_starts, locs, weights, out), Error);
  const Tensor too_big = Tensor::from_vector(std::vector<int64_t>{4, 4, 2, 3}, {l, 2});  // 22 pixels, value has 20
  EXPECT_THROW(kernels::msdeform_attn(value, too_big, starts, locs, weights, out), Error);
  const Tensor i32_shapes = Tensor::from_vector(std::vector<int32_t>{4, 4, 2, 2}, {l, 2});
  EXPECT_THROW(kernels::msdeform_attn(value, i32_shapes, starts, locs, weights, out), Error);
  const Tensor three_levels = Tensor::zeros({b, q, h, l + 1, p, 2}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, three_levels, weights, out), Error);
  const Tensor wrong_weights = Tensor::zeros({b, q, h, l, p + 1}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, wrong_weights, out), Error);
  Tensor wrong_out = Tensor::empty({b, q, h, dh}, DType::f32);
  EXPECT_THROW(kernels::msdeform_attn(value, shapes, starts, locs, weights, wrong_out), Error);
}

}  // namespace
}  // namespace mfuser
