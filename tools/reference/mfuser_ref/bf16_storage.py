"""bf16 storage, emulated in float32: what the model computes when every tensor it stores is bf16.

Inside ``bf16_storage()`` every float32 tensor that a torch function returns is rounded to the nearest bf16
value (round-to-nearest-even, as ``.to(torch.bfloat16)``), and so is every gradient flowing back into it;
the arithmetic of each function stays float32. That is a runtime storing activations and gradients in bf16
with float32 accumulation inside each kernel, at the finest granularity (one rounding per torch function, so
at least as many as any fused implementation). The golden generator measures the oracle's own bf16 error
with it: how far an honest bf16 step can be from the exact one on given weights. (PyTorch's CPU kernels
cannot run this model in bf16 directly: several reject mixed bf16/float32 arguments.)

In-place functions (name ending in ``_``) and setters are left alone: their result aliases their input.
A composite function runs unseen inside (the mode is off while it runs), so nn.MultiheadAttention's
functional form is replaced by one spelled in primitive ops (projections, scores, softmax, weighted sum,
output projection: each rounded, as an attention that stores them would).
Calls named in ``float32_calls`` (the losses, which our bf16 training graph computes in float32 over float32
copies of the logits, as PyTorch's autocast does) run unrounded.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _RoundToBf16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.to(torch.bfloat16).to(torch.float32)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(torch.bfloat16).to(torch.float32)


def _rounded(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        with torch._C.DisableTorchFunction():
            return _RoundToBf16.apply(value)
    return value


class _Bf16StorageMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.suspended = 0  # > 0 inside a float32 call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if self.suspended or name.endswith("_") or name.startswith("__set"):
            return out
        if isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out):
            return tuple(_rounded(t) for t in out)
        return _rounded(out)


def _attention_in_primitives(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                             bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                             training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                             use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                             v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True):
    """F.multi_head_attention_forward (sequence-first inputs) for what the model uses: packed input
    projection with bias, optional additive or boolean masks, no dropout."""
    if (bias_k is not None or bias_v is not None or add_zero_attn or use_separate_proj_weight
            or static_k is not None or static_v is not None or (training and dropout_p > 0)):
        raise NotImplementedError("bf16_storage: attention feature outside what the model uses")
    length, batch, dim = query.shape
    heads, head_dim = num_heads, dim // num_heads
    assert dim == embed_dim_to_check

    def split_heads(x):  # [S, N, E] -> [N * heads, S, head_dim]
        return x.reshape(x.shape[0], batch * heads, head_dim).transpose(0, 1)

    w_q, w_k, w_v = in_proj_weight.chunk(3)
    b_q, b_k, b_v = in_proj_bias.chunk(3)
    q = split_heads(F.linear(query, w_q, b_q))
    k = split_heads(F.linear(key, w_k, b_k))
    v = split_heads(F.linear(value, w_v, b_v))
    scores = torch.bmm(q * head_dim ** -0.5, k.transpose(1, 2))  # [N * heads, L, S]
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if key_padding_mask is not None:
        padded = key_padding_mask.view(batch, 1, 1, -1).expand(batch, heads, 1, key.shape[0])
        scores = scores.masked_fill(padded.reshape(batch * heads, 1, -1), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v).transpose(0, 1).reshape(length, batch, dim)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    if not need_weights:
        return out, None
    weights = probs.view(batch, heads, length, -1)
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _unrounded(mode, call):
    def run(*args, **kwargs):
        mode.suspended += 1
        try:
            return call(*args, **kwargs)
        finally:
            mode.suspended -= 1
    return run


@contextlib.contextmanager
def bf16_storage(model: torch.nn.Module, float32_calls=()):
    """Rounds the model's float32 parameters to bf16 values and every float32 result but those of
    ``float32_calls``, (object, method name) pairs; parameters and methods are restored on exit."""
    saved = [(p, p.detach().clone()) for p in model.parameters() if p.dtype == torch.float32]
    mode = _Bf16StorageMode()
    with torch.no_grad():
        for p, _ in saved:
            p.copy_(p.to(torch.bfloat16))
    for owner, name in float32_calls:
        setattr(owner, name, _unrounded(mode, getattr(owner, name)))
    composite_attention = F.multi_head_attention_forward
    F.multi_head_attention_forward = _attention_in_primitives
    try:
        with mode:
            yield
    finally:
        F.multi_head_attention_forward = composite_attention
        for owner, name in float32_calls:
            delattr(owner, name)  # the instance attribute set above; the class's method shows again
        with torch.no_grad():
            for p, original in saved:
                p.copy_(original)
