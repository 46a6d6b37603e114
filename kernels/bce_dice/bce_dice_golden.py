"""PyTorch golden data for kernels/bce_dice (see tools/reference/op_golden.py).

Oracle: the loss_mask / loss_dice modules of tools/reference/mfuser_ref/losses.py (CrossEntropyLoss with
use_sigmoid=True, DiceLoss(naive_dice=True, eps=1)) with layer_loss's avg_factors N*P and N, in f64."""
import torch

from mfuser_ref.losses import CrossEntropyLoss, DiceLoss


def _bce(x, t):
    n, p = x.shape
    return CrossEntropyLoss(use_sigmoid=True)(x.reshape(-1, 1), t.reshape(-1), avg_factor=n * p)


def _dice(x, t):
    return DiceLoss(naive_dice=True, eps=1.0)(x, t, avg_factor=x.shape[0])


def _case(out, gen, name, x, t):
    """`<name>.{bce,dice}.loss` and autograd's `<name>.{bce,dice}.grad_x` for random upstream
    `<name>.{bce,dice}.grad_out`."""
    out[f"{name}.x"] = x
    out[f"{name}.t"] = t
    for kind, fn in (("bce", _bce), ("dice", _dice)):
        xd = x.double().requires_grad_()
        loss = fn(xd, t.double())
        grad_out = torch.randn((), generator=gen)
        loss.backward(grad_out.double())
        out[f"{name}.{kind}.loss"] = loss.detach().float().reshape(())
        out[f"{name}.{kind}.grad_out"] = grad_out
        out[f"{name}.{kind}.grad_x"] = xd.grad.float()


def golden(gen: torch.Generator) -> dict:
    """Tiny: binary targets, soft targets in [0, 1], huge logits (sigmoid saturates), a single point;
    real: 19 positive queries x 12544 points (binary targets, as the sampled ground truth mostly is, with
    some fractional border values)."""
    out = {}
    randn = lambda *s: torch.randn(*s, generator=gen) * 3  # noqa: E731
    binary = lambda *s: (torch.rand(*s, generator=gen) < 0.4).float()  # noqa: E731
    _case(out, gen, "tiny.binary", randn(3, 7), binary(3, 7))
    _case(out, gen, "tiny.soft", randn(4, 5), torch.rand(4, 5, generator=gen))
    _case(out, gen, "tiny.large_logits", randn(2, 6) * 100, binary(2, 6))
    _case(out, gen, "tiny.one_point", randn(1, 1), binary(1, 1))
    t = binary(19, 12544)
    border = torch.rand(19, 12544, generator=gen) < 0.05
    t[border] = torch.rand(int(border.sum()), generator=gen)
    _case(out, gen, "real.points", randn(19, 12544), t)
    return out
