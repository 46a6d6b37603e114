// The learning-rate schedule of MFuser's fine-tuning: mmcv 1.x's PolyLrUpdaterHook (by_epoch=False) with its
// 'linear' warmup, as configured upstream (MFuser configs/_base_/schedules/schedule_20k.py: policy 'poly',
// power 0.9, min_lr 1e-6, warmup 'linear', warmup_iters 1500, warmup_ratio 1e-6; IterBasedRunner max_iters
// 20000; the optimizer's lr 1e-4 is the base lr).
//
// `iter` is the runner's iteration counter of the step about to run (0 for the first update; mmcv sets the lr in
// before_train_iter from runner.iter). Without warmup, or from iter >= warmup_iters on:
//     regular(iter) = (base_lr - min_lr) * (1 - iter / max_iters)^power + min_lr
// During warmup (iter < warmup_iters) the regular lr is scaled down linearly:
//     k = (1 - iter / warmup_iters) * (1 - warmup_ratio),   lr = regular(iter) * (1 - k)
// so iter 0 gets regular(0) * warmup_ratio and the ramp reaches the regular curve (not base_lr) at warmup_iters.
// min_lr applies to the regular curve only: warmup lrs go below it. Everything is in double, as in Python.
//
// A parameter group with mmcv's lr_mult (see param_group_rule in adamw.h) scales base_lr before all of this;
// min_lr is not scaled (mmcv subtracts the same min_lr from every group's base lr).
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/error.h"

namespace mfuser::kernels {

struct PolySchedule {
  double base_lr = 1e-4;
  double min_lr = 1e-6;
  double power = 0.9;
  int64_t max_iters = 20000;
  int64_t warmup_iters = 1500;  // 0: no warmup
  double warmup_ratio = 1e-6;   // lr at iter 0 = warmup_ratio * regular(0); in (0, 1] when warming up
};

inline double poly_lr(int64_t iter, const PolySchedule& s) {
  MFUSER_CHECK(s.max_iters > 0, "poly_lr: max_iters must be > 0, got ", s.max_iters);
  MFUSER_CHECK(iter >= 0 && iter <= s.max_iters, "poly_lr: iter must be in [0, ", s.max_iters, "], got ", iter);
  MFUSER_CHECK(s.warmup_iters >= 0, "poly_lr: warmup_iters must be >= 0, got ", s.warmup_iters);
  MFUSER_CHECK(s.warmup_iters == 0 || (s.warmup_ratio > 0 && s.warmup_ratio <= 1),
               "poly_lr: warmup_ratio must be in (0, 1], got ", s.warmup_ratio);
  const double remaining = 1.0 - double(iter) / double(s.max_iters);
  const double regular = (s.base_lr - s.min_lr) * std::pow(remaining, s.power) + s.min_lr;
  if (iter >= s.warmup_iters) return regular;
  const double shortfall = (1.0 - double(iter) / double(s.warmup_iters)) * (1.0 - s.warmup_ratio);
  return regular * (1.0 - shortfall);
}

}  // namespace mfuser::kernels
