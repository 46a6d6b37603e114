"""PyTorch golden data for kernels/softmax (see tools/reference/op_golden.py)."""
import torch

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


def _case(out: dict, name: str, x: torch.Tensor, mask=None) -> torch.Tensor:
    out[f"{name}.x"] = x
    if mask is not None:
        out[f"{name}.mask"] = mask
    result = _reference(x, mask)
    out[f"{name}.out"] = result
    return result


def golden(gen: torch.Generator) -> dict:
    """Tiny cases for every mask kind and broadcast (with fully masked rows, which PyTorch makes NaN), the
    ViT self-attention size 16 heads x 1025 x 1025 (x stored as f16, exact in f32; output in row blocks),
    and the Mask2Former decoder's boolean-masked cross-attention size 16 x 19 x 4096."""
    out = {}
    x = lambda *shape: torch.randn(*shape, generator=gen) * 3  # noqa: E731
    _case(out, "tiny.plain", x(2, 3, 5, 7))
    _case(out, "tiny.large_logits", x(3, 9) * 1000)  # exp overflows unless the row max is subtracted

    additive = torch.randn(5, 7, generator=gen)
    additive[0, 3] = additive[2, 0] = additive[4, 6] = NEG_INF
    additive[1] = NEG_INF  # fully masked row -> NaN in all 2 x 3 heads
    _case(out, "tiny.additive", x(2, 3, 5, 7), additive)

    causal = torch.full((10, 10), NEG_INF).triu_(1)  # CLIP text encoder's causal mask
    _case(out, "tiny.causal", x(4, 10, 10), causal)

    key_padding = torch.zeros(2, 1, 1, 7, dtype=torch.bool)
    key_padding[1, ..., 4:] = True
    _case(out, "tiny.key_padding", x(2, 3, 5, 7), key_padding)

    full = torch.rand(2, 3, 5, 7, generator=gen) < 0.4
    full[..., 0] = False  # no row is fully masked by chance...
    full[0, 1, 2] = full[1, 2, 4] = True  # ...only these two -> NaN
    _case(out, "tiny.bool_full", x(2, 3, 5, 7), full)

    real_x = (torch.randn(16, 1025, 1025, generator=gen) * 3).half()
    real_out = _reference(real_x, None).reshape(-1, 1025)
    rows, block = real_out.shape[0], REAL_BLOCK_ROWS
    starts = [0, rows // 2 - block // 2, rows - block]
    out["real.vit.x"] = real_x
    out["real.vit.blocks"] = torch.tensor([[s, s + block] for s in starts], dtype=torch.int64)
    out["real.vit.out"] = torch.cat([real_out[s:s + block] for s in starts])

    decoder_mask = torch.rand(16, 19, 4096, generator=gen) < 0.5
    _case(out, "real.decoder", (torch.randn(16, 19, 4096, generator=gen) * 3).half(), decoder_mask)
    return out
