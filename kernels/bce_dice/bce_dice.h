// bce_dice: the two point losses of the Mask2Former head on mask logits x [N, P] (N positive queries, P sampled
// points) and float targets t [N, P] in [0, 1] (tools/reference/mfuser_ref/losses.py: layer_loss,
// CrossEntropyLoss(use_sigmoid=True) and DiceLoss(naive_dice=True, eps=1)):
//
//   bce_with_logits_mean  loss = sum_{n,p} (max(x, 0) - x t + log(1 + exp(-|x|))) / (N P)
//                         = F.binary_cross_entropy_with_logits(x, t) (mean); layer_loss's loss_mask with
//                         avg_factor = num_total_masks * num_points = N * P whenever N >= 1.
//   dice_loss             s = sigmoid(x); d_n = (2 sum_p s t + eps) / (sum_p s + sum_p t + eps);
//                         loss = sum_n (1 - d_n) / N; layer_loss's loss_dice (avg_factor = N).
//
// x, t: f32 [N, P] with N, P >= 1. loss: f32 0-d. The loss_weight 5.0 of both is NOT applied here: callers
// scale the loss and the upstream gradient.
//
// Backward (saved from the forward: x and t; sigmoid and row sums are recomputed):
//   bce_with_logits_mean_backward  grad_x = grad_loss * (sigmoid(x) - t) / (N P)
//   dice_loss_backward             grad_x[n, p] = -grad_loss / N * (2 t (S_n + T_n + eps) - (2 A_n + eps))
//                                                 / (S_n + T_n + eps)^2 * s (1 - s),
//                                  A_n = sum_p s t, S_n = sum_p s, T_n = sum_p t
// grad_loss: f32 0-d. grad_x: f32 [N, P], OVERWRITTEN (may not alias x or t). No gradient for t: the point
// targets are samples of the ground-truth masks, made under torch.no_grad in layer_loss.
//
// CPU: every term and sum in f64, rows summed in order. CUDA (f32 only, like the CPU; no host synchronization,
// so it can be captured in a CUDA graph): per-element terms in f32 (sigmoid(x) - t formed as
// s (1 - t) - (1 - s) t, each factor computed directly, so it does not cancel for binary targets), every sum
// in f64: BCE as per-block partials added in a fixed order, dice as one block per row, then the rows in order.
// Deterministic, no atomics.
#pragma once

#include <cstdint>

#include "runtime/tensor.h"

namespace mfuser::kernels {

void bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss);
void bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x);
void dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss);
void dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x);

namespace cpu {
void bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss);
void bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x);
void dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss);
void dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x);
}  // namespace cpu

// The CUDA launchers (bce_dice.cu); call them through the dispatchers above, which check the arguments.
// `active_rows`, for kernels/mask_loss, whose positives are counted on the device: nullptr (all N rows), or a
// device int32 M in [0, N]: only rows [0, M) exist, so N above is M, rows [M, N) of grad_x are zeros, and
// M = 0 gives a NaN loss (0 / 0).
namespace cuda {
void bce_with_logits_mean(const Tensor& x, const Tensor& t, Tensor& loss, const int32_t* active_rows = nullptr);
void bce_with_logits_mean_backward(const Tensor& x, const Tensor& t, const Tensor& grad_loss, Tensor& grad_x,
                                   const int32_t* active_rows = nullptr);
void dice_loss(const Tensor& x, const Tensor& t, float eps, Tensor& loss, const int32_t* active_rows = nullptr);
void dice_loss_backward(const Tensor& x, const Tensor& t, float eps, const Tensor& grad_loss, Tensor& grad_x,
                        const int32_t* active_rows = nullptr);
}  // namespace cuda

}  // namespace mfuser::kernels
