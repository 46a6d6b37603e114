"""PyTorch golden data for kernels/elementwise (see tools/reference/op_golden.py)."""
import torch

# Second-operand shapes broadcast onto a [4, 5, 6]: every pattern the broadcast indexing distinguishes.
TINY_B_SHAPES = {
    "same": (4, 5, 6),    # no broadcast
    "bias": (6,),         # trailing vector (Linear bias, LayerScale gamma)
    "column": (5, 1),     # broadcast along the last dim
    "middle": (4, 1, 6),  # broadcast in the middle
    "lead": (1, 5, 6),    # broadcast over the batch
    "scalar": (),         # 0-d
}


def _binary_case(out: dict, name: str, a: torch.Tensor, b: torch.Tensor, grad_out: torch.Tensor) -> None:
    """Forward results, and the f64 autograd gradients `<name>.<op>.grad_a` / `.grad_b` for the upstream
    `<name>.grad_out` (b's gradient summed over its broadcast dims by autograd)."""
    out[f"{name}.a"], out[f"{name}.b"], out[f"{name}.grad_out"] = a, b, grad_out
    for op, fn in (("add", torch.add), ("mul", torch.mul)):
        da, db = a.double().requires_grad_(), b.double().requires_grad_()
        result = fn(da, db)
        result.backward(grad_out.double())
        out[f"{name}.{op}"] = result.detach().float()
        out[f"{name}.{op}.grad_a"], out[f"{name}.{op}.grad_b"] = da.grad.float(), db.grad.float()


def golden(gen: torch.Generator) -> dict:
    """Tiny add/mul over each broadcast pattern, scale with and without bias, and a real-size residual-style
    case [2, 1025, 1024] with a [1024] vector (inputs stored as f16 to keep the file small; exact in f32).
    Backward: every case also stores an upstream gradient and PyTorch's f64 autograd gradients."""
    out = {}
    for name, shape in TINY_B_SHAPES.items():
        _binary_case(out, f"tiny.{name}", torch.randn(4, 5, 6, generator=gen),
                     torch.randn(shape, generator=gen), torch.randn(4, 5, 6, generator=gen))
    _binary_case(out, "real.bias", torch.randn(2, 1025, 1024, generator=gen).half(),
                 torch.randn(1024, generator=gen).half(), torch.randn(2, 1025, 1024, generator=gen).half())

    x = torch.randn(3, 7, 33, generator=gen) * 10
    out["scale.x"] = x
    for name, factor, bias in (("plain", 0.125, 0.0), ("affine", -1.7, 0.3)):
        out[f"scale.{name}.factor"] = torch.tensor(factor)
        out[f"scale.{name}.bias"] = torch.tensor(bias)
        out[f"scale.{name}.out"] = (x.double() * factor + bias).float()

    grad_out = torch.randn(x.shape, generator=gen)
    out["scale.grad_out"] = grad_out
    for name, factor, bias in (("plain", 0.125, 0.0), ("affine", -1.7, 0.3)):
        dx = x.double().requires_grad_()
        (dx * factor + bias).backward(grad_out.double())
        out[f"scale.{name}.grad_x"] = dx.grad.float()
    return out
