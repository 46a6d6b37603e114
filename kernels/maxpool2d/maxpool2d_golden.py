"""PyTorch golden data for kernels/maxpool2d (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# (case, shape, kernel, stride): the test holds the same table.
CASES = [("tiny", (2, 3, 5, 7), 2, 2),          # odd sizes: the last row and column are dropped
         ("tiny_k3s2", (1, 2, 9, 8), 3, 2),     # overlapping windows
         ("real", (1, 2048, 32, 32), 2, 2),     # FPN level 4
         ("tiny_ties", (2, 2, 9, 8), 3, 2)]     # values in {-1, 0, 1}: ties everywhere, overlapping windows


def golden(gen: torch.Generator) -> dict:
    """Per case: x and F.max_pool2d(x) (exact: a max selects one of the inputs); for the backward a random
    grad_out and autograd's grad_x in float64 (PyTorch routes each window's gradient to its first maximum)."""
    out = {}
    for name, shape, kernel, stride in CASES:
        x = torch.randn(shape, generator=gen)
        if name == "tiny_ties":
            x = x.round().clamp(-1, 1)
        xd = x.double().requires_grad_()
        ref = F.max_pool2d(xd, kernel, stride)
        grad_out = torch.randn(ref.shape, generator=gen)
        (grad_x,) = torch.autograd.grad(ref, xd, grad_out.double())
        out.update({f"{name}.x": x, f"{name}.out": ref.detach().float(), f"{name}.grad_out": grad_out,
                    f"{name}.grad_x": grad_x.float()})
    return out
