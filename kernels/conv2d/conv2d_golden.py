"""PyTorch golden data for kernels/conv2d (see tools/reference/op_golden.py)."""
import math

import torch
import torch.nn.functional as F

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


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight (scaled by 1/sqrt(fan-in)), bias when used, and F.conv2d in float64 (stored f32)."""
    out = {}
    for name, n, i, h, w, o, kh, kw, stride, padding, has_bias in CASES:
        x = torch.randn(n, i, h, w, generator=gen)
        weight = torch.randn(o, i, kh, kw, generator=gen) / math.sqrt(i * kh * kw)
        bias = torch.randn(o, generator=gen) if has_bias else None
        ref = F.conv2d(x.double(), weight.double(), bias.double() if has_bias else None, stride, padding)
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.out": ref.float()})
        if has_bias:
            out[f"{name}.bias"] = bias
    return out
