"""PyTorch golden data for kernels/conv_transpose2d (see tools/reference/op_golden.py)."""
import math

import torch
import torch.nn.functional as F

# (case, N, I, O, H, W, K, bias): the test holds the same table. stride = K.
# "real" has the FPN's 2048 -> 2048 channels at 16x16 instead of 32x32 and stores its weight in bf16 (values
# exactly representable, the reference uses the same values): the f32 weight alone is 64 MB, and the file must
# stay under 60 MB. The test loads the weight as f32.
CASES = [("tiny", 2, 3, 5, 4, 3, 2, True),
         ("tiny_k3", 1, 4, 2, 3, 5, 3, False),
         ("real", 1, 2048, 2048, 16, 16, 2, True)]


def golden(gen: torch.Generator) -> dict:
    """Per case: x, weight (scaled by 1/sqrt(I)), bias when used, F.conv_transpose2d in float64 (stored f32)."""
    out = {}
    for name, n, i, o, h, w, k, has_bias in CASES:
        x = torch.randn(n, i, h, w, generator=gen)
        weight = torch.randn(i, o, k, k, generator=gen) / math.sqrt(i)
        if name == "real":
            weight = weight.bfloat16()
        bias = torch.randn(o, generator=gen) if has_bias else None
        ref = F.conv_transpose2d(x.double(), weight.double(), bias.double() if has_bias else None, stride=k)
        out.update({f"{name}.x": x, f"{name}.weight": weight, f"{name}.out": ref.float()})
        if has_bias:
            out[f"{name}.bias"] = bias
    return out
