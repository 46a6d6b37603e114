"""PyTorch golden data for kernels/l2norm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F


def _case(out: dict, name: str, x: torch.Tensor, dim: int, eps: float = 1e-12) -> None:
    out[f"{name}.x"] = x
    out[f"{name}.dim"] = torch.tensor(dim, dtype=torch.int64)
    out[f"{name}.eps"] = torch.tensor(eps, dtype=torch.float32)
    out[f"{name}.out"] = F.normalize(x.double(), p=2.0, dim=dim, eps=eps).float()


def golden(gen: torch.Generator) -> dict:
    """A tiny tensor normalized over each dim, with an all-zero vector and one below eps; a custom eps; the
    score map's real sizes (visual embedding [2, 768, 32, 32] over channels, text [2, 19, 768] over -1)."""
    out = {}
    tiny = torch.randn(3, 4, 5, generator=gen)
    tiny[0, 0, :] = 0                                            # zero vector: stays zero
    tiny[1, 2, :] = torch.randn(5, generator=gen) * 1e-14        # norm below eps: divided by eps
    for dim in (-1, 1, 0):
        _case(out, f"tiny.dim{dim}", tiny, dim)
    _case(out, "tiny.eps", tiny, -1, eps=0.5)
    _case(out, "real.visual", torch.randn(2, 768, 32, 32, generator=gen), 1)
    _case(out, "real.text", torch.randn(2, 19, 768, generator=gen), -1)
    return out
