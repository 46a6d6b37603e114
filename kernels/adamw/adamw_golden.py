"""PyTorch golden data for kernels/adamw (see tools/reference/op_golden.py).

AdamW: torch.optim.AdamW (foreach=False, amsgrad=False, maximize=False) run for several steps on random f32
tensors, the lr changed before each step. Doubles (lrs, hyperparameters, schedule values) are stored as the
int64 bit patterns of float64 tensors, so the C++ test reads them exactly (the runtime has no f64 dtype).

Poly schedule: mmcv 1.x PolyLrUpdaterHook with linear warmup, written out again here from its definition (not
from the C++), at the iterations the test checks.
"""
import torch

# (case, shape, grad scale, weight_decay, lrs of the successive steps)
CASES = [
    ("small_wd0", (7,), 1.0, 0.0, [1e-3, 5e-4, 2e-3, 1e-4, 3e-4]),
    ("rows_wd1e-4", (33, 65), 1.0, 1e-4, [1e-3, 2e-3, 5e-4, 1e-3, 1e-4, 4e-4]),
    # Gradients near eps: sqrt(v) ~ 1e-6, so eps = 1e-8 moves the update by ~1%.
    ("tiny_grad_wd0", (129,), 1e-6, 0.0, [1e-3, 1e-3, 5e-4, 2e-4]),
    # MFuser's own steps: lrs from the schedule around the end of warmup (lr * wd <= 1e-8 rounds the f32 decay
    # factor to exactly 1).
    ("mfuser_wd1e-4", (4, 1024), 1e-2, 1e-4, None),
    # A decay large enough to matter in every bit of the update.
    ("strong_decay", (257,), 1.0, 1e-2, [1e-2, 5e-3, 2e-2]),
]
BETAS = (0.9, 0.999)
EPS = 1e-8

# The schedule (MFuser configs/_base_/schedules/schedule_20k.py, optimizer lr 1e-4).
SCHEDULE = dict(base_lr=1e-4, min_lr=1e-6, power=0.9, max_iters=20000, warmup_iters=1500, warmup_ratio=1e-6)
SCHEDULE_ITERS = [0, 1, 2, 750, 1499, 1500, 1501, 10000, 19999, 20000]


def poly_with_linear_warmup(it: int, base_lr, min_lr, power, max_iters, warmup_iters, warmup_ratio) -> float:
    """The lr mmcv sets before iteration `it` (by_epoch=False)."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it >= warmup_iters:
        return regular
    k = (1 - it / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


def f64_bits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(torch.int64)


def adamw_case(gen: torch.Generator, name, shape, grad_scale, weight_decay, lrs) -> dict:
    param = torch.randn(shape, generator=gen)
    grads = torch.randn((len(lrs),) + shape, generator=gen) * grad_scale
    p = param.clone().requires_grad_()
    opt = torch.optim.AdamW([p], lr=lrs[0], betas=BETAS, eps=EPS, weight_decay=weight_decay, amsgrad=False,
                            maximize=False, foreach=False)
    after = {"param": [], "exp_avg": [], "exp_avg_sq": []}
    for lr, g in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
        state = opt.state[p]
        after["param"].append(p.detach().clone())
        after["exp_avg"].append(state["exp_avg"].clone())
        after["exp_avg_sq"].append(state["exp_avg_sq"].clone())
    out = {f"{name}.param0": param, f"{name}.grad": grads, f"{name}.lr": f64_bits(lrs),
           f"{name}.hyper": f64_bits([weight_decay, BETAS[0], BETAS[1], EPS])}
    out.update({f"{name}.{k}": torch.stack(v) for k, v in after.items()})
    return out


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, shape, grad_scale, weight_decay, lrs in CASES:
        if lrs is None:
            lrs = [poly_with_linear_warmup(it, **SCHEDULE) for it in (1498, 1499, 1500, 1501, 1502)]
        out.update(adamw_case(gen, name, shape, grad_scale, weight_decay, lrs))
    out["poly.iters"] = torch.tensor(SCHEDULE_ITERS, dtype=torch.int64)
    out["poly.lr"] = f64_bits([poly_with_linear_warmup(it, **SCHEDULE) for it in SCHEDULE_ITERS])
    return out
