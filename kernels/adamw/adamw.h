// adamw: one in-place step of torch.optim.AdamW (PyTorch 1.13 `_single_tensor_adamw`: foreach=False, no fused
// kernel, amsgrad=False, maximize=False), and the parameter-group policy of MFuser's fine-tuning.
//
// Contract: param, exp_avg, exp_avg_sq are f32 tensors of one shape (master weights and optimizer states stay
// f32); grad has that shape and is f32 (or bf16 on CUDA); all on one device. param, exp_avg and exp_avg_sq are
// updated in place; grad is only read (it must not alias the others). Zero-size tensors are a no-op.
// `p.step` is the number of this update, counted from 1 (torch's state['step'] after its increment); the caller
// keeps the count (start both states at zero, as torch does at the first step).
//
// Per element, in this order, in f32 arithmetic, with the scalars formed in double and rounded to f32 once
// (as PyTorch's CPU and CUDA kernels round a Python scalar to the f32 op math):
//     param      = param * f32(1 - lr * weight_decay)
//     exp_avg    = exp_avg * f32(beta1);      exp_avg    = exp_avg + grad * f32(1 - beta1)
//     exp_avg_sq = exp_avg_sq * f32(beta2);   exp_avg_sq = exp_avg_sq + f32(1 - beta2) * grad * grad
//     denom      = sqrt(exp_avg_sq) / f32(sqrt(1 - beta2^step)) + f32(eps)
//     param      = param + f32(-lr / (1 - beta1^step)) * exp_avg / denom
// Every operation is one IEEE f32 rounding (no fused multiply-add), so the CUDA kernel reproduces the CPU
// reference bit for bit given the same inputs (a bf16 grad is widened exactly).
//
// Note on the decay factor: f32(1 - lr * weight_decay) is exactly 1.0f whenever lr * weight_decay < 2^-25
// (~2.98e-8). With MFuser's lr <= 1e-4 and weight_decay 1e-4 (lr * wd <= 1e-8) the decoupled weight decay is a
// no-op in PyTorch's fp32 training, and so it is here. (Any separate f32 multiply would be: a relative change of
// 1e-8 is under half an ulp, 2^-25. Only folding the decay into the update in higher precision would make it
// count, and drift from the upstream run by up to 1 - (1 - 1e-8)^20000 ~ 2e-4 of every weight.)
#pragma once

#include <cstdint>
#include <string_view>

#include "runtime/tensor.h"

namespace mfuser::kernels {

// Defaults are torch.optim.AdamW's; MFuser uses lr from poly_lr (lr_schedule.h), weight_decay 1e-4 or 0
// (param_group_rule below), betas and eps at their defaults.
struct AdamWParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  int64_t step = 1;  // >= 1
};

// The f32 scalars of one step (shared by the CPU reference and the CUDA kernel).
struct AdamWScalars {
  float decay;                  // f32(1 - lr * weight_decay)
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float bias_correction2_sqrt;  // f32(sqrt(1 - beta2^step))
  float neg_step_size;          // f32(-(lr / (1 - beta1^step)))
  float eps;
};
// Checks the hyperparameters (lr >= 0, betas in [0, 1), eps >= 0, weight_decay >= 0, step >= 1) and rounds them.
AdamWScalars adamw_scalars(const AdamWParams& p);

void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p);

namespace cpu {
void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWParams& p);
}
// The CUDA launcher (adamw.cu); call it through the dispatcher above, which checks the arguments.
namespace cuda {
void adamw_step(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq, const AdamWScalars& s);
}

// ---- Parameter groups of MFuser's fine-tuning ----
//
// Source: the official MFuser-CLIP configs (devinxzhang/MFuser configs/mfuser/mfuser_clip_vit-l_1e-4_20k-*.py,
// all five alike; the EVA and SigLIP variants differ: weight_decay 1e-5 and also level_embed / query_embed):
//     optimizer = dict(type='AdamW', lr=1e-4, weight_decay=1e-4,
//                      paramwise_cfg=dict(custom_keys={'text_encoder': dict(lr_mult=0.0),
//                                                      'norm': dict(decay_mult=0.)}))
// read by mmcv 1.x's DefaultOptimizerConstructor: the custom keys are tried longest first (ties alphabetically)
// as plain substrings of the parameter's full dotted name (the state-dict key); the FIRST key found sets both
// multipliers (a missing multiplier is 1) and no other rule applies; a name matching no key keeps lr_mult 1
// and decay_mult 1 (norm_decay_mult / bias_decay_mult are not set, so norm layers are NOT recognized by type).
// Hence:
//   - "text_encoder" in the name: lr_mult 0, decay_mult 1 (frozen in effect; that key wins over "norm");
//   - otherwise "norm" in the name: decay_mult 0 (MVFuser `norm`, MTEnhancer `norm1..3`, the decoder layers'
//     `norms.N` and `post_norm`, DINOv2's `norm*`);
//   - everything else decays, INCLUDING norm layers whose names lack "norm": the pixel decoder's GroupNorms
//     (`gn`), the FPN BatchNorm (`fpn1.1`), the context decoder's LayerNorms (`memory_proj.0/2`,
//     `text_proj.0`, `out_proj.0`) and CLIP's `ln_*`. Biases decay too.
struct ParamGroupRule {
  double lr_mult = 1;
  double decay_mult = 1;
};
ParamGroupRule param_group_rule(std::string_view param_name);
// param_group_rule(name).decay_mult != 0.
bool has_weight_decay(std::string_view param_name);

}  // namespace mfuser::kernels
