// The MFuser training losses as graph nodes, with their backward rules recorded on the Builder's tape
// (backward.h), so build_backward differentiates a loss graph like any other:
//
//   mask_losses        one decode-head prediction's (loss_cls, loss_mask, loss_dice) (kernels/mask_loss:
//                      identity assignment, weighted CE, uncertainty-sampled BCE and dice; losses.py
//                      layer_loss). The head's loss is one call per decoder prediction, each with its own draws.
//   seg_cross_entropy  the auxiliary score-map loss (model.py IdentityHead.losses): bilinear resize
//                      (align_corners=False) of the score map to the label size, cross-entropy with ignore index
//                      255 averaged over all pixels (ignored ones counted, mmseg's avg_non_ignore=False), times
//                      loss_weight.
//
// Both produce f32 values and need f32 inputs (the loss kernels are f32; a bf16 graph casts first). The label
// map gt_seg is an i64 [B, H, W] value (a graph input or constant; 255 = ignore). The random points of
// mask_losses are inputs too (f32 uniform [0, 1) draws, see kernels/mask_loss/mask_loss.h), so a training step
// draws them and the graph stays deterministic.
#pragma once

#include <string>

#include "graph/model/builder.h"
#include "kernels/mask_loss/mask_loss.h"

namespace mfuser::model {

using kernels::MaskLossConfig;

// cls_scores [B, Q, K + 1], mask_preds [B, Q, h, w], gt_seg i64 [B, H, W], candidates [B * Q, S, 2], randoms
// [B * Q, R, 2] (S, R from the config) -> f32 [3] = (loss_cls, loss_mask, loss_dice), the value `name`. One node
// "mask_loss" named `name`; its second output `name.1` holds the chosen points [B * Q, P, 2], which the backward
// reads (the only forward result kept for it besides the inputs). Backward: grads of cls_scores and mask_preds
// (one "mask_loss_backward" node, each gradient only when wanted); none for the points, labels or draws.
ValueId mask_losses(Builder& b, ValueId cls_scores, ValueId mask_preds, ValueId gt_seg, ValueId candidates,
                    ValueId randoms, const MaskLossConfig& config, const std::string& name);

// logits [B, K, h, w] (the score map, already divided by tau), gt_seg i64 [B, H, W] -> f32 [1] =
// loss_weight * mean over all B * H * W pixels of CE(resize(logits)[b, :, i, j], gt_seg[b, i, j]) (0 for
// ignored pixels). The resize is Builder::resize_bilinear (node `name.resize`), skipped when (h, w) == (H, W);
// the loss node "cross_entropy" is named `name`. Backward: "cross_entropy_backward" into the (resized) logits,
// reading them and gt_seg; the resize's own rule carries it to `logits`.
ValueId seg_cross_entropy(Builder& b, ValueId logits, ValueId gt_seg, float loss_weight, const std::string& name);

namespace grad {
// The rules the two functions record (conventions of grad_rules.h). `points` is mask_loss's second output.
BackwardRule mask_losses(ValueId cls_scores, ValueId mask_preds, ValueId gt_seg, ValueId points, ValueId losses,
                         const MaskLossConfig& config);
BackwardRule seg_cross_entropy(ValueId logits, ValueId gt_seg, ValueId loss, float loss_weight);
}  // namespace grad

}  // namespace mfuser::model
