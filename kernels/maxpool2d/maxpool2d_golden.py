"""PyTorch golden data for kernels/maxpool2d (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# (case, shape, kernel, stride): the test holds the same table.
CASES = [("tiny", (2, 3, 5, 7), 2, 2),          # odd sizes: the last row and column are dropped
         ("tiny_k3s2", (1, 2, 9, 8), 3, 2),     # overlapping windows
         ("real", (1, 2048, 32, 32), 2, 2)]     # FPN level 4


def golden(gen: torch.Generator) -> dict:
    """Per case: x and F.max_pool2d(x) (exact: a max selects one of the inputs)."""
    out = {}
    for name, shape, kernel, stride in CASES:
        x = torch.randn(shape, generator=gen)
        out.update({f"{name}.x": x, f"{name}.out": F.max_pool2d(x.double(), kernel, stride).float()})
    return out
