// adamw: the CPU step vs torch.optim.AdamW over several steps with changing lr; the poly schedule vs the
// golden script's own Python formula; MFuser's parameter-group rule; the CUDA step (f32 and bf16 grads) vs the
// CPU reference.
#include "kernels/adamw/adamw.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/adamw/lr_schedule.h"
#include "tests/common/cuda_test.h"
#include "tests/common/golden_check.h"

namespace mfuser {
namespace {

// The cases of adamw_golden.py (their lrs and hyperparameters are read from the file).
const char* const kCases[] = {"small_wd0", "rows_wd1e-4", "tiny_grad_wd0", "mfuser_wd1e-4", "strong_decay"};

// float64 values stored as the int64 bit patterns of a float64 tensor.
std::vector<double> f64_values(const Tensor& bits) {
  std::vector<double> out(size_t(bits.numel()));
  const int64_t* p = bits.data<int64_t>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::bit_cast<double>(p[i]);
  return out;
}

Tensor host_copy(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), t.dtype());
  out.copy_from(t);
  return out;
}

Tensor step_slice(const Tensor& stacked, int64_t step, const Shape& shape) {
  return stacked.slice_rows(step, step + 1).reshape(shape);
}

// max |t|, for tolerances relative to a tensor's scale.
double max_magnitude(const Tensor& t) { return test::compare(t, Tensor::zeros(t.shape(), DType::f32)).max_abs; }

class AdamWTest : public ::testing::Test {
 protected:
  test::Golden golden_{"adamw"};
};

TEST_F(AdamWTest, CpuMatchesPyTorch) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  for (const std::string name : kCases) {
    const std::vector<double> lrs = f64_values(g.view(name + ".lr"));
    const std::vector<double> hyper = f64_values(g.view(name + ".hyper"));
    ASSERT_EQ(hyper.size(), 4u) << name;
    const Tensor param0 = g.view(name + ".param0");
    const Shape shape = param0.shape();
    Tensor param = host_copy(param0), exp_avg = Tensor::zeros(shape, DType::f32),
           exp_avg_sq = Tensor::zeros(shape, DType::f32);
    for (size_t s = 0; s < lrs.size(); ++s) {
      const kernels::AdamWParams p{.lr = lrs[s], .beta1 = hyper[1], .beta2 = hyper[2], .eps = hyper[3],
                                   .weight_decay = hyper[0], .step = int64_t(s) + 1};
      kernels::cpu::adamw_step(param, step_slice(g.view(name + ".grad"), int64_t(s), shape), exp_avg, exp_avg_sq,
                               p);
      const std::string what = "adamw " + name + " step " + std::to_string(s + 1);
      // f32 arithmetic against PyTorch's f32 arithmetic: a few ulps of each value (PyTorch's CPU kernels fuse
      // some multiply-adds, we do not). Measured over 8 seeds: rel_l2 <= 2.3e-8 (param), 8.3e-8 (exp_avg),
      // 9.1e-8 (exp_avg_sq); max abs 2.4e-7 (1-2 ulps of the weight); the first step bit-exact.
      const struct {
        const char* state;
        const Tensor& ours;
      } states[] = {{"param", param}, {"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}};
      for (const auto& st : states) {
        const Tensor ref = step_slice(g.view(name + "." + st.state), int64_t(s), shape);
        test::expect_close(st.ours, ref, what + " " + st.state, 1e-6 * max_magnitude(ref), 1e-6);
      }
    }
  }
}

// lr * weight_decay below 2^-25 rounds the decay factor to 1.0f, as PyTorch's f32 kernels do (MFuser: 1e-4 *
// 1e-4); above it the factor is the nearest float.
TEST(AdamWHyperparameters, DecayFactorRoundsLikePyTorch) {
  EXPECT_EQ(kernels::adamw_scalars({.lr = 1e-4, .weight_decay = 1e-4}).decay, 1.0f);
  EXPECT_EQ(kernels::adamw_scalars({.lr = 2e-4, .weight_decay = 1e-4}).decay, 1.0f);
  EXPECT_EQ(kernels::adamw_scalars({.lr = 1e-3, .weight_decay = 1e-4}).decay, float(1 - 1e-7));
  EXPECT_LT(kernels::adamw_scalars({.lr = 1e-3, .weight_decay = 1e-4}).decay, 1.0f);
  // The first step's bias corrections: 1 - beta^1.
  const kernels::AdamWScalars s = kernels::adamw_scalars({.lr = 1e-3, .weight_decay = 0, .step = 1});
  EXPECT_EQ(s.neg_step_size, float(-(1e-3 / (1 - 0.9))));
  EXPECT_EQ(s.bias_correction2_sqrt, float(std::sqrt(1 - 0.999)));
}

TEST_F(AdamWTest, PolyScheduleMatchesPython) {
  SCOPED_TRACE(golden_.seed_trace);
  const auto& g = golden_.file;
  const Tensor iters = g.view("poly.iters");
  const std::vector<double> ref = f64_values(g.view("poly.lr"));
  ASSERT_EQ(size_t(iters.numel()), ref.size());
  const kernels::PolySchedule schedule;  // the defaults are MFuser's schedule
  for (size_t i = 0; i < ref.size(); ++i) {
    const int64_t it = iters.data<int64_t>()[i];
    const double lr = kernels::poly_lr(it, schedule);
    std::printf("[ values   ] poly_lr(%lld) = %.17g (python %.17g)\n", static_cast<long long>(it), lr, ref[i]);
    // Same double formula; only pow's last bit may differ between libm and CPython.
    EXPECT_NEAR(lr, ref[i], 4e-16 * ref[i]) << "iter " << it;
  }
  // Landmarks: the ramp starts at warmup_ratio * base_lr and reaches the regular curve at warmup_iters.
  EXPECT_NEAR(kernels::poly_lr(0, schedule), 1e-4 * 1e-6, 1e-19);  // 1 - (1 - 1e-6) is 1e-6 to ~3e-11
  EXPECT_DOUBLE_EQ(kernels::poly_lr(20000, schedule), 1e-6);
  EXPECT_LT(kernels::poly_lr(1499, schedule), kernels::poly_lr(1500, schedule));
  EXPECT_GT(kernels::poly_lr(1500, schedule), kernels::poly_lr(1501, schedule));
  EXPECT_THROW(kernels::poly_lr(-1, schedule), Error);
  EXPECT_THROW(kernels::poly_lr(20001, schedule), Error);
  EXPECT_DOUBLE_EQ(kernels::poly_lr(0, {.warmup_iters = 0}), 1e-4);
}

// MFuser-CLIP's custom_keys {'text_encoder': lr_mult 0, 'norm': decay_mult 0}, matched as mmcv does, on real
// parameter names of the model.
TEST(AdamWParamGroups, MfuserRule) {
  const char* const no_decay[] = {
      "backbone.adapter.3.norm.weight",                                  // MVFuser gated RMSNorm
      "context_decoder.decoder.0.cross_attn.norm.weight",                // MVFuser_256
      "context_decoder.decoder.0.norm1.weight", "context_decoder.decoder.0.norm3.bias",
      "decode_head.pixel_decoder.encoder.layers.5.norms.2.weight",
      "decode_head.pixel_decoder.encoder.post_norm.bias",
      "decode_head.transformer_decoder.layers.8.norms.0.bias",
      "decode_head.transformer_decoder.post_norm.weight",
      "backbone.dino.blocks.0.norm1.weight",
      "module.decode_head.transformer_decoder.post_norm.weight",  // DDP-wrapped names match too
  };
  for (const char* name : no_decay) {
    EXPECT_FALSE(kernels::has_weight_decay(name)) << name;
    EXPECT_EQ(kernels::param_group_rule(name).lr_mult, 1.0) << name;
  }
  const char* const decay[] = {
      "contexts", "gamma", "backbone.adapter.3.A_log", "backbone.adapter.3.dt_proj.bias",
      "backbone.adapter_proj3.weight",
      "backbone.fpn1.1.weight",                                // the FPN BatchNorm: named by index, decays
      "decode_head.pixel_decoder.input_convs.0.gn.weight",     // GroupNorm named `gn`: decays
      "decode_head.pixel_decoder.lateral_convs.0.gn.bias",
      "context_decoder.memory_proj.0.weight",                  // LayerNorm in a Sequential: decays
      "context_decoder.out_proj.0.bias",
      "backbone.transformer.resblocks.0.ln_1.weight",          // CLIP's ln_*: decays (frozen anyway)
      "decode_head.query_embed.weight", "decode_head.level_embed.weight", "decode_head.cls_embed.bias",
  };
  for (const char* name : decay) {
    EXPECT_TRUE(kernels::has_weight_decay(name)) << name;
    EXPECT_EQ(kernels::param_group_rule(name).lr_mult, 1.0) << name;
  }
  // "text_encoder" is the longer key and wins over "norm": lr_mult 0, decay_mult 1.
  for (const char* name : {"text_encoder.ln_final.weight", "text_encoder.transformer.resblocks.0.attn.in_proj_weight",
                           "text_encoder.some_norm.weight"}) {
    EXPECT_EQ(kernels::param_group_rule(name).lr_mult, 0.0) << name;
    EXPECT_EQ(kernels::param_group_rule(name).decay_mult, 1.0) << name;
    EXPECT_TRUE(kernels::has_weight_decay(name)) << name;
  }
}

TEST(AdamWArgs, RejectsBadArguments) {
  Tensor w = Tensor::zeros({4, 8}, DType::f32), m = Tensor::zeros({4, 8}, DType::f32),
         v = Tensor::zeros({4, 8}, DType::f32);
  const Tensor grad = Tensor::zeros({4, 8}, DType::f32);
  const kernels::AdamWParams ok{};
  EXPECT_NO_THROW(kernels::adamw_step(w, grad, m, v, ok));
  const Tensor short_grad = Tensor::zeros({4, 7}, DType::f32), bf16_grad = Tensor::zeros({4, 8}, DType::bf16);
  EXPECT_THROW(kernels::adamw_step(w, short_grad, m, v, ok), Error);
  EXPECT_THROW(kernels::adamw_step(w, bf16_grad, m, v, ok), Error);  // bf16 grads on CUDA only
  Tensor short_m = Tensor::zeros({8, 4}, DType::f32), bf16_v = Tensor::zeros({4, 8}, DType::bf16);
  EXPECT_THROW(kernels::adamw_step(w, grad, short_m, v, ok), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, bf16_v, ok), Error);
  EXPECT_THROW(kernels::adamw_step(w, Tensor(), m, v, ok), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.step = 0}), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.lr = -1}), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.beta1 = 1.0}), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.beta2 = -0.1}), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.eps = -1}), Error);
  EXPECT_THROW(kernels::adamw_step(w, grad, m, v, {.weight_decay = -1}), Error);
  Tensor empty_w = Tensor::zeros({0}, DType::f32), empty_m = Tensor::zeros({0}, DType::f32),
         empty_v = Tensor::zeros({0}, DType::f32);
  EXPECT_NO_THROW(kernels::adamw_step(empty_w, Tensor::zeros({0}, DType::f32), empty_m, empty_v, ok));
}

// ---- CUDA step vs the CPU reference ----

struct CudaCase {
  const char* name;
  Shape shape;
  float grad_scale;
  double weight_decay;
};
const CudaCase kCudaCases[] = {
    {"n1", {1}, 1.f, 1e-4},
    {"n257", {257}, 1.f, 0.0},
    {"n4099_tiny_grad", {4099}, 1e-6f, 1e-4},                // grads near eps
    {"adapter_in_proj", {1024, 1024}, 1e-2f, 1e-4},          // an MVFuser in_proj weight
    {"fpn_convt", {1024, 1024, 2, 2}, 1e-3f, 1e-2},          // an FPN ConvTranspose weight, strong decay
    {"n1000003", {1000003}, 1.f, 1e-4},                      // an odd size, many blocks
};
// Steps with changing lr: inside warmup, at the peak, late in the decay, and a large lr that makes the decay
// factor differ from 1.
const double kCudaLrs[] = {1e-3, 9.3e-5, 1e-6, 2e-2};

TEST(AdamWCuda, MatchesCpu) {
  MFUSER_REQUIRE_CUDA();
  MFUSER_SEED_TRACE();
  for (const DType grad_dtype : test::kCudaDtypes) {
    for (const CudaCase& c : kCudaCases) {
      Tensor w_ref = test::random_host(c.shape, DType::f32), m_ref = Tensor::zeros(c.shape, DType::f32),
             v_ref = Tensor::zeros(c.shape, DType::f32);
      Tensor w = w_ref.to(Device::cuda()), m = m_ref.to(Device::cuda()), v = v_ref.to(Device::cuda());
      int64_t step = 0;
      for (const double lr : kCudaLrs) {
        // Host grads representable in the CUDA grad dtype, so both sides see the same values.
        const Tensor grad = test::random_host(c.shape, grad_dtype, -c.grad_scale, c.grad_scale);
        const kernels::AdamWParams p{.lr = lr, .weight_decay = c.weight_decay, .step = ++step};
        kernels::cpu::adamw_step(w_ref, grad, m_ref, v_ref, p);
        kernels::adamw_step(w, test::to_cuda(grad, grad_dtype), m, v, p);
        const std::string what = std::string("adamw ") + c.name + " step " + std::to_string(step) + " (" +
                                 std::string(dtype_name(grad_dtype)) + " grad)";
        // Same f32 operations, each correctly rounded, on both sides: expected bit for bit; bounded at 1e-6.
        test::expect_cuda_close(w, w_ref, what + " param", 1e-6);
        test::expect_cuda_close(m, m_ref, what + " exp_avg", 1e-6);
        test::expect_cuda_close(v, v_ref, what + " exp_avg_sq", 1e-6);
      }
    }
  }
}

TEST(AdamWCuda, RejectsMixedArguments) {
  MFUSER_REQUIRE_CUDA();
  Tensor w = Tensor::zeros({4, 8}, DType::f32, Device::cuda()), m = Tensor::zeros({4, 8}, DType::f32, Device::cuda()),
         v = Tensor::zeros({4, 8}, DType::f32, Device::cuda());
  const Tensor grad16 = Tensor::zeros({4, 8}, DType::bf16, Device::cuda());
  EXPECT_NO_THROW(kernels::adamw_step(w, grad16, m, v, {}));
  Tensor w16 = Tensor::zeros({4, 8}, DType::bf16, Device::cuda());
  EXPECT_THROW(kernels::adamw_step(w16, grad16, m, v, {}), Error);  // master weights stay f32
  const Tensor host_grad = Tensor::zeros({4, 8}, DType::f32);
  EXPECT_THROW(kernels::adamw_step(w, host_grad, m, v, {}), Error);
}

}  // namespace
}  // namespace mfuser
