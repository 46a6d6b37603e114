// CPU reference of the AdamW step, the device dispatch, and MFuser's parameter-group rule.
#include "kernels/adamw/adamw.h"

#include <array>
#include <cmath>

#include "kernels/common/checks.h"
#include "runtime/parallel.h"

namespace mfuser::kernels {

namespace {

constexpr const char* kOp = "adamw_step";

void check_args(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq) {
  check_f32(kOp, "param", param);
  check_f32(kOp, "exp_avg", exp_avg);
  check_f32(kOp, "exp_avg_sq", exp_avg_sq);
  check_float(kOp, "grad", grad);
  check_shape(kOp, "grad", grad, param.shape());
  check_shape(kOp, "exp_avg", exp_avg, param.shape());
  check_shape(kOp, "exp_avg_sq", exp_avg_sq, param.shape());
  check_same_device(kOp, {&param, &grad, &exp_avg, &exp_avg_sq});
}

}  // namespace

AdamWScalars adamw_scalars(const AdamWParams& p) {
  MFUSER_CHECK(p.lr >= 0, kOp, ": lr must be >= 0, got ", p.lr);
  MFUSER_CHECK(p.beta1 >= 0 && p.beta1 < 1, kOp, ": beta1 must be in [0, 1), got ", p.beta1);
  MFUSER_CHECK(p.beta2 >= 0 && p.beta2 < 1, kOp, ": beta2 must be in [0, 1), got ", p.beta2);
  MFUSER_CHECK(p.eps >= 0, kOp, ": eps must be >= 0, got ", p.eps);
  MFUSER_CHECK(p.weight_decay >= 0, kOp, ": weight_decay must be >= 0, got ", p.weight_decay);
  MFUSER_CHECK(p.step >= 1, kOp, ": step must be >= 1 (the first update is step 1), got ", p.step);
  // Python floats: the step is a float there too (state['step'].item()).
  const double step = double(p.step);
  const double bias_correction1 = 1 - std::pow(p.beta1, step);
  const double bias_correction2 = 1 - std::pow(p.beta2, step);
  AdamWScalars s;
  s.decay = float(1 - p.lr * p.weight_decay);
  s.beta1 = float(p.beta1);
  s.one_minus_beta1 = float(1 - p.beta1);
  s.beta2 = float(p.beta2);
  s.one_minus_beta2 = float(1 - p.beta2);
  s.bias_correction2_sqrt = float(std::sqrt(bias_correction2));
  s.neg_step_size = float(-(p.lr / bias_correction1));
  s.eps = float(p.eps);
  return s;
}

void cpu::adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p) {
  check_args(param, grad, exp_avg, exp_avg_sq);
  check_host(kOp, param);
  const AdamWScalars s = adamw_scalars(p);
  float* w = param.data<float>();
  const float* g = grad.data<float>();
  float* m = exp_avg.data<float>();
  float* v = exp_avg_sq.data<float>();
  parallel_for(param.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      // One f32 rounding per operation, in the contract's order (no contraction into FMAs: x86-64 without
      // -mfma has none, and each product below is stored before it is added).
      const float gi = g[i];
      const float wi = w[i] * s.decay;
      float mi = m[i] * s.beta1;
      const float m_inc = gi * s.one_minus_beta1;
      mi = mi + m_inc;
      float vi = v[i] * s.beta2;
      const float v_inc = s.one_minus_beta2 * gi * gi;
      vi = vi + v_inc;
      const float denom = std::sqrt(vi) / s.bias_correction2_sqrt + s.eps;
      const float update = s.neg_step_size * mi / denom;
      w[i] = wi + update;
      m[i] = mi;
      v[i] = vi;
    }
  });
}

void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p) {
  check_args(param, grad, exp_avg, exp_avg_sq);
  if (param.device().is_cuda()) {
    [[maybe_unused]] const AdamWScalars s = adamw_scalars(p);  // checks the hyperparameters in every build
    return MFUSER_CUDA_KERNEL(cuda::adamw_step(param, grad, exp_avg, exp_avg_sq, s));
  }
  cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, p);
}

// ---- Parameter groups ----

namespace {

struct CustomKey {
  std::string_view key;
  ParamGroupRule rule;
};
// MFuser-CLIP's paramwise_cfg custom_keys, already in mmcv's matching order (longest first, ties alphabetical).
constexpr std::array<CustomKey, 2> kCustomKeys = {{
    {"text_encoder", {0.0, 1.0}},
    {"norm", {1.0, 0.0}},
}};

}  // namespace

ParamGroupRule param_group_rule(std::string_view param_name) {
  for (const CustomKey& k : kCustomKeys)
    if (param_name.find(k.key) != std::string_view::npos) return k.rule;
  return {};
}

bool has_weight_decay(std::string_view param_name) { return param_group_rule(param_name).decay_mult != 0; }

}  // namespace mfuser::kernels
