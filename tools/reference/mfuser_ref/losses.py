"""Training losses of the tqdm decode head (Mask2Former-style, identity assignment).

Read off the official ``tqdmHead.loss`` / ``loss_single`` / ``_get_target_single``
(mmseg/models/decode_heads/tqdm_head.py), its ``IdentityAssigner`` and ``MaskPseudoSampler``, the
mmseg ``CrossEntropyLoss`` / ``DiceLoss`` it builds, mmcv's ``point_sample`` and
``get_uncertain_point_coords_with_randomness`` (mmseg/models/utils/point_sample.py). Per decoder
prediction (the one before the first layer and one after each layer, 10 at the real config):

    loss_cls  = 2.0 * sum_{b,q} w[y_bq] * CE(cls[b,q], y_bq) / sum_{b,q} w[y_bq]
                y_bq = c if class c (= q, identity assignment) is in image b, else 19 ("no object");
                w = 1 for the 19 classes, 0.1 for "no object"
    loss_mask = 5.0 * sum_{n,p} BCEwithLogits(m_np, t_np) / (N * P)
    loss_dice = 5.0 * sum_n (1 - (2 sum_p s_np t_np + 1) / (sum_p s_np + sum_p t_np + 1)) / N
                over the N positive (present-class) queries of the batch, s = sigmoid(m), on P = 12544
                points per mask: 9408 most uncertain (smallest |logit|) of 37632 uniform random
                candidates plus 3136 uniform random points; m and t are bilinear samples
                (align_corners=False, zero padding) of the 128x128 logits and of the full-size
                binary ground-truth mask at those points.

Randomness: the official code draws from the global torch RNG, in this order, for each decoder
prediction in turn: for each image a [1, 12544, 2] uniform tensor (the identity assigner ignores it,
but it is drawn), then, when the batch has a positive query, [N, 37632, 2] and [N, 3136, 2].
``PointRandomness`` reproduces that order from a torch.Generator (or the global RNG), and can record
the draws or replay recorded ones so that another implementation can be fed the same points.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


# ---------------------------------------------------------------------------------------------
# randomness


class PointRandomness:
    """Source of the uniform [0, 1) tensors the loss draws.

    PointRandomness()                      global torch RNG (what the official code uses)
    PointRandomness(generator=g)           a torch.Generator (reproducible for a given seed)
    PointRandomness.seeded(seed)           a fresh generator seeded with ``seed``
    PointRandomness(replay=tensors)        hands out the given tensors in order (shapes checked)
    record=True                            keeps every tensor handed out in ``self.draws``
    """

    def __init__(self, generator=None, replay=None, record=False):
        self.generator = generator
        self.replay = list(replay) if replay is not None else None
        self.record = record
        self.draws = []

    @classmethod
    def seeded(cls, seed=0, record=False):
        g = torch.Generator()
        g.manual_seed(int(seed))
        return cls(generator=g, record=record)

    def rand(self, *shape, device=None):
        if self.replay is not None:
            if not self.replay:
                raise RuntimeError("PointRandomness: replay list exhausted")
            t = self.replay.pop(0)
            if tuple(t.shape) != tuple(shape):
                raise RuntimeError("PointRandomness: replay shape %s, wanted %s" % (tuple(t.shape), shape))
            t = t.to(device) if device is not None else t
        elif self.generator is not None:
            # a CPU generator: draw on the CPU and move (the values then do not depend on the device)
            t = torch.rand(shape, generator=self.generator)
            t = t.to(device) if device is not None else t
        else:
            t = torch.rand(shape, device=device)
        if self.record:
            self.draws.append(t.detach().cpu().clone())
        return t


# ---------------------------------------------------------------------------------------------
# point sampling


def point_sample(input, points, align_corners=False):
    """mmcv ``point_sample``: bilinear samples of ``input`` [N, C, H, W] at ``points`` [N, P, 2]
    ((x, y) in [0, 1] of the whole map, align_corners=False, zero padding) -> [N, C, P]."""
    # the points in the input's dtype (grid_sample wants one dtype): float32 draws sample a float64 map exactly
    grid = points.to(input.dtype).unsqueeze(2) * 2.0 - 1.0
    out = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.squeeze(3)


def get_uncertain_point_coords_with_randomness(mask_pred, num_points, oversample_ratio,
                                               importance_sample_ratio, rand):
    """Point coordinates [N, num_points, 2] for the mask losses (mask_pred: [N, 1, H, W] logits).

    ``int(num_points * oversample_ratio)`` uniform candidates are drawn; the
    ``int(importance_sample_ratio * num_points)`` with the smallest |logit| at the candidate
    (sampled logits, not the uncertainty of the coarse map) are kept (torch.topk of -|logit|,
    largest first), followed by fresh uniform points for the rest.
    """
    assert oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1
    n = mask_pred.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = rand.rand(n, num_sampled, 2, device=mask_pred.device)
    uncertainty = -torch.abs(point_sample(mask_pred, coords))          # [N, 1, num_sampled]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
    chosen = torch.gather(coords, 1, idx.unsqueeze(-1).expand(n, num_uncertain, 2))
    if num_random > 0:
        chosen = torch.cat((chosen, rand.rand(n, num_random, 2, device=mask_pred.device)), dim=1)
    return chosen


# ---------------------------------------------------------------------------------------------
# loss modules (no parameters; registered on the head as loss_cls / loss_mask / loss_dice)


def _reduce(loss, weight=None, avg_factor=None):
    """mmseg weight_reduce_loss with reduction='mean'."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / avg_factor


class CrossEntropyLoss(nn.Module):
    """mmseg CrossEntropyLoss, reduction 'mean', avg_non_ignore False.

    use_sigmoid=False: softmax CE with per-class weights; per-sample loss w[y] * nll, summed and
    divided by ``avg_factor`` (the head passes sum of w[y], i.e. a weighted mean).
    use_sigmoid=True: elementwise BCE-with-logits (pred [M, 1] or [M], target [M]), summed and divided
    by ``avg_factor``.
    """

    def __init__(self, use_sigmoid=False, class_weight=None, loss_weight=1.0):
        super().__init__()
        self.use_sigmoid = use_sigmoid
        self.class_weight = list(class_weight) if class_weight is not None else None
        self.loss_weight = loss_weight

    def forward(self, cls_score, label, weight=None, avg_factor=None):
        class_weight = cls_score.new_tensor(self.class_weight) if self.class_weight is not None else None
        if self.use_sigmoid:
            pred = cls_score.squeeze(1) if cls_score.dim() == 2 and cls_score.shape[1] == 1 else cls_score
            assert pred.shape == label.shape
            # labels < 0 or == -100 would be invalid (weight 0); the point targets are in [0, 1]
            valid = ((label >= 0) & (label != -100)).float()
            weight = valid if weight is None else weight * valid
            loss = F.binary_cross_entropy_with_logits(pred, label.float(), pos_weight=class_weight,
                                                      reduction="none")
        else:
            loss = F.cross_entropy(cls_score, label, weight=class_weight, reduction="none", ignore_index=-100)
            weight = weight.float() if weight is not None else None
        return self.loss_weight * _reduce(loss, weight, avg_factor)


class DiceLoss(nn.Module):
    """mmseg DiceLoss with use_sigmoid=True, activate=True. naive_dice=True (as configured):
    1 - (2 sum(s t) + eps) / (sum(s) + sum(t) + eps) per row; otherwise the V-Net form
    1 - 2 sum(s t) / (sum(s^2) + eps + sum(t^2) + eps)."""

    def __init__(self, naive_dice=True, eps=1.0, loss_weight=1.0):
        super().__init__()
        self.naive_dice = naive_dice
        self.eps = eps
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None):
        s = pred.sigmoid().flatten(1)
        t = target.flatten(1).float()
        a = torch.sum(s * t, 1)
        if self.naive_dice:
            d = (2 * a + self.eps) / (torch.sum(s, 1) + torch.sum(t, 1) + self.eps)
        else:
            d = (2 * a) / ((torch.sum(s * s, 1) + self.eps) + (torch.sum(t * t, 1) + self.eps))
        return self.loss_weight * _reduce(1 - d, weight, avg_factor)


# ---------------------------------------------------------------------------------------------
# targets


def semantic_to_targets(gt_semantic_seg, ignore_index=IGNORE_INDEX):
    """The dataset pipeline's ``ToMask``: one image's label map [H, W] (or [1, H, W]) ->
    (gt_labels [n] int64 sorted ascending, gt_masks [n, H, W] int64 0/1), one entry per class present
    (ignore_index dropped). An all-ignored image gives n = 0."""
    seg = gt_semantic_seg.reshape(gt_semantic_seg.shape[-2:])
    labels = torch.unique(seg)                       # sorted, like np.unique
    labels = labels[labels != ignore_index].to(torch.int64)
    masks = (seg[None] == labels[:, None, None]).to(torch.int64)
    return labels, masks


def identity_assign(gt_labels, num_queries, num_cls):
    """IdentityAssigner: query c is matched to the ground truth of class c (and query c + k*num_cls
    for further copies when num_queries is a multiple of num_cls). Returns assigned_gt_inds
    [num_queries]: 0 = background, j + 1 = the j-th ground truth."""
    assigned = torch.zeros(num_queries, dtype=torch.long, device=gt_labels.device)
    if gt_labels.numel() == 0 or num_queries == 0:
        return assigned
    gt_idx = torch.arange(gt_labels.numel(), device=gt_labels.device)
    rows, cols = [gt_labels], [gt_idx]
    for n in range(1, num_queries // num_cls):
        rows.append(gt_labels + n * num_cls)
        cols.append(gt_idx)
    assigned[torch.cat(rows)] = torch.cat(cols) + 1
    return assigned


# ---------------------------------------------------------------------------------------------
# the head loss


class MaskLossConfig:
    """Everything ``layer_loss`` needs besides the predictions (the head holds one)."""

    def __init__(self, num_classes, num_queries, class_weight, loss_cls, loss_mask, loss_dice,
                 num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75, assign_num_cls=None):
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.class_weight = list(class_weight)
        self.loss_cls = loss_cls
        self.loss_mask = loss_mask
        self.loss_dice = loss_dice
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.assign_num_cls = assign_num_cls if assign_num_cls is not None else num_classes


def layer_loss(cls_scores, mask_preds, gt_labels_list, gt_masks_list, cfg, rand):
    """``loss_single``: losses of one decoder prediction.

    cls_scores [B, Q, num_classes + 1], mask_preds [B, Q, h, w] (logits);
    gt_labels_list: B tensors [n_b]; gt_masks_list: B tensors [n_b, H, W] (0/1, any int/float dtype).
    Returns (loss_cls, loss_mask, loss_dice) as 0-d tensors. Upstream the mask and dice losses are
    shape-[1] tensors (avg_factor is a 1-element tensor); the value is the same.
    """
    num_imgs = cls_scores.shape[0]
    labels_list, mask_targets_list, pos_list = [], [], []
    for b in range(num_imgs):
        gt_labels, gt_masks = gt_labels_list[b], gt_masks_list[b]
        # _get_target_single draws point coordinates for the assigner; IdentityAssigner ignores
        # them, but the draw advances the RNG, so it is reproduced.
        rand.rand(1, cfg.num_points, 2, device=cls_scores.device)
        assigned = identity_assign(gt_labels.to(cls_scores.device), cfg.num_queries, cfg.assign_num_cls)
        pos_inds = torch.nonzero(assigned > 0).squeeze(-1).unique()          # sorted query ids
        pos_gt = assigned[pos_inds] - 1
        labels = torch.full((cfg.num_queries,), cfg.num_classes, dtype=torch.long, device=cls_scores.device)
        labels[pos_inds] = gt_labels.to(cls_scores.device)[pos_gt]
        labels_list.append(labels)
        mask_targets_list.append(gt_masks.to(cls_scores.device)[pos_gt])
        pos_list.append(pos_inds)
    labels = torch.stack(labels_list)                                        # [B, Q]
    num_total_pos = sum(p.numel() for p in pos_list)

    # classification: weighted mean over all B*Q queries, weights w[label]
    class_weight = cls_scores.new_tensor(cfg.class_weight)
    flat_labels = labels.flatten(0, 1)
    loss_cls = cfg.loss_cls(cls_scores.flatten(0, 1), flat_labels, torch.ones_like(flat_labels),
                            avg_factor=class_weight[flat_labels].sum())

    # upstream: reduce_mean over GPUs (identity in one process), then max(., 1)
    num_total_masks = max(float(num_total_pos), 1.0)

    # positive queries in (image, query) order; their targets in the same order
    mask_weights = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for b, p in enumerate(pos_list):
        mask_weights[b, p] = True
    mask_preds = mask_preds[mask_weights]                                    # [N, h, w]
    mask_targets = torch.cat(mask_targets_list, dim=0)                       # [N, H, W]
    if mask_targets.shape[0] == 0:
        # no class present in the batch: zero losses that keep the graph (upstream: sum of empty)
        return loss_cls, mask_preds.sum(), mask_preds.sum()

    with torch.no_grad():
        points = get_uncertain_point_coords_with_randomness(
            mask_preds.unsqueeze(1), cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio, rand)
        point_targets = point_sample(mask_targets.unsqueeze(1).float(), points).squeeze(1)   # [N, P]
    point_preds = point_sample(mask_preds.unsqueeze(1), points).squeeze(1)                    # [N, P]
    loss_dice = cfg.loss_dice(point_preds, point_targets, avg_factor=num_total_masks)
    loss_mask = cfg.loss_mask(point_preds.reshape(-1, 1), point_targets.reshape(-1),
                              avg_factor=num_total_masks * cfg.num_points)
    return loss_cls, loss_mask, loss_dice


def all_layers_loss(all_cls_scores, all_mask_preds, gt_labels_list, gt_masks_list, cfg, rand):
    """``loss``: the dict of the official head: 'loss_cls', 'loss_mask', 'loss_dice' for the last
    prediction and 'd{i}.loss_*' for the earlier ones (i = 0 is the prediction before the first
    decoder layer). Layers are processed first to last (this fixes the order of random draws)."""
    per_layer = [layer_loss(c, m, gt_labels_list, gt_masks_list, cfg, rand)
                 for c, m in zip(all_cls_scores, all_mask_preds)]
    out = {}
    last = per_layer[-1]
    out["loss_cls"], out["loss_mask"], out["loss_dice"] = last
    for i, (lc, lm, ld) in enumerate(per_layer[:-1]):
        out["d%d.loss_cls" % i] = lc
        out["d%d.loss_mask" % i] = lm
        out["d%d.loss_dice" % i] = ld
    return out
