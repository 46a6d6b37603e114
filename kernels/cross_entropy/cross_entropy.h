// cross_entropy: softmax cross-entropy over the class dim (dim 1) with int64 targets, optional per-class weights
// and an ignore index, in the two reductions the MFuser training losses use
// (tools/reference/mfuser_ref/losses.py, model.py):
//
//   nll_i = logsumexp_c(x[i, :]) - x[i, t_i]   for every position i (sample, and pixel of a map)
//   w_i   = weight[t_i] (1 without weights); 0 where t_i == ignore_index
//   weighted_mean  loss = sum_i w_i nll_i / sum_i w_i
//                  F.cross_entropy(x, t, weight, ignore_index, reduction='mean'); the Mask2Former head's
//                  loss_cls (losses.py layer_loss: CrossEntropyLoss with avg_factor = sum of w[label]). All
//                  positions ignored (or all weights 0) gives 0/0 = NaN, as in PyTorch.
//   mean_all       loss = sum_i w_i nll_i / (number of positions, ignored ones INCLUDED)
//                  mmseg's avg_non_ignore=False: model.py IdentityHead.losses, ce(reduction='none').mean().
//
// logits: f32 [N, C] or [N, C, d1, ...] (e.g. score maps [B, C, H, W]). target: i64 [N] resp. [N, d1, ...];
// each value in [0, C) or == ignore_index. weight: undefined Tensor() for none, or f32 [C]. loss: f32 0-d.
// The loss_weight factors (2.0 for loss_cls, 1.0 for the auxiliary loss) are NOT applied here: callers scale
// the loss, and feed the scaled upstream gradient to the backward.
//
// cross_entropy_backward: grad_logits = grad_loss * w_i / D * (softmax(x[i, :]) - onehot(t_i)), D the
// reduction's denominator above; ignored positions get exactly 0. Saved from the forward: logits (the softmax
// is recomputed), target and weight. grad_loss: f32 0-d (the upstream gradient of the scalar). grad_logits: f32
// of logits' shape, OVERWRITTEN (may not alias logits). No gradient for weight (the class weights are
// constants of the config) nor target (integer).
//
// CPU: per-position terms and the sums in f64, summed in position order. A target out of range throws before
// anything is written.
// CUDA (f32 only, like the CPU; no host synchronization, so it can be captured in a CUDA graph): one thread per
// position; its softmax sums in f32, max-shifted, the non-target classes summed apart so that 1 - p_target
// does not cancel; nll_i = (max - x[t_i]) + log(sum), both parts >= 0. The reduction's sums in f64, as
// per-block partials added in a fixed order: deterministic, no atomics. A target out of range cannot throw
// without a host round trip: it makes the loss NaN, and its position's gradient NaN (every gradient under
// weighted_mean, whose denominator turns NaN).
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace mfuser::kernels {

enum class CrossEntropyReduction { weighted_mean, mean_all };

void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                            CrossEntropyReduction reduction, const Tensor& grad_loss, Tensor& grad_logits);

namespace cpu {
void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                            CrossEntropyReduction reduction, const Tensor& grad_loss, Tensor& grad_logits);
}  // namespace cpu

// The CUDA launchers (cross_entropy.cu); call them through the dispatchers above, which check the arguments.
namespace cuda {
void cross_entropy(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                   CrossEntropyReduction reduction, Tensor& loss);
void cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& weight, int64_t ignore_index,
                            CrossEntropyReduction reduction, const Tensor& grad_loss, Tensor& grad_logits);
}  // namespace cuda

}  // namespace mfuser::kernels
