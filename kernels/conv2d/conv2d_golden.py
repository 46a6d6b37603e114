"""PyTorch golden data for kernels/conv2d (see tools/reference/op_golden.py)."""
import math

import torch
import torch.nn.functional as F
from counter_random import counter_uniform

# (case, N, I, H, W, O, KH, KW, stride, padding, bias): the test holds the same table.
CASES = [
    ("tiny", 2, 3, 7, 9, 4, 3, 3, 1, 1, True),
    ("tiny_strided", 1, 5, 11, 10, 6, 3, 2, 2, 0, False),   # rectangular kernel, stride 2
    ("tiny_pad", 2, 2, 5, 4, 3, 2, 2, 3, 2, True),          # padding wider than the kernel reach
    ("tiny_1x1", 2, 8, 5, 6, 7, 1, 1, 1, 0, True),          # the direct (no im2col) path with a batch
    ("patch", 1, 3, 512, 512, 1024, 16, 16, 16, 0, True),   # ViT-L patch embedding of a 512 crop
    # Pixel decoder input_conv of level 3 (16x16); the 64x64 level would push the file past 60 MB.
    ("pointwise", 1, 2048, 16, 16, 256, 1, 1, 1, 0, True),
    ("conv3x3", 1, 256, 128, 128, 256, 3, 3, 1, 1, False),  # FPN output conv at 128x128
]
# Backward data for every case: autograd's grad_weight, grad_bias (when used) and grad_x in float64 (stored f32)
# for an upstream gradient that is random for the tiny cases ("<case>.grad_out") and, for the real ones,
# counter_uniform(out shape, salt) recomputed by the test (nothing stored). grad_x is stored as rows
# [N * I, H * W], for the real cases only the first GRAD_X_ROWS of them (input channel 0 of image 0, every pixel
# and band; the tiny cases cover the mixing of channels): the file stays under 60 MB, and the 128x128 grad_x
# alone would be 16 MB.
COUNTER_SALT = {"patch": 1, "pointwise": 2, "conv3x3": 3}
GRAD_X_ROWS = 1


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight (scaled by 1/sqrt(fan-in)), bias when used, and F.conv2d in float64 (stored f32),
    and the backward data described above."""
    out = {}
    for name, n, i, h, w, o, kh, kw, stride, padding, has_bias in CASES:
        x = torch.randn(n, i, h, w, generator=gen)
        weight = torch.randn(o, i, kh, kw, generator=gen) / math.sqrt(i * kh * kw)
        bias = torch.randn(o, generator=gen) if has_bias else None
        inputs = [t.double().requires_grad_() for t in ((x, weight, bias) if has_bias else (x, weight))]
        ref = F.conv2d(*inputs, stride=stride, padding=padding)
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.out": ref.detach().float()})
        if has_bias:
            out[f"{name}.bias"] = bias
        if name in COUNTER_SALT:
            grad_out = counter_uniform(ref.shape, COUNTER_SALT[name])
        else:
            grad_out = torch.randn(ref.shape, generator=gen)
            out[f"{name}.grad_out"] = grad_out
        grads = torch.autograd.grad(ref, inputs, grad_out.double())
        grad_x = grads[0].reshape(n * i, h * w)
        out[f"{name}.grad_x"] = (grad_x[:GRAD_X_ROWS] if name in COUNTER_SALT else grad_x).float().clone()
        out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip(("weight", "bias"), grads[1:])})
    return out
