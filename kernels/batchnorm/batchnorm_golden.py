"""PyTorch golden data for kernels/batchnorm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# The FPN's BatchNorm2d(2048) runs on 64x64 maps; "real" keeps the 2048 channels at 32x32 so the file stays
# small (the kernel treats every spatial size alike). eps 1e-5 throughout.
CASES = [("tiny", (2, 5, 3, 4)),
         ("tiny_2d", (6, 3)),                  # no spatial dims (BatchNorm1d layout)
         ("real", (1, 2048, 32, 32))]
EPS = 1e-5


def golden(gen: torch.Generator) -> dict:
    """Per case: x, running statistics, weight, bias and F.batch_norm's eval output in float64 (stored f32)."""
    out = {}
    for name, shape in CASES:
        c = shape[1]
        x = torch.randn(shape, generator=gen) * 2 + 0.5
        mean = torch.randn(c, generator=gen)
        var = torch.rand(c, generator=gen) * 4 + 0.1
        weight = 1 + 0.5 * torch.randn(c, generator=gen)
        bias = 0.5 * torch.randn(c, generator=gen)
        ref = F.batch_norm(x.double(), mean.double(), var.double(), weight.double(), bias.double(),
                           training=False, eps=EPS)
        out.update({f"{name}.x": x, f"{name}.running_mean": mean, f"{name}.running_var": var,
                    f"{name}.weight": weight, f"{name}.bias": bias, f"{name}.out": ref.float()})
    return out
