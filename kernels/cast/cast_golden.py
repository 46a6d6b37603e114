"""PyTorch golden data for kernels/cast (see tools/reference/op_golden.py)."""
import torch


def golden(gen: torch.Generator) -> dict:
    """f32 inputs (random over many magnitudes plus the edge cases: ties, subnormals, overflow, inf, NaN) and
    PyTorch's round-to-nearest-even conversions to bf16 and f16, and back."""
    n = 1 << 16
    mantissa = torch.rand(n, generator=gen) * 2 - 1
    exponent = torch.randint(-30, 30, (n,), generator=gen).float()
    x = mantissa * torch.pow(2.0, exponent)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e6, -1e6, 5.96e-8, 2.98e-8,
                            6.1e-5, 3.0e-5, 1e-40, float("inf"), float("-inf"), float("nan"),
                            1.00390625, 1.01171875,  # exact bf16 ties (round down / up to even)
                            1.00048828125, 1.00146484375, 3.4e38, -3.4e38])
    x = torch.cat([special, x])
    bf16 = x.to(torch.bfloat16)
    f16 = x.to(torch.float16)
    return {"x": x, "bf16": bf16, "f16": f16, "bf16_to_f32": bf16.float(), "f16_to_f32": f16.float(),
            "bf16_to_f16": bf16.to(torch.float16), "f16_to_bf16": f16.to(torch.bfloat16)}
