"""PyTorch golden data for kernels/mask_loss (see tools/reference/op_golden.py).

Oracle: tools/reference/mfuser_ref/losses.py layer_loss (identity assignment, weighted CE, uncertainty point
sampling, BCE and naive dice) in float64, with its random draws replayed from the op's inputs: the per-image
[1, P, 2] assigner draws (ignored by the oracle: zeros), then rows [0, N) of `candidates` and of `randoms`
(PointRandomness(replay=...)). Gradients: float64 autograd of sum(grad_out * (loss_cls, loss_mask, loss_dice))
wrt cls_scores and mask_preds.

One adaptation: layer_loss samples the targets from `mask_targets.float()` at the points; F.grid_sample wants
one dtype for input and grid, so while the golden runs, losses.point_sample casts its input to the points'
dtype (float64; the 0/1 masks are exact in any dtype). The loss modules then round the targets to float32
(`.float()`), as the oracle does.

Per case (`<case>.`): inputs cls_scores, mask_preds, gt_seg (i64), candidates [B*Q, S, 2], randoms [B*Q, R, 2],
config f32 [8] = (num_classes, num_points, oversample_ratio, importance_sample_ratio, loss_cls, loss_mask,
loss_dice weights, dice eps), class_weight [K+1]; outputs losses [3], points [N, P, 2] (the oracle's chosen
points, positives in (image, query) order), grad_out [3], grad_cls_scores, grad_mask_preds.

Near ties: the op and the oracle rank candidates by |sampled logit| in float64; a row whose U-th and (U+1)-th
smallest values (or two of the chosen ones) lie within 1e-12 relative is redrawn, so the choice and its order
are unambiguous."""
import contextlib

import torch

from mfuser_ref import losses as L

IGNORE = 255


@contextlib.contextmanager
def _oracle_patches(chosen):
    """losses.point_sample in the points' dtype, and a record of the chosen points."""
    original_sample = L.point_sample
    original_choose = L.get_uncertain_point_coords_with_randomness

    def point_sample(input, points, align_corners=False):
        return original_sample(input.to(points.dtype), points, align_corners)

    def choose(*args, **kwargs):
        pts = original_choose(*args, **kwargs)
        chosen.append(pts.detach().clone())
        return pts

    L.point_sample = point_sample
    L.get_uncertain_point_coords_with_randomness = choose
    try:
        yield
    finally:
        L.point_sample = original_sample
        L.get_uncertain_point_coords_with_randomness = original_choose


def _counts(num_points, oversample, importance):
    s = int(num_points * oversample)
    u = int(importance * num_points)
    return s, u, num_points - u


def _positive_rows(mask_preds, seg, num_classes):
    """[N, h, w] mask logits of the positive queries, in (image, query) order (identity assignment)."""
    B, Q = mask_preds.shape[:2]
    matched = (Q // num_classes) * num_classes
    rows = []
    for b in range(B):
        present = set(int(v) for v in torch.unique(seg[b]).tolist() if v != IGNORE)
        rows += [mask_preds[b, q] for q in range(matched) if q % num_classes in present]
    return torch.stack(rows) if rows else mask_preds.new_zeros((0,) + mask_preds.shape[2:])


def _separate(gen, mask_preds, seg, num_classes, candidates, u):
    """Redraws candidate rows whose ranking of |logit| is ambiguous near or inside the chosen set."""
    if u == 0:
        return
    preds = _positive_rows(mask_preds.double(), seg, num_classes)
    for n in range(preds.shape[0]):
        for _ in range(100):
            v = L.point_sample(preds[n][None, None], candidates[n][None].double())[0, 0].abs()
            s, _ = torch.sort(v)
            top = s[: min(u + 1, s.numel())]
            gaps = top[1:] - top[:-1]
            if gaps.numel() == 0 or bool((gaps > 1e-12 * top[1:].clamp(min=1.0)).all()):
                break
            candidates[n] = torch.rand(candidates[n].shape, generator=gen)
        else:
            raise RuntimeError("mask_loss_golden: could not separate the candidates of row %d" % n)


def _case(out, gen, name, cls_scores, mask_preds, seg, class_weight, num_points=20, oversample=3.0,
          importance=0.75, weights=(2.0, 5.0, 5.0), eps=1.0):
    B, Q = cls_scores.shape[:2]
    K = cls_scores.shape[2] - 1
    S, U, R = _counts(num_points, oversample, importance)
    candidates = torch.rand(B * Q, S, 2, generator=gen)
    randoms = torch.rand(B * Q, R, 2, generator=gen)
    _separate(gen, mask_preds, seg, K, candidates, U)
    grad_out = torch.randn(3, generator=gen)

    labels, masks = zip(*[L.semantic_to_targets(seg[b]) for b in range(B)])
    n = _positive_rows(mask_preds, seg, K).shape[0]
    w = [float(v) for v in class_weight]
    cfg = L.MaskLossConfig(K, Q, w, L.CrossEntropyLoss(use_sigmoid=False, class_weight=w, loss_weight=weights[0]),
                           L.CrossEntropyLoss(use_sigmoid=True, loss_weight=weights[1]),
                           L.DiceLoss(naive_dice=True, eps=eps, loss_weight=weights[2]), num_points=num_points,
                           oversample_ratio=oversample, importance_sample_ratio=importance)
    replay = [torch.zeros(1, num_points, 2, dtype=torch.float64) for _ in range(B)]
    if n > 0:
        replay.append(candidates[:n].double())
        if R > 0:
            replay.append(randoms[:n].double())
    rand = L.PointRandomness(replay=replay)
    c = cls_scores.double().requires_grad_()
    m = mask_preds.double().requires_grad_()
    chosen = []
    with _oracle_patches(chosen):
        lc, lm, ld = L.layer_loss(c, m, list(labels), list(masks), cfg, rand)
    assert rand.replay == [], "mask_loss_golden: not every replayed draw was used"
    losses = torch.stack([lc.reshape(()), lm.reshape(()), ld.reshape(())])
    (losses * grad_out.double()).sum().backward()

    p = f"{name}."
    out[p + "cls_scores"] = cls_scores
    out[p + "mask_preds"] = mask_preds
    out[p + "gt_seg"] = seg
    out[p + "candidates"] = candidates
    out[p + "randoms"] = randoms
    out[p + "config"] = torch.tensor([K, num_points, oversample, importance, *weights, eps], dtype=torch.float32)
    out[p + "class_weight"] = torch.tensor(w, dtype=torch.float32)
    out[p + "losses"] = losses.detach().float()
    out[p + "points"] = (chosen[0].float() if chosen else torch.zeros(0, num_points, 2))
    out[p + "grad_out"] = grad_out
    out[p + "grad_cls_scores"] = c.grad.float()
    out[p + "grad_mask_preds"] = m.grad.float()


def _blocks(gen, B, H, W, cell, classes_per_image):
    """Label maps of random cell-sized blocks, image b drawing from classes_per_image[b]."""
    seg = torch.empty(B, H, W, dtype=torch.int64)
    gh, gw = (H + cell - 1) // cell, (W + cell - 1) // cell
    for b, classes in enumerate(classes_per_image):
        pick = torch.randint(0, len(classes), (gh, gw), generator=gen)
        coarse = torch.tensor(classes, dtype=torch.int64)[pick]
        seg[b] = coarse.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:H, :W]
    return seg


def golden(gen: torch.Generator) -> dict:
    """Tiny cases (K = 3): classes missing from an image, an ignored region, a fully ignored image, query copies
    (Q = 2K), queries beyond the last multiple of K, all points uncertain (R = 0) or all random (U = 0), loss
    weights and eps other than the config's, and a batch with no positive at all; then the real shapes (B = 2,
    Q = K = 19, 128x128 logits, 512x512 labels, 12544 points, the MFuser config)."""
    out = {}
    randn = lambda *s: torch.randn(*s, generator=gen) * 3  # noqa: E731
    tiny_w = torch.tensor([1.0, 0.5, 2.0, 0.1])

    # classes {0, 2} in image 0, {1} in image 1, with an ignored block in image 1 and ignored cells in image 0
    seg = _blocks(gen, 2, 9, 11, 2, [[0, 2, IGNORE], [1]])
    seg[1, :4, :5] = IGNORE
    _case(out, gen, "tiny.basic", randn(2, 3, 4), randn(2, 3, 5, 6), seg, tiny_w)

    # Q = 2K: queries c and c + 3 share class c; image 1 entirely ignored
    seg = _blocks(gen, 2, 8, 8, 3, [[0, 1, 2], [0]])
    seg[1] = IGNORE
    _case(out, gen, "tiny.copies", randn(2, 6, 4), randn(2, 6, 4, 4), seg, tiny_w, num_points=10, oversample=2.5,
          weights=(1.5, 3.0, 7.0), eps=0.5)

    # Q = 5 > K = 3: queries 3 and 4 are never positive; every point uncertain (R = 0)
    seg = _blocks(gen, 1, 7, 6, 2, [[0, 1, 2]])
    _case(out, gen, "tiny.partial_uncertain", randn(1, 5, 4), randn(1, 5, 3, 4), seg, tiny_w, num_points=8,
          importance=1.0)

    # no uncertain point (U = 0): all random points
    seg = _blocks(gen, 2, 6, 6, 2, [[2], [0, 1]])
    _case(out, gen, "tiny.random_only", randn(2, 3, 4), randn(2, 3, 4, 5), seg, tiny_w, num_points=12,
          oversample=1.0, importance=0.0)

    # nothing present: only the classification loss
    seg = torch.full((2, 5, 7), IGNORE, dtype=torch.int64)
    _case(out, gen, "tiny.no_positive", randn(2, 3, 4), randn(2, 3, 4, 4), seg, tiny_w)

    # real shapes: 12 of the 19 classes per image in 32-pixel blocks, an ignored band and ignored blocks
    subsets = [sorted(torch.randperm(19, generator=gen)[:12].tolist()) + [IGNORE] for _ in range(2)]
    seg = _blocks(gen, 2, 512, 512, 32, subsets)
    seg[:, 400:440, :] = IGNORE
    _case(out, gen, "real", randn(2, 19, 20), randn(2, 19, 128, 128), seg, torch.tensor([1.0] * 19 + [0.1]),
          num_points=12544)
    return out
