"""PyTorch golden data for kernels/dwconv1d (see tools/reference/op_golden.py)."""
import warnings

import torch
import torch.nn.functional as F

# (case, B, L, C, K, bias): the test reads everything off the file. x is tokens-major [B, L, C].
CASES = [("tiny", 2, 9, 5, 3, True),
         ("tiny_even", 1, 6, 3, 4, False),     # even K: 1 zero on the left, 2 on the right
         ("tiny_short", 1, 2, 4, 5, True),      # L < K: every output sees padding on both sides
         ("backbone", 1, 2050, 512, 3, False),  # MVFuser in the ViT-L adapters (2 x 1025 tokens, d/2 = 512)
         ("enhancer", 1, 1063, 128, 3, False)]  # MVFuser in the MTEnhancer (19 + 1025 + 19 tokens, d/2 = 128)


def golden(gen: torch.Generator) -> dict:
    """Per case: x [B, L, C], weight [C, 1, K], bias when used, and F.conv1d(padding='same', groups=C) in
    float64 on the channels-major transpose, transposed back (stored f32); for the backward a random grad_out
    and autograd's grad_x, grad_weight, grad_bias (when used), also in float64."""
    out = {}
    for name, b, length, c, k, has_bias in CASES:
        x = torch.randn(b, length, c, generator=gen)
        weight = torch.randn(c, 1, k, generator=gen) / k ** 0.5
        bias = torch.randn(c, generator=gen) if has_bias else None
        inputs = [t.double().requires_grad_() for t in ((x, weight, bias) if has_bias else (x, weight))]
        with warnings.catch_warnings():  # even K: PyTorch warns that it pads a copy
            warnings.simplefilter("ignore")
            ref = F.conv1d(inputs[0].transpose(1, 2), *inputs[1:], padding="same", groups=c).transpose(1, 2)
        grad_out = torch.randn(ref.shape, generator=gen)
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.out": ref.detach().float(),
                    f"{name}.grad_out": grad_out})
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "weight", "bias"), grads)})
        if has_bias:
            out[f"{name}.bias"] = bias
    return out
