// bce_dice: the two point losses of the Mask2Former head on mask logits x [N,
// P] (N positive queries, P sampled points) and float targets t [N, P] in [0,
// 1] (tools/reference/mfuser_ref/losses.py: layer_loss,
// CrossEntropyLoss(use_sigmoid=True) and DiceLoss(naive_dice=True, eps=1)):
//
//   bce_with_logits_mean  loss = sum_{n,p} (max(x, 0) - x t + log(1 +
//   exp(-|x|))) / (N P)
//                         = F.binary_cross_entropy_with_logits(x, t) (mean);
//                         layer_loss's loss_mask with avg_factor =
//                         num_total_masks * num_points = N * P whenever N >= 1.
//   dice_loss             s = sigmoid(x); d_n = (2 sum_p s t + eps) / (sum_p s
//   + sum_p t + eps);
//                         loss = sum_n (1 - d_n) / N; layer_loss's loss_dice
//                         (avg_factor = N).
//
// x, t: f32 [N, P] with N, P >= 1. loss: f32 0-d. Sums accumulate in f64. The
// loss_weight 5.0 of both is NOT applied here: callers scale the loss and the
// upstream gradient.
//
// Backward (saved from the forward: x and t; sigmoid and row sums are
// recomputed):
//   bce_with_logits_mean_backward  grad_x = grad_loss * (sigmoid(x) - t) / (N
//   P) dice_loss_backward             grad_x[n, p] = -grad_loss / N * (2 t (S_n
//   + T_n + eps) - (2 A_n + eps))
//                                  / (S_n + T_n + eps)^2 * s (1 - s), A_n = sum
//                                  s t, S_n = sum s, T_n = sum t
// grad_loss: f32 0-d. grad_x: f32 [N, P], OVERWRITTEN (may not alias x or t).
// No gradient for t: the point targets are samples of the ground-truth masks,
// made under torch.no_grad in layer_loss.
#pragma once

#include "runtime/tensor.h"

namespace mfuser::kernels {

void bce_with_logits_mean(const Tensor &x, const Tensor &t, Tensor &loss);
void bce_with_logits_mean_backward(const Tensor &x, const Tensor &t,
                                   const Tensor &grad_loss, Tensor &grad_x);
void dice_loss(const Tensor &x, const Tensor &t, float eps, Tensor &loss);
void dice_loss_backward(const Tensor &x, const Tensor &t, float eps,
                        const Tensor &grad_loss, Tensor &grad_x);

namespace cpu {
void bce_with_logits_mean(const Tensor &x, const Tensor &t, Tensor &loss);
void bce_with_logits_mean_backward(const Tensor &x, const Tensor &t,
                                   const Tensor &grad_loss, Tensor &grad_x);
void dice_loss(const Tensor &x, const Tensor &t, float eps, Tensor &loss);
void dice_loss_backward(const Tensor &x, const Tensor &t, float eps,
                        const Tensor &grad_loss, Tensor &grad_x);
} // namespace cpu

} // namespace mfuser::kernels
