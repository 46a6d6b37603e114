"""PyTorch golden data for kernels/activation (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

from counter_random import counter_uniform

# The activations as PyTorch (and the official model) computes them; evaluated in f64 here.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "softplus": lambda x: F.softplus(x, beta=1, threshold=20),
    "exp": torch.exp,
}

# Row blocks stored of the real-size gradient: first, middle, last rows.
GRAD_BLOCK_ROWS = 128

# Values where a careless formula overflows, cancels, or mishandles the softplus threshold, plus inf/NaN.
EDGE_VALUES = [0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 1.0, -1.0, 5.0, -5.0, 9.0, -9.0, 15.0, -15.0, 19.99,
               20.0, 20.01, -20.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 3e38, -3e38,
               float("inf"), float("-inf"), float("nan")]


def _grad(fn, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """PyTorch autograd of fn at x for the upstream gradient grad_out, in f64."""
    x = x.double().requires_grad_()
    fn(x).backward(grad_out.double())
    return x.grad.float()


def golden(gen: torch.Generator) -> dict:
    """Every activation on a tiny random tensor and on the edge values; gelu at the DINOv2 MLP's real size
    2050 x 4096 (input stored as f16 to keep the file small; exact in f32).
    Backward: `<case>.grad_out` (random; ones on the edge values) and `<case>.grad_<name>`, PyTorch's f64
    autograd; at the real size gelu's gradient for counter_uniform(x's shape, salt 1) as upstream, stored in
    row blocks (`real.grad_gelu.blocks` / `.out`: the whole one would add 34 MB)."""
    tiny = torch.randn(3, 5, 67, generator=gen) * 4
    edge = torch.tensor(EDGE_VALUES)
    out = {"tiny.x": tiny, "edge.x": edge}
    for name, fn in ACTIVATIONS.items():
        out[f"tiny.{name}"] = fn(tiny.double()).float()
        out[f"edge.{name}"] = fn(edge.double()).float()
    real = (torch.randn(2050, 4096, generator=gen) * 2).half()
    out["real.x"] = real
    out["real.gelu"] = F.gelu(real.double()).float()

    out["tiny.grad_out"] = torch.randn(tiny.shape, generator=gen)
    out["edge.grad_out"] = torch.ones(edge.shape)
    for name, fn in ACTIVATIONS.items():
        for case in ("tiny", "edge"):
            out[f"{case}.grad_{name}"] = _grad(fn, out[f"{case}.x"], out[f"{case}.grad_out"])
    grad = _grad(F.gelu, real, counter_uniform(real.shape, 1))
    starts = [0, grad.shape[0] // 2 - GRAD_BLOCK_ROWS // 2, grad.shape[0] - GRAD_BLOCK_ROWS]
    out["real.grad_gelu.blocks"] = torch.tensor([[s, s + GRAD_BLOCK_ROWS] for s in starts], dtype=torch.int64)
    out["real.grad_gelu.out"] = torch.cat([grad[s:s + GRAD_BLOCK_ROWS] for s in starts])
    return out
