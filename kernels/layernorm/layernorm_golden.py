"""PyTorch golden data for kernels/layernorm (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# (case, shape, eps): the test holds the same table.
CASES = [("tiny", (2, 3, 7), 1e-5),
         ("tiny_offset", (5, 33), 1e-6),       # rows with |mean| >> std: cancellation must not cost digits
         ("clip", (1, 1025, 1024), 1e-5),      # CLIP ViT-L tokens
         ("dino", (1, 1025, 1024), 1e-6)]      # DINOv2 ViT-L tokens


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight, bias and F.layer_norm's output computed in float64 (stored f32); for the backward a
    random grad_out and autograd's grad_x, grad_weight, grad_bias, also in float64."""
    out = {}
    for name, shape, eps in CASES:
        d = shape[-1]
        offset = 100.0 if name == "tiny_offset" else 0.5
        x = torch.randn(shape, generator=gen) * 2 + offset * torch.randn(shape[:-1] + (1,), generator=gen)
        weight = 1 + 0.5 * torch.randn(d, generator=gen)
        bias = 0.5 * torch.randn(d, generator=gen)
        grad_out = torch.randn(shape, generator=gen)
        inputs = [t.double().requires_grad_() for t in (x, weight, bias)]
        ref = F.layer_norm(inputs[0], (d,), inputs[1], inputs[2], eps)
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.bias": bias,
                    f"{name}.out": ref.detach().float(), f"{name}.grad_out": grad_out})
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "weight", "bias"), grads)})
    return out
