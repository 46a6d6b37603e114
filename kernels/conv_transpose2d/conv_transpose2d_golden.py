"""PyTorch golden data for kernels/conv_transpose2d (see tools/reference/op_golden.py)."""
import math

import torch
import torch.nn.functional as F

# (case, N, I, O, H, W, K, bias): the test holds the same table. stride = K.
# "real" has the FPN's 2048 -> 2048 channels at 16x16 instead of 32x32 and stores its weight in bf16 (values
# exactly representable, the reference uses the same values): the f32 weight alone is 64 MB, and the file must
# stay under 60 MB. The test loads the weight as f32.
#
# Backward data for every case: grad_out and autograd's grad_x, grad_weight, grad_bias (float64, stored f32).
# "real" stores only grad_weight[:REAL_GRAD_WEIGHT_ROWS] (input channels 0..63): the full 2048 x 2048 x 2 x 2
# f32 gradient alone is 64 MB; the test compares the same rows of its full result.
REAL_GRAD_WEIGHT_ROWS = 64
CASES = [("tiny", 2, 3, 5, 4, 3, 2, True),
         ("tiny_k3", 1, 4, 2, 3, 5, 3, False),
         ("real", 1, 2048, 2048, 16, 16, 2, True)]


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight (scaled by 1/sqrt(I)), bias when used, F.conv_transpose2d in float64 (stored f32),
    and the backward data described above."""
    out = {}
    for name, n, i, o, h, w, k, has_bias in CASES:
        x = torch.randn(n, i, h, w, generator=gen)
        weight = torch.randn(i, o, k, k, generator=gen) / math.sqrt(i)
        if name == "real":
            weight = weight.bfloat16()
        bias = torch.randn(o, generator=gen) if has_bias else None
        inputs = [t.double().requires_grad_() for t in ((x, weight, bias) if has_bias else (x, weight))]
        ref = F.conv_transpose2d(*inputs, stride=k)
        grad_out = torch.randn(ref.shape, generator=gen)
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.out": ref.detach().float(),
                    f"{name}.grad_out": grad_out})
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("x", "weight", "bias"), grads)})
        if name == "real":
            out[f"{name}.grad_weight"] = out[f"{name}.grad_weight"][:REAL_GRAD_WEIGHT_ROWS].clone()
        if has_bias:
            out[f"{name}.bias"] = bias
    return out
