"""PyTorch golden data for kernels/posenc (see tools/reference/op_golden.py).

The encoding is rebuilt in float64 from its definition (DETR / mmdet SinePositionalEncoding with
normalize=True on an all-valid mask): running counts of valid pixels down the rows and along the columns,
normalized by the last count (+ eps) and scaled, divided by temperature^(2*floor(k/2)/F), then sine on even and
cosine on odd feature indices, y features before x, channels first. A few entries are also checked against
values computed by hand with `math`. The case table is mirrored in posenc_test.cpp."""
import math

import torch

# case -> (batch, num_feats, h, w, temperature, scale, eps, offset)
CASES = {
    "tiny.default": (2, 4, 3, 5, 10000.0, 2 * math.pi, 1e-6, 0.0),
    "tiny.params": (1, 6, 4, 2, 20.0, 1.0, 0.5, 0.25),
    "real.level16": (1, 128, 16, 16, 10000.0, 2 * math.pi, 1e-6, 0.0),
    "real.level32": (1, 128, 32, 32, 10000.0, 2 * math.pi, 1e-6, 0.0),
    "real.level64": (1, 128, 64, 64, 10000.0, 2 * math.pi, 1e-6, 0.0),
}


def sine_encoding(batch, feats, h, w, temperature, scale, eps, offset):
    valid = torch.ones(batch, h, w, dtype=torch.float64)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    y = (y + offset) / (y[:, -1:, :] + eps) * scale
    x = (x + offset) / (x[:, :, -1:] + eps) * scale
    k = torch.arange(feats, dtype=torch.float64)
    period = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / feats)

    def interleave(embed):  # [B, H, W] -> [B, H, W, F]: sin of the even angles, cos of the odd ones
        angle = embed[..., None] / period
        return torch.stack((angle[..., 0::2].sin(), angle[..., 1::2].cos()), dim=-1).flatten(-2)

    return torch.cat((interleave(y), interleave(x)), dim=-1).permute(0, 3, 1, 2).contiguous()


def check_by_hand(pos, feats, h, w, temperature, scale, eps, offset):
    """A handful of entries from the closed form, with plain floats."""
    def angle(p, n, k):
        return (p + 1 + offset) / (n + eps) * scale / temperature ** (2 * (k // 2) / feats)

    expected = {
        (0, 0, 0): math.sin(angle(0, h, 0)),
        (1, h - 1, 0): math.cos(angle(h - 1, h, 1)),
        (feats - 2, 1, w - 1): math.sin(angle(1, h, feats - 2)),
        (feats, 0, w - 1): math.sin(angle(w - 1, w, 0)),
        (feats + 3, h - 1, 1): math.cos(angle(1, w, 3)),
        (2 * feats - 1, 0, 0): math.cos(angle(0, w, feats - 1)),
    }
    for (c, i, j), value in expected.items():
        got = pos[-1, c, i, j].item()
        if abs(got - value) > 1e-12:
            raise AssertionError(f"posenc golden: entry ({c}, {i}, {j}) is {got}, by hand {value}")


def golden(gen: torch.Generator) -> dict:
    del gen  # the encoding has no random inputs
    out = {}
    for name, (batch, feats, h, w, temperature, scale, eps, offset) in CASES.items():
        pos = sine_encoding(batch, feats, h, w, temperature, scale, eps, offset)
        check_by_hand(pos, feats, h, w, temperature, scale, eps, offset)
        out[f"{name}.out"] = pos.float()
    return out
