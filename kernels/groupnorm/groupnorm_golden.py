"""PyTorch golden data for kernels/groupnorm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# (case, shape, num_groups): the test holds the same table. eps is 1e-5 throughout (the model's GroupNorm).
CASES = [("tiny", (2, 6, 3, 5), 3),
         ("tiny_1d", (3, 4, 7), 4),             # one channel per group, a single spatial dim
         ("real", (1, 256, 128, 128), 32)]      # pixel decoder FPN lateral level (128x128)
EPS = 1e-5


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight, bias and F.group_norm's output computed in float64 (stored f32)."""
    out = {}
    for name, shape, groups in CASES:
        c = shape[1]
        x = torch.randn(shape, generator=gen) * 3 + 1
        weight = 1 + 0.5 * torch.randn(c, generator=gen)
        bias = 0.5 * torch.randn(c, generator=gen)
        ref = F.group_norm(x.double(), groups, weight.double(), bias.double(), EPS)
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.bias": bias, f"{name}.out": ref.float()})
    return out
