// resize: CPU reference vs PyTorch's F.interpolate (float64), bilinear and bicubic, size and scale-factor forms.
#include "kernels/resize/resize.h"

#include <cstring>
#include <stdexcept>

#include "tests/common/cuda_test.h"
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

// Bilinear cases with a backward check and the name of their upstream gradient (BACKWARD in resize_golden.py).
const std::pair<const char*, const char*> kBackwardCases[] = {
    {"tiny.bilinear_up", "tiny.bilinear_up.grad_out"},
    {"tiny.bilinear_down", "tiny.bilinear_down.grad_out"},
    {"tiny.bilinear_same", "tiny.bilinear_same.grad_out"},
    {"tiny.bilinear_mixed", "tiny.bilinear_mixed.grad_out"},
    {"tiny.bilinear_scale", "tiny.bilinear_scale.grad_out"},
    {"tiny.bilinear_one_pixel", "tiny.bilinear_one_pixel.grad_out"},
    {"tiny.bilinear_clip_pos", "tiny.bilinear_clip_pos.grad_out"},
    {"real.fpn_upsample", "real.fpn_upsample.out"},  // its own output: keeps the golden file near 60 MB
    {"real.attn_mask_16", "real.attn_mask_16.grad_out"},
};

const Case& find_case(const char* name) {
  for (const Case& c : kCases)
    if (std::strcmp(c.name, name) == 0) return c;
  throw std::runtime_error(std::string("no resize case ") + name);
}

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

TEST_F(ResizeTest, BilinearBackwardMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const auto& [name, grad_out] : kBackwardCases) {
    const Case& c = find_case(name);
    const Tensor ref = g.view(std::string(name) + ".grad_src");
    Tensor grad_src = Tensor::empty(ref.shape(), DType::f32);
    test::poison(grad_src);
    kernels::cpu::resize_bilinear_backward(g.view(grad_out), grad_src, c.scale_h, c.scale_w);
    // Upstream gradients are O(1) (N(0, 1), or fpn's own output); a source pixel sums at most 16 weighted terms
    // here, in double, with the weights rounded to f32 as in the forward (seen: max abs <= ~3e-7).
    test::expect_close(grad_src, ref, std::string("resize_bilinear_backward ") + name, 1e-5);
  }
}

// Independent of PyTorch: the backward is the forward's adjoint, <resize(x), g> = <x, resize_backward(g)>, for
// random maps, up, down, both at once, and the scale form. Both sides in double from f32 kernels: 1e-6 relative.
TEST_F(ResizeTest, BilinearBackwardIsTheAdjoint) {
  MFUSER_SEED_TRACE();
  struct Shape2 {
    int64_t in_h, in_w, out_h, out_w;
    double scale_h, scale_w;
  };
  for (const Shape2& s : {Shape2{5, 7, 11, 3, 0, 0}, Shape2{16, 9, 4, 20, 0, 0}, Shape2{6, 5, 10, 3, 1.7, 0.6},
                          Shape2{1, 1, 3, 2, 0, 0}}) {
    Tensor x = Tensor::empty({2, 3, s.in_h, s.in_w}, DType::f32);
    Tensor grad_dst = Tensor::empty({2, 3, s.out_h, s.out_w}, DType::f32);
    test::fill_uniform(x);
    test::fill_uniform(grad_dst);
    Tensor y = Tensor::empty(grad_dst.shape(), DType::f32), grad_src = Tensor::empty(x.shape(), DType::f32);
    kernels::resize_bilinear(x, y, s.scale_h, s.scale_w);
    kernels::resize_bilinear_backward(grad_dst, grad_src, s.scale_h, s.scale_w);
    double forward = 0, backward = 0, scale = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
      forward += test::value_at(y, i) * test::value_at(grad_dst, i);
      scale += std::abs(test::value_at(y, i) * test::value_at(grad_dst, i));
    }
    for (int64_t i = 0; i < x.numel(); ++i) backward += test::value_at(x, i) * test::value_at(grad_src, i);
    EXPECT_NEAR(forward, backward, 1e-6 * scale) << grad_dst.str() << " -> " << x.str();
  }
}

TEST_F(ResizeTest, BilinearBackwardRejectsBadArguments) {
  const Tensor grad_dst = Tensor::zeros({1, 2, 8, 4}, DType::f32);
  Tensor grad_src = Tensor::empty({1, 2, 5, 7}, DType::f32);
  EXPECT_NO_THROW(kernels::resize_bilinear_backward(grad_dst, grad_src, 1.7, 0.6));
  EXPECT_THROW(kernels::resize_bilinear_backward(grad_dst, grad_src, 2.0, 0.6), Error);  // floor(5 * 2) != 8
  Tensor other_channels = Tensor::empty({1, 3, 5, 7}, DType::f32);
  EXPECT_THROW(kernels::resize_bilinear_backward(grad_dst, other_channels), Error);
  Tensor three_dims = Tensor::empty({2, 5, 7}, DType::f32);
  EXPECT_THROW(kernels::resize_bilinear_backward(grad_dst, three_dims), Error);
  Tensor empty = Tensor::empty({1, 2, 0, 7}, DType::f32);
  EXPECT_THROW(kernels::resize_bilinear_backward(grad_dst, empty), Error);
  Tensor bf16_src = Tensor::empty({1, 2, 5, 7}, DType::bf16);
  EXPECT_THROW(kernels::resize_bilinear_backward(grad_dst, bf16_src), Error);
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

// ---- CUDA vs the CPU reference (the same tap arithmetic: f32 results agree to rounding) -------------------------

struct CudaCase {
  const char* name;
  bool bicubic;
  Shape src;
  int64_t out_h, out_w;
  double scale_h = 0, scale_w = 0;
};
const CudaCase kCudaCases[] = {
    {"bilinear_down_512_to_32", false, {1, 19, 512, 512}, 32, 32},
    {"bilinear_up_32_to_128", false, {1, 19, 32, 32}, 128, 128},
    {"bilinear_logits_128_to_512", false, {1, 19, 128, 128}, 512, 512},  // the final logits
    {"bilinear_19_to_37", false, {2, 3, 19, 19}, 37, 37},
    {"bilinear_mixed_37x19_to_19x45", false, {1, 2, 37, 19}, 19, 45},
    {"bilinear_to_1x1", false, {1, 2, 5, 6}, 1, 1},
    {"bilinear_from_1x1", false, {1, 2, 1, 1}, 3, 4},
    {"bilinear_scale_up", false, {1, 3, 10, 10}, 15, 15, 1.5, 1.5},
    {"bilinear_scale_down", false, {1, 3, 10, 11}, 7, 4, 0.7, 0.4},
    {"bilinear_clip_pos_embed", false, {1, 1024, 24, 24}, 32, 32},
    // DINOv2's positional embedding, resized by scale factor (g + 0.1) / 37 as upstream does.
    {"bicubic_dinov2_pos_embed", true, {1, 1024, 37, 37}, 32, 32, 32.1 / 37, 32.1 / 37},
    {"bicubic_dinov2_pos_embed_wide", true, {1, 1024, 37, 37}, 32, 64, 32.1 / 37, 64.1 / 37},
    {"bicubic_size", true, {2, 3, 5, 7}, 9, 4},
    {"bicubic_border_clamp_up", true, {1, 2, 4, 4}, 11, 13},
    {"bicubic_down", true, {1, 2, 40, 33}, 7, 10},
};

TEST(ResizeCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      const Tensor src = test::random_host(c.src, dtype);
      const Shape out_shape{c.src[0], c.src[1], c.out_h, c.out_w};
      Tensor ref = Tensor::empty(out_shape, DType::f32);
      Tensor out = test::poisoned_cuda(out_shape, dtype);
      const Tensor device_src = test::to_cuda(src, dtype);
      if (c.bicubic) {
        kernels::cpu::resize_bicubic(src, ref, c.scale_h, c.scale_w);
        kernels::resize_bicubic(device_src, out, c.scale_h, c.scale_w);
      } else {
        kernels::cpu::resize_bilinear(src, ref, c.scale_h, c.scale_w);
        kernels::resize_bilinear(device_src, out, c.scale_h, c.scale_w);
      }
      test::expect_cuda_close(out, ref, std::string("resize ") + c.name);
    }
  }
}

TEST(ResizeCuda, RejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor x = Tensor::zeros({1, 2, 5, 7}, DType::bf16, Device::cuda());
  Tensor out = Tensor::empty({1, 2, 8, 4}, DType::bf16, Device::cuda());
  Tensor out32 = Tensor::empty({1, 2, 8, 4}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::resize_bilinear(x, out));
  EXPECT_NO_THROW(kernels::resize_bicubic(x, out));
  EXPECT_THROW(kernels::resize_bilinear(x, out32), Error);
  EXPECT_THROW(kernels::resize_bicubic(x, out32), Error);
  const Tensor x16 = Tensor::zeros({1, 2, 5, 7}, DType::f16, Device::cuda());
  Tensor out16 = Tensor::empty({1, 2, 8, 4}, DType::f16, Device::cuda());
  EXPECT_THROW(kernels::resize_bilinear(x16, out16), Error);
  Tensor host_out = Tensor::empty({1, 2, 8, 4}, DType::f32);
  const Tensor x32 = Tensor::zeros({1, 2, 5, 7}, DType::f32, Device::cuda());
  EXPECT_THROW(kernels::resize_bilinear(x32, host_out), Error);  // mixed devices
  // The backward takes one dtype: grad_dst and grad_src alike.
  Tensor grad_src = Tensor::empty({1, 2, 5, 7}, DType::f32, Device::cuda());
  EXPECT_NO_THROW(kernels::resize_bilinear_backward(out32, grad_src));
  EXPECT_THROW(kernels::resize_bilinear_backward(out, grad_src), Error);
}

// resize_bilinear_backward on CUDA (a gather per source pixel) against the CPU scatter, on the forward's
// bilinear cases: down and up by integer and odd factors, to and from 1x1, scale factors, the model's logits.
TEST(ResizeCuda, BilinearBackwardMatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      if (c.bicubic) continue;  // no bicubic backward
      const Shape out_shape{c.src[0], c.src[1], c.out_h, c.out_w};
      const Tensor g = test::random_host(out_shape, dtype);
      Tensor ref = Tensor::empty(c.src, DType::f32);
      kernels::cpu::resize_bilinear_backward(g, ref, c.scale_h, c.scale_w);
      Tensor out = test::poisoned_cuda(c.src, dtype);
      kernels::resize_bilinear_backward(test::to_cuda(g, dtype), out, c.scale_h, c.scale_w);
      test::expect_cuda_close(out, ref, std::string("resize_bilinear_backward ") + c.name);
    }
  }
}

TEST(ResizeCuda, BilinearBackwardRejectsMixedDtypes) {
  MFUSER_REQUIRE_CUDA();
  const Tensor g16 = test::to_cuda(Tensor::zeros({1, 1, 4, 4}, DType::f32), DType::bf16);
  Tensor out16 = test::poisoned_cuda({1, 1, 2, 2}, DType::bf16), out32 = test::poisoned_cuda({1, 1, 2, 2}, DType::f32);
  kernels::resize_bilinear_backward(g16, out16);  // the valid baseline
  EXPECT_THROW(kernels::resize_bilinear_backward(g16, out32), Error);
}

}  // namespace
}  // namespace mfuser
