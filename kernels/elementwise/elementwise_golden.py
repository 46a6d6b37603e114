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


def _binary_case(out: dict, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    out[f"{name}.a"], out[f"{name}.b"] = a, b
    out[f"{name}.add"] = torch.add(a.double(), b.double()).float()
    out[f"{name}.mul"] = torch.mul(a.double(), b.double()).float()


def golden(gen: torch.Generator) -> dict:
    """Tiny add/mul over each broadcast pattern, scale with and without bias, and a real-size residual-style
    case [2, 1025, 1024] with a [1024] vector (inputs stored as f16 to keep the file small; exact in f32)."""
    out = {}
    for name, shape in TINY_B_SHAPES.items():
        _binary_case(out, f"tiny.{name}", torch.randn(4, 5, 6, generator=gen),
                     torch.randn(shape, generator=gen))
    _binary_case(out, "real.bias", torch.randn(2, 1025, 1024, generator=gen).half(),
                 torch.randn(1024, generator=gen).half())

    x = torch.randn(3, 7, 33, generator=gen) * 10
    out["scale.x"] = x
    for name, factor, bias in (("plain", 0.125, 0.0), ("affine", -1.7, 0.3)):
        out[f"scale.{name}.factor"] = torch.tensor(factor)
        out[f"scale.{name}.bias"] = torch.tensor(bias)
        out[f"scale.{name}.out"] = (x.double() * factor + bias).float()
    return out
