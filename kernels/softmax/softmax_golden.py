"""PyTorch golden data for kernels/softmax (see tools/reference/op_golden.py)."""
import torch

from counter_random import counter_uniform

NEG_INF = float("-inf")

# Row blocks of the real-size output that are stored (all of it would be 67 MB): the first, the middle
# (where a two-thread split falls) and the last rows.
REAL_BLOCK_ROWS = 512


def _reference(x: torch.Tensor, mask) -> torch.Tensor:
    """softmax over the last dim in f64, with an additive (float) or boolean (true = masked out) mask."""
    logits = x.double()
    if mask is not None:
        logits = logits.masked_fill(mask, NEG_INF) if mask.dtype == torch.bool else logits + mask.double()
    return torch.softmax(logits, dim=-1).float()


def _grad_x(x: torch.Tensor, mask, grad_out: torch.Tensor) -> torch.Tensor:
    """PyTorch's f64 autograd of the masked softmax with respect to x, for the upstream grad_out."""
    x = x.double().requires_grad_()
    logits = x
    if mask is not None:
        logits = x.masked_fill(mask, NEG_INF) if mask.dtype == torch.bool else x + mask.double()
    torch.softmax(logits, dim=-1).backward(grad_out.double())
    return x.grad.float()


def _case(out: dict, gen: torch.Generator, name: str, x: torch.Tensor, mask=None, grad_out=None) -> torch.Tensor:
    """Forward `<name>.out`; backward `<name>.grad_out` (stored unless given, i.e. recomputed by the test
    from counter_uniform) and `<name>.grad_x`."""
    out[f"{name}.x"] = x
    if mask is not None:
        out[f"{name}.mask"] = mask
    result = _reference(x, mask)
    out[f"{name}.out"] = result
    if grad_out is None:
        grad_out = out[f"{name}.grad_out"] = torch.randn(x.shape, generator=gen)
    out[f"{name}.grad_x"] = _grad_x(x, mask, grad_out)
    return result


def golden(gen: torch.Generator) -> dict:
    """Tiny cases for every mask kind and broadcast (with fully masked rows, which PyTorch makes NaN), the
    ViT self-attention size 16 heads x 1025 x 1025 (x stored as f16, exact in f32; output in row blocks),
    and the Mask2Former decoder's boolean-masked cross-attention size 16 x 19 x 4096.
    Backward: `<case>.grad_x`, PyTorch's f64 autograd for a random `<case>.grad_out`; at the real sizes the
    upstream gradient is counter_uniform(x's shape, salt 1 for the decoder, 2 for the ViT), and the ViT's
    gradient is stored in the same row blocks as its output (`real.vit.grad_x.blocks` / `.out`)."""
    out = {}
    x = lambda *shape: torch.randn(*shape, generator=gen) * 3  # noqa: E731
    _case(out, gen, "tiny.plain", x(2, 3, 5, 7))
    _case(out, gen, "tiny.large_logits", x(3, 9) * 1000)  # exp overflows unless the row max is subtracted

    additive = torch.randn(5, 7, generator=gen)
    additive[0, 3] = additive[2, 0] = additive[4, 6] = NEG_INF
    additive[1] = NEG_INF  # fully masked row -> NaN in all 2 x 3 heads
    _case(out, gen, "tiny.additive", x(2, 3, 5, 7), additive)

    causal = torch.full((10, 10), NEG_INF).triu_(1)  # CLIP text encoder's causal mask
    _case(out, gen, "tiny.causal", x(4, 10, 10), causal)

    key_padding = torch.zeros(2, 1, 1, 7, dtype=torch.bool)
    key_padding[1, ..., 4:] = True
    _case(out, gen, "tiny.key_padding", x(2, 3, 5, 7), key_padding)

    full = torch.rand(2, 3, 5, 7, generator=gen) < 0.4
    full[..., 0] = False  # no row is fully masked by chance...
    full[0, 1, 2] = full[1, 2, 4] = True  # ...only these two -> NaN
    _case(out, gen, "tiny.bool_full", x(2, 3, 5, 7), full)

    real_x = (torch.randn(16, 1025, 1025, generator=gen) * 3).half()
    real_out = _reference(real_x, None).reshape(-1, 1025)
    rows, block = real_out.shape[0], REAL_BLOCK_ROWS
    starts = [0, rows // 2 - block // 2, rows - block]
    out["real.vit.x"] = real_x
    out["real.vit.blocks"] = torch.tensor([[s, s + block] for s in starts], dtype=torch.int64)
    out["real.vit.out"] = torch.cat([real_out[s:s + block] for s in starts])
    real_grad = _grad_x(real_x, None, counter_uniform(real_x.shape, 2)).reshape(-1, 1025)
    out["real.vit.grad_x.blocks"] = out["real.vit.blocks"]
    out["real.vit.grad_x.out"] = torch.cat([real_grad[s:s + block] for s in starts])

    decoder_mask = torch.rand(16, 19, 4096, generator=gen) < 0.5
    _case(out, gen, "real.decoder", (torch.randn(16, 19, 4096, generator=gen) * 3).half(), decoder_mask,
          counter_uniform((16, 19, 4096), 1))
    return out
