"""PyTorch golden data for kernels/l2norm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F


def _case(out: dict, gen: torch.Generator, name: str, x: torch.Tensor, dim: int, eps: float = 1e-12) -> None:
    """Forward `<name>.out`; backward `<name>.grad_x`, PyTorch's f64 autograd for a random `<name>.grad_out`."""
    out[f"{name}.x"] = x
    out[f"{name}.dim"] = torch.tensor(dim, dtype=torch.int64)
    out[f"{name}.eps"] = torch.tensor(eps, dtype=torch.float32)
    dx = x.double().requires_grad_()
    result = F.normalize(dx, p=2.0, dim=dim, eps=eps)
    out[f"{name}.out"] = result.detach().float()
    grad_out = out[f"{name}.grad_out"] = torch.randn(x.shape, generator=gen)
    result.backward(grad_out.double())
    out[f"{name}.grad_x"] = dx.grad.float()


def golden(gen: torch.Generator) -> dict:
    """A tiny tensor normalized over each dim, with an all-zero vector and one below eps; a custom eps; the
    score map's real sizes (visual embedding [2, 768, 32, 32] over channels, text [2, 19, 768] over -1)."""
    out = {}
    tiny = torch.randn(3, 4, 5, generator=gen)
    tiny[0, 0, :] = 0                                            # zero vector: stays zero
    tiny[1, 2, :] = torch.randn(5, generator=gen) * 1e-14        # norm below eps: divided by eps
    tiny[2, 1, :] = torch.randn(5, generator=gen) * 1e-11        # tiny norm above eps: through the norm
    for dim in (-1, 1, 0):
        _case(out, gen, f"tiny.dim{dim}", tiny, dim)
    _case(out, gen, "tiny.eps", tiny, -1, eps=0.5)
    _case(out, gen, "real.visual", torch.randn(2, 768, 32, 32, generator=gen), 1)
    _case(out, gen, "real.text", torch.randn(2, 19, 768, generator=gen), -1)
    return out
