"""PyTorch golden data for kernels/layout (see tools/reference/op_golden.py).

Permute cases store `<case>.x`, `<case>.perm` and `<case>.out` = x.permute(perm).contiguous(). Concat/split
cases store `<case>.whole`, `<case>.dim` and `<case>.piece<i>` = torch.split(whole, sizes, dim)[i]; the test
checks both directions (split whole -> pieces, concat pieces -> whole).

Backward (the cases in BACKWARD: every tiny one and the two smaller real ones), PyTorch's autograd for random
upstream gradients: permute `<case>.grad_out` -> `<case>.grad_x`; split `<case>.grad_piece<i>` ->
`<case>.grad_whole`; concat `<case>.grad_cat` -> `<case>.grad_cat_piece<i>`."""
import torch

PERMUTES = {
    "tiny.perm6": ([2, 3, 1, 4, 5, 2], [3, 0, 5, 2, 4, 1]),
    "tiny.nchw_to_nhwc": ([2, 3, 4, 5], [0, 2, 3, 1]),
    "tiny.swap_pairs": ([2, 3, 4, 5], [2, 3, 0, 1]),  # reduces to a 2-D transpose
    "tiny.identity": ([3, 1, 4], [0, 1, 2]),
    "tiny.unit_dims": ([1, 7, 1, 5], [3, 2, 0, 1]),
    # tokens [B, L, C] -> channels [B, C, L]: the 2048-channel patch features before the FPN
    "real.patch_features": ([1, 1024, 2048], [0, 2, 1]),
    # deformable-attention values [B, S, heads, dh] -> [B, heads, S, dh]
    "real.value_heads": ([1, 5376, 8, 32], [0, 2, 1, 3]),
}

SPLITS = {
    "tiny.middle": ([2, 9, 4], 1, [3, 5, 1]),
    "tiny.last": ([3, 2, 7], -1, [2, 5]),
    "tiny.first": ([6, 5], 0, [1, 1, 4]),
    "tiny.six_dims": ([2, 1, 3, 4, 2, 3], 3, [1, 3]),
    # the fused encoder's 2 x 1025 tokens, cut back into the DINOv2 and CLIP halves
    "real.tokens": ([1, 2050, 1024], 1, [1025, 1025]),
    # x_proj's output [B, L, dt_rank + 2 * d_state] cut into dt, B, C
    "real.x_dbl": ([1, 2050, 96], 2, [64, 16, 16]),
}


# Cases that also get gradients (the larger real ones would push the file past its size budget).
BACKWARD = {name for name in [*PERMUTES, *SPLITS] if name.startswith("tiny.")} | {"real.value_heads", "real.x_dbl"}


def _backward(out: dict, gen: torch.Generator, name: str) -> None:
    """Autograd through permute, split and cat for random upstream gradients (a move has exact gradients)."""
    r = lambda t: torch.randn(t.shape, generator=gen)  # noqa: E731
    if f"{name}.perm" in out:
        x = out[f"{name}.x"].clone().requires_grad_()
        grad_out = out[f"{name}.grad_out"] = r(out[f"{name}.out"])
        x.permute(out[f"{name}.perm"].tolist()).contiguous().backward(grad_out)
        out[f"{name}.grad_x"] = x.grad
        return
    dim = int(out[f"{name}.dim"])
    whole = out[f"{name}.whole"].clone().requires_grad_()
    pieces = [out[f"{name}.piece{i}"] for i in range(len(SPLITS[name][2]))]
    grads = [r(p) for p in pieces]
    torch.autograd.backward(torch.split(whole, SPLITS[name][2], dim), grads)
    out[f"{name}.grad_whole"] = whole.grad
    for i, g in enumerate(grads):
        out[f"{name}.grad_piece{i}"] = g
    leaves = [p.clone().requires_grad_() for p in pieces]
    grad_cat = out[f"{name}.grad_cat"] = r(whole)
    torch.cat(leaves, dim).backward(grad_cat)
    for i, leaf in enumerate(leaves):
        out[f"{name}.grad_cat_piece{i}"] = leaf.grad


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, (shape, perm) in PERMUTES.items():
        x = torch.randn(shape, generator=gen)
        out[f"{name}.x"] = x
        out[f"{name}.perm"] = torch.tensor(perm, dtype=torch.int64)
        out[f"{name}.out"] = x.permute(perm).contiguous()
    for name, (shape, dim, sizes) in SPLITS.items():
        whole = torch.randn(shape, generator=gen)
        out[f"{name}.whole"] = whole
        out[f"{name}.dim"] = torch.tensor([dim], dtype=torch.int64)
        for i, piece in enumerate(torch.split(whole, sizes, dim)):
            out[f"{name}.piece{i}"] = piece.contiguous()
    for name in sorted(BACKWARD):
        _backward(out, gen, name)
    return out
