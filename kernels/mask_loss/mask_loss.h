// mask_loss: the training loss of one Mask2Former decode-head prediction of MFuser (the tqdm head), as
// tools/reference/mfuser_ref/losses.py layer_loss computes it: identity assignment of queries to the classes
// present in each image, the weighted classification cross-entropy, and the BCE / dice mask losses on
// uncertainty-sampled points. One call per decoder prediction (10 at the real config); all_layers_loss is
// that call once per prediction, each with its own random draws.
//
// Inputs (f32 unless said; CPU or CUDA, all on one device):
//   cls_scores  [B, Q, K + 1]   class logits; class K is "no object"
//   mask_preds  [B, Q, h, w]    mask logits
//   gt_seg      i64 [B, H, W]   trainIds in [0, K), or config.ignore_index (255); anything else throws (on
//                               CUDA: NaN losses, see below)
//   candidates  [B * Q, S, 2]   uniform [0, 1) point candidates, S = int(num_points * oversample_ratio)
//   randoms     [B * Q, R, 2]   uniform [0, 1) extra points, R = num_points - int(importance_sample_ratio *
//                               num_points) (R may be 0: a [B * Q, 0, 2] tensor)
// Rows of candidates / randoms are used in (image, query) order of the positive queries: the n-th positive
// uses row n; rows [N, B * Q) are not read. The oracle draws [N, S, 2] then [N, R, 2] per prediction: row n of
// its draws is row n here. (It also draws one [1, num_points, 2] tensor per image first, which the identity
// assigner ignores: that draw is not an input.)
//
// Targets (semantic_to_targets + identity_assign): class c is present in image b when some pixel of gt_seg[b]
// is c. Query q of image b is positive iff q < (Q / K) * K (Q >= K required; with Q a multiple of K every
// query has a class) and class q % K is present; its label is then q % K, else K. N = number of positives.
//
// Losses (f32 [3] = loss_cls, loss_mask, loss_dice; the loss weights w_cls, w_mask, w_dice applied):
//   loss_cls  = w_cls * sum_{b,q} cw[y_bq] nll(cls_scores[b, q], y_bq) / sum_{b,q} cw[y_bq]   (all B * Q)
//   For the N positives (and N >= 1; else loss_mask = loss_dice = 0):
//     points  = for positive n: among the S candidates of row n, the U = int(importance * num_points) with
//               the smallest |m(c)|, m the bilinear sample of its mask logits (align_corners=False, zeros
//               outside) at candidate c, in increasing |m| (torch.topk of -|m|, largest first); equal |m|:
//               the smaller candidate index first (torch.topk leaves that order unspecified). Then the R
//               points of randoms row n. P = U + R = num_points points in all.
//     x[n, p] = bilinear sample of the positive's mask logits at point p; t[n, p] = bilinear sample of its
//               0/1 ground-truth mask (gt_seg[b] == class) at the same point (kernels/point_sample)
//     loss_mask = w_mask * sum_{n,p} BCEwithLogits(x, t) / (N * P)            (kernels/bce_dice)
//     loss_dice = w_dice * sum_n (1 - (2 sum_p s t + eps) / (sum_p s + sum_p t + eps)) / N,  s = sigmoid(x)
// The |m| used to choose the points is computed in double (same taps as point_sample), so the choice agrees
// with a float64 oracle except for candidates whose |m| differ by ~1e-16 relative. Sums accumulate in f64
// (cross_entropy, bce_dice); x and t are f32 samples (point_sample).
//
// Saved for the backward: `points` f32 [B * Q, P, 2], OVERWRITTEN: rows [0, N) hold each positive's P points
// (U chosen candidates, then its randoms row), rows [N, B * Q) are zero. Everything else is recomputed from
// the inputs (labels and positives from gt_seg; x and t by point_sample at the saved points).
//
// mask_loss_backward: given grad_losses f32 [3] (d L / d (loss_cls, loss_mask, loss_dice)), OVERWRITES
//   grad_cls_scores  [B, Q, K + 1]  = cross_entropy_backward with upstream w_cls * grad_losses[0]
//   grad_mask_preds  [B, Q, h, w]   = point_sample_backward of the BCE and dice point gradients (upstream
//                                     w_mask * grad_losses[1] and w_dice * grad_losses[2]); zero for every
//                                     query that is not positive, and everywhere when N = 0.
// Either gradient may be an undefined Tensor() (not wanted: not computed); then its own inputs may be undefined
// too (grad_cls_scores needs cls_scores; grad_mask_preds needs mask_preds and points). gt_seg is always needed.
// No gradient for the points (chosen under torch.no_grad in the oracle), candidates, randoms or gt_seg.
// Gradients may not alias any input.
//
// CUDA (f32 only, like the CPU): the same results without any host synchronization (a whole training step can be
// captured in a CUDA graph), so N stays on the device and every kernel runs over all B * Q rows, rows >= N doing
// nothing or writing zeros. Presence of each class, labels, positives and N are computed by two small kernels from
// gt_seg; the class CE is kernels/cross_entropy; the point choice computes |m| of every candidate in double with the
// taps of point_sample (kernels/point_sample/bilinear_taps.cuh; products and sums rounded one at a time, no FMA, as the
// x86-64 CPU build rounds them, so both choose the same points; a CPU build that contracts to FMA may order near-ties
// differently), then orders the candidates of all rows by two stable radix sorts (CUB: by |m|, then by row), which
// leaves each row in increasing |m| with ties in candidate order; x is kernels/point_sample on the positives' gathered
// mask logits, t samples gt_seg directly with the same taps (equal to point_sample of the 0/1 mask); BCE and dice are
// kernels/bce_dice told N through device memory; the backward is cross_entropy_backward, bce/dice backward,
// point_sample_backward and a scatter into the positive queries. Every step is deterministic (sorts and fixed-order
// sums, no float atomics). A gt_seg value that is neither a class nor ignore_index cannot throw there (that needs the
// host): it makes all three losses NaN, and the gradients NaN, which the trainer's non-finite check stops on.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/tensor.h"

namespace mfuser::kernels {

struct MaskLossConfig {
  int64_t num_classes = 19;        // K (cls_scores has K + 1 classes)
  std::vector<float> class_weight;  // K + 1 entries: per-class CE weight, the last for "no object"
  float loss_cls_weight = 2.f;
  float loss_mask_weight = 5.f;
  float loss_dice_weight = 5.f;
  int64_t num_points = 12544;       // P
  double oversample_ratio = 3.0;    // >= 1
  double importance_sample_ratio = 0.75;  // in [0, 1]
  float dice_eps = 1.f;
  int64_t ignore_index = 255;

  // The MFuser config: K = 19, class weights 1 and 0.1 for "no object", loss weights 2 / 5 / 5, 12544
  // points, oversample 3, importance 0.75, dice eps 1.
  static MaskLossConfig mfuser();
  int64_t num_candidates() const;  // S = int(num_points * oversample_ratio)
  int64_t num_uncertain() const;   // U = int(importance_sample_ratio * num_points)
  int64_t num_random() const;      // R = num_points - U
  void validate(const char* op) const;  // throws naming `op` when a field is out of range
};

// The counts that normalize one batch's losses (gt_seg i64 [B, H, W] on the host, Q queries per image): the sum
// over all B * Q queries of their target's class weight (loss_cls's denominator) and the number of positives N
// (loss_mask's and loss_dice's). Data-parallel training normalizes by the group's counts instead of each rank's
// (graph/model/training.h loss_weights).
struct MaskLossCounts {
  double class_weight_sum = 0;
  double positives = 0;  // a double: group means are fractional
};
MaskLossCounts mask_loss_counts(const Tensor& gt_seg, int64_t queries, const MaskLossConfig& config);

// Dispatch on the device.
void mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& candidates,
               const Tensor& randoms, const MaskLossConfig& config, Tensor& losses, Tensor& points);
void mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                        const Tensor& points, const MaskLossConfig& config, const Tensor& grad_losses,
                        Tensor& grad_cls_scores, Tensor& grad_mask_preds);

namespace cpu {
void mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& candidates,
               const Tensor& randoms, const MaskLossConfig& config, Tensor& losses, Tensor& points);
void mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                        const Tensor& points, const MaskLossConfig& config, const Tensor& grad_losses,
                        Tensor& grad_cls_scores, Tensor& grad_mask_preds);
}  // namespace cpu

// The CUDA launchers (mask_loss.cu); call them through the dispatchers above, which check the arguments.
namespace cuda {
void mask_loss(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg, const Tensor& candidates,
               const Tensor& randoms, const MaskLossConfig& config, Tensor& losses, Tensor& points);
void mask_loss_backward(const Tensor& cls_scores, const Tensor& mask_preds, const Tensor& gt_seg,
                        const Tensor& points, const MaskLossConfig& config, const Tensor& grad_losses,
                        Tensor& grad_cls_scores, Tensor& grad_mask_preds);
}  // namespace cuda

}  // namespace mfuser::kernels
