"""PyTorch golden data for kernels/activation (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# The activations as PyTorch (and the official model) computes them; evaluated in f64 here.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "softplus": lambda x: F.softplus(x, beta=1, threshold=20),
}

# Values where a careless formula overflows, cancels, or mishandles the softplus threshold, plus inf/NaN.
EDGE_VALUES = [0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 1.0, -1.0, 5.0, -5.0, 9.0, -9.0, 15.0, -15.0, 19.99,
               20.0, 20.01, -20.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 3e38, -3e38,
               float("inf"), float("-inf"), float("nan")]


def golden(gen: torch.Generator) -> dict:
    """Every activation on a tiny random tensor and on the edge values; gelu at the DINOv2 MLP's real size
    2050 x 4096 (input stored as f16 to keep the file small; exact in f32)."""
    tiny = torch.randn(3, 5, 67, generator=gen) * 4
    edge = torch.tensor(EDGE_VALUES)
    out = {"tiny.x": tiny, "edge.x": edge}
    for name, fn in ACTIVATIONS.items():
        out[f"tiny.{name}"] = fn(tiny.double()).float()
        out[f"edge.{name}"] = fn(edge.double()).float()
    real = (torch.randn(2050, 4096, generator=gen) * 2).half()
    out["real.x"] = real
    out["real.gelu"] = F.gelu(real.double()).float()
    return out
