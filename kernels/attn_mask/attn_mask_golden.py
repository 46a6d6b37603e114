"""PyTorch golden data for kernels/attn_mask (see tools/reference/op_golden.py)."""
import torch


def _mask(logits: torch.Tensor) -> torch.Tensor:
    """As the tqdm head: sigmoid < 0.5 is masked, then fully masked rows are unmasked."""
    m = logits.sigmoid() < 0.5
    m[torch.where(m.sum(-1) == m.shape[-1])] = False
    return m


def golden(gen: torch.Generator) -> dict:
    """Random logits with some rows all negative (unmasked back) and one all positive; the head's real
    sizes [2, 1, 19, h*w] at the three levels. Values within 1e-6 of 0 are pushed out of the band where
    f32 sigmoid implementations may round differently."""
    out = {}
    cases = {"tiny": (3, 4, 7), "real.16": (2, 1, 19, 256), "real.32": (2, 1, 19, 1024),
             "real.64": (2, 1, 19, 4096)}
    for name, shape in cases.items():
        x = torch.randn(shape, generator=gen) * 3
        x = torch.where(x.abs() < 1e-6, torch.full_like(x, 1e-3), x)
        x.view(-1, shape[-1])[1] = -x.view(-1, shape[-1])[1].abs()   # all masked: unmasked again
        x.view(-1, shape[-1])[2] = x.view(-1, shape[-1])[2].abs()    # nothing masked
        out[f"{name}.logits"] = x
        out[f"{name}.out"] = _mask(x)
    return out
