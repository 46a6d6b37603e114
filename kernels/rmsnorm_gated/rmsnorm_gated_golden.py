"""PyTorch golden data for kernels/rmsnorm_gated (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# MVFuser's norm runs over d_inner/2 channels: 512 in the backbone adapters (2 x 1025 tokens), 128 in the
# context decoder's MTEnhancer (19 + 1025 + 19 tokens). eps 1e-5 throughout.
CASES = [("tiny", (2, 3, 8)),
         ("tiny_rows", (7, 5)),
         ("backbone", (1, 2050, 512)),
         ("enhancer", (1, 1063, 128))]
EPS = 1e-5


def golden(gen: torch.Generator) -> dict:
    """Per case: x, z, weight and x * rsqrt(mean(x^2) + eps) * weight * silu(z) in float64 (stored f32); for the
    backward a random grad_out and autograd's grad_x, grad_z, grad_weight, also in float64."""
    out = {}
    for name, shape in CASES:
        d = shape[-1]
        x = torch.randn(shape, generator=gen) * 2
        z = torch.randn(shape, generator=gen) * 3
        weight = 1 + 0.5 * torch.randn(d, generator=gen)
        grad_out = torch.randn(shape, generator=gen)
        xd, zd, wd = (t.double().requires_grad_() for t in (x, z, weight))
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + EPS) * wd * F.silu(zd)
        grads = torch.autograd.grad(ref, (xd, zd, wd), grad_out.double())
        out.update({f"{name}.x": x, f"{name}.z": z, f"{name}.weight": weight, f"{name}.out": ref.detach().float(),
                    f"{name}.grad_out": grad_out})
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "z", "weight"), grads)})
    return out
