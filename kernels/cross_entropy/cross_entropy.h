// cross_entropy: softmax cross-entropy over the class dim (dim 1) with int64
// targets, optional per-class weights and an ignore index, in the two
// reductions the MFuser training losses use
// (tools/reference/mfuser_ref/losses.py, model.py):
//
//   nll_i   = logsumexp_c(x[i, :]) - x[i, t_i]        for every position i
//   (sample, and pixel of a map) w_i     = weight[t_i] (1 without weights); 0
//   where t_i == ignore_index weighted_mean  loss = sum_i w_i nll_i / sum_i w_i
//                  F.cross_entropy(x, t, weight, ignore_index,
//                  reduction='mean'); the Mask2Former head's loss_cls
//                  (losses.py layer_loss: CrossEntropyLoss with avg_factor =
//                  sum of w[label]). All positions ignored (or all weights 0)
//                  gives 0/0 = NaN, as in PyTorch.
//   mean_all       loss = sum_i w_i nll_i / (number of positions, ignored ones
//   INCLUDED)
//                  mmseg's avg_non_ignore=False: model.py IdentityHead.losses,
//                  ce(reduction='none').mean().
//
// logits: f32 [N, C] or [N, C, d1, ...] (e.g. score maps [B, C, H, W]). target:
// i64 [N] resp. [N, d1, ...]; each value in [0, C) or == ignore_index (anything
// else throws, nothing written). weight: undefined Tensor() for none, or f32
// [C]. loss: f32 0-d. Sums accumulate in f64. The loss_weight factors (2.0 for
// loss_cls, 1.0 for the auxiliary loss) are NOT applied here: callers scale the
// loss, and feed the scaled upstream gradient to the backward.
//
// cross_entropy_backward: grad_logits = grad_loss * w_i / D * (softmax(x[i, :])
// - onehot(t_i)), D the reduction's denominator above; ignored positions get
// exactly 0. Saved from the forward: logits (the softmax is recomputed), target
// and weight. grad_loss: f32 0-d (the upstream gradient of the scalar).
// grad_logits: f32 of logits' shape, OVERWRITTEN (may not alias logits). No
// gradient for weight (the class weights are constants of the config) nor
// target (integer).
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace mfuser::kernels {

enum class CrossEntropyReduction { weighted_mean, mean_all };

void cross_entropy(const Tensor &logits, const Tensor &target,
                   const Tensor &weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor &loss);
void cross_entropy_backward(const Tensor &logits, const Tensor &target,
                            const Tensor &weight, int64_t ignore_index,
                            CrossEntropyReduction reduction,
                            const Tensor &grad_loss, Tensor &grad_logits);

namespace cpu {
void cross_entropy(const Tensor &logits, const Tensor &target,
                   const Tensor &weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor &loss);
void cross_entropy_backward(const Tensor &logits, const Tensor &target,
                            const Tensor &weight, int64_t ignore_index,
                            CrossEntropyReduction reduction,
                            const Tensor &grad_loss, Tensor &grad_logits);
} // namespace cpu

} // namespace mfuser::kernels
