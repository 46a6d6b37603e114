"""PyTorch golden data for kernels/cross_entropy (see tools/reference/op_golden.py).

Oracle: F.cross_entropy in f64, as the training losses use it (tools/reference/mfuser_ref/losses.py
CrossEntropyLoss/layer_loss for loss_cls, model.py IdentityHead.losses for the score-map loss)."""
import torch
import torch.nn.functional as F

from counter_random import counter_uniform

IGNORE = 255


def _loss(x, target, weight, reduction):
    """weighted_mean: PyTorch's weighted 'mean'; mean_all: mmseg avg_non_ignore=False (ignored count)."""
    w = None if weight is None else weight.double()
    if reduction == "weighted_mean":
        return F.cross_entropy(x, target, weight=w, ignore_index=IGNORE, reduction="mean")
    return F.cross_entropy(x, target, weight=w, ignore_index=IGNORE, reduction="none").mean()


def _case(out, gen, name, x, target, weight, reduction, store_x=True):
    """`<name>.loss` and, for a random upstream `<name>.grad_out`, autograd's `<name>.grad_x` (f64)."""
    if store_x:
        out[f"{name}.x"] = x
    out[f"{name}.target"] = target
    if weight is not None:
        out[f"{name}.weight"] = weight
    xd = x.double().requires_grad_()
    loss = _loss(xd, target, weight, reduction)
    grad_out = torch.randn((), generator=gen)
    loss.backward(grad_out.double())
    out[f"{name}.loss"] = loss.detach().float()
    out[f"{name}.grad_out"] = grad_out
    out[f"{name}.grad_x"] = xd.grad.float()


def _targets(gen, shape, classes, ignore_fraction):
    t = torch.randint(0, classes, shape, generator=gen)
    t[torch.rand(shape, generator=gen) < ignore_fraction] = IGNORE
    return t


def _query_labels(gen, images, classes):
    """layer_loss's labels under identity assignment: query q gets class q when present in the image,
    else `classes` (no object)."""
    present = torch.rand(images, classes, generator=gen) < 0.5
    q = torch.arange(classes).expand(images, classes)
    return torch.where(present, q, torch.full_like(q, classes)).reshape(-1)


def golden(gen: torch.Generator) -> dict:
    """Tiny cases of each reduction (weights, ignored positions, huge logits) and the real sizes: the
    Mask2Former loss_cls (2 images x 19 queries x 20 classes, no-object weight 0.1) and the auxiliary
    score-map loss (2 x 19 x 512 x 512, ~10% ignored pixels). The real map's logits are not stored: they
    are 4 * counter_uniform([2, 19, 512, 512], salt 1), recomputed by the test."""
    out = {}
    randn = lambda *s: torch.randn(*s, generator=gen) * 3  # noqa: E731
    cls_weight = torch.tensor([1.0] * 4 + [0.1])
    _case(out, gen, "tiny.cls", randn(12, 5), _query_labels(gen, 3, 4), cls_weight, "weighted_mean")
    _case(out, gen, "tiny.weighted_ignore", randn(2, 5, 3, 4), _targets(gen, (2, 3, 4), 5, 0.3),
          torch.rand(5, generator=gen) + 0.5, "weighted_mean")
    _case(out, gen, "tiny.map", randn(2, 5, 3, 4), _targets(gen, (2, 3, 4), 5, 0.3), None, "mean_all")
    _case(out, gen, "tiny.map_weighted", randn(2, 5, 3, 4), _targets(gen, (2, 3, 4), 5, 0.3),
          torch.rand(5, generator=gen) + 0.5, "mean_all")
    _case(out, gen, "tiny.large_logits", randn(6, 7) * 1000, _targets(gen, (6,), 7, 0.0), None,
          "weighted_mean")
    _case(out, gen, "real.cls", randn(38, 20), _query_labels(gen, 2, 19), torch.tensor([1.0] * 19 + [0.1]),
          "weighted_mean")
    _case(out, gen, "real.map", counter_uniform((2, 19, 512, 512), 1) * 4, _targets(gen, (2, 512, 512), 19, 0.1),
          None, "mean_all", store_x=False)
    return out
