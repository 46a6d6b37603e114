"""PyTorch golden data for kernels/attention (see tools/reference/op_golden.py).

torch 1.13 has no scaled_dot_product_attention: the reference is softmax(q k^T * scale + masks) v written out
in float64 (boolean masks as -inf, causal as torch.tril), then stored f32. The backward's oracle is autograd
through the same float64 graph, for a random grad_out."""
import math

import torch
from counter_random import counter_uniform

# (case, B, H, Lq, Lk, D, causal, bool mask shape or None, float mask shape or None, scale or None);
# the test holds the same table.
CASES = [
    ("tiny", 2, 3, 5, 7, 8, False, None, None, None),
    ("tiny_all", 2, 3, 9, 6, 4, True, (1, 3, 9, 6), (2, 1, 9, 6), 0.3),    # every option, broadcast masks
    ("tiny_tiles", 1, 2, 130, 70, 16, True, None, (1, 1, 130, 70), None),  # several query tiles, Lq > Lk
    ("vit", 1, 16, 1025, 1025, 64, False, None, None, None),               # CLIP / DINOv2 ViT-L blocks
    ("text", 1, 12, 10, 10, 64, True, None, None, None),                   # CLIP text encoder
    ("masked_1024", 1, 8, 19, 1024, 32, False, (1, 8, 19, 1024), None, None),  # decoder masked attention
    ("masked_4096", 1, 8, 19, 4096, 32, False, (1, 8, 19, 4096), None, None),
    ("cross", 1, 8, 5376, 19, 32, False, None, None, None),                # pixel tokens to the 19 text tokens
]
# Cases that also get backward data (the file stays near 60 MB): every option at tiny shapes, the ViT blocks, the
# text encoder and the decoder's masked attention over 4096 keys. grad_out is random and stored ("<case>.grad_out")
# except for the ViT, whose 4 MB grad_out is counter_uniform(q's shape, salt 1), recomputed by the test.
BACKWARD = {"tiny", "tiny_all", "tiny_tiles", "vit", "text", "masked_4096"}
COUNTER_SALT = {"vit": 1}


def reference(q, k, v, causal, bool_mask, float_mask, scale):
    """float64 q, k, v -> float64 output (differentiable)."""
    s = (q @ k.transpose(-1, -2)) * scale
    if float_mask is not None:
        s = s + float_mask.double()
    if causal:
        lq, lk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(lq, lk, dtype=torch.bool).tril(), float("-inf"))
    if bool_mask is not None:
        s = s.masked_fill(bool_mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def golden(gen: torch.Generator) -> dict:
    """Per case: q, k, v, the masks it uses, the float64 reference output, a random grad_out and autograd's
    grad_q, grad_k, grad_v."""
    out = {}
    for name, b, h, lq, lk, d, causal, bool_shape, float_shape, scale in CASES:
        q = torch.randn(b, h, lq, d, generator=gen)
        k = torch.randn(b, h, lk, d, generator=gen)
        v = torch.randn(b, h, lk, d, generator=gen)
        bool_mask = float_mask = None
        if bool_shape is not None:
            # About half the keys masked, as Mask2Former's sigmoid < 0.5; key 0 always visible so no row is
            # fully masked (the decoder unmasks such rows, and causal rows see key 0).
            bool_mask = torch.rand(bool_shape, generator=gen) < 0.5
            bool_mask[..., 0] = False
            out[f"{name}.bool_mask"] = bool_mask
        if float_shape is not None:
            float_mask = torch.randn(float_shape, generator=gen)
            out[f"{name}.float_mask"] = float_mask
        qkv = [t.double().requires_grad_(name in BACKWARD) for t in (q, k, v)]
        ref = reference(*qkv, causal, bool_mask, float_mask, scale if scale is not None else 1 / math.sqrt(d))
        out.update({f"{name}.q": q, f"{name}.k": k, f"{name}.v": v, f"{name}.out": ref.detach().float()})
        if name in BACKWARD:
            if name in COUNTER_SALT:
                grad_out = counter_uniform(q.shape, COUNTER_SALT[name])
            else:
                grad_out = torch.randn(b, h, lq, d, generator=gen)
                out[f"{name}.grad_out"] = grad_out
            grads = torch.autograd.grad(ref, qkv, grad_out.double())
            out.update({f"{name}.grad_{arg}": g.float() for arg, g in zip("qkv", grads)})
    return out
