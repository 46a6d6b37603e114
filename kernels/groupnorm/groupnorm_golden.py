"""PyTorch golden data for kernels/groupnorm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# (case, shape, num_groups): the test holds the same table. eps is 1e-5 throughout (the model's GroupNorm).
CASES = [("tiny", (2, 6, 3, 5), 3),
         ("tiny_1d", (3, 4, 7), 4),             # one channel per group, a single spatial dim
         ("real", (1, 256, 128, 128), 32),      # pixel decoder FPN lateral level (128x128)
         ("real_32_b2", (2, 256, 32, 32), 32)]  # its 32x32 level, batch 2 (parameter gradients sum images)
# Cases that also get backward data (grad_out, grad_x, grad_weight, grad_bias): all but the 128x128 level,
# which would take the file over 60 MB.
BACKWARD = {"tiny", "tiny_1d", "real_32_b2"}
EPS = 1e-5


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight, bias and F.group_norm's output computed in float64 (stored f32); for the BACKWARD
    cases a random grad_out and autograd's gradients, also in float64."""
    out = {}
    for name, shape, groups in CASES:
        c = shape[1]
        x = torch.randn(shape, generator=gen) * 3 + 1
        weight = 1 + 0.5 * torch.randn(c, generator=gen)
        bias = 0.5 * torch.randn(c, generator=gen)
        inputs = [t.double().requires_grad_(name in BACKWARD) for t in (x, weight, bias)]
        ref = F.group_norm(inputs[0], groups, inputs[1], inputs[2], EPS)
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.bias": bias,
                    f"{name}.out": ref.detach().float()})
        if name in BACKWARD:
            grad_out = torch.randn(shape, generator=gen)
            grads = torch.autograd.grad(ref, inputs, grad_out.double())
            out[f"{name}.grad_out"] = grad_out
            out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "weight", "bias"), grads)})
    return out
