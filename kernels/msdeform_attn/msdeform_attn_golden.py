"""PyTorch golden data for kernels/msdeform_attn (see tools/reference/op_golden.py).

The reference samples each level with F.grid_sample (bilinear, zeros padding, align_corners=False) on the grid
2 * loc - 1, in float64, and sums the samples weighted by the attention weights. Locations include points on
pixel centres and map edges, just outside the map, and far outside it. The case table is mirrored in
msdeform_attn_test.cpp (which reads everything it needs from the file).

Backward: "<case>.grad_out" is a random upstream gradient, "<case>.grad_value", ".grad_sampling_locations" and
".grad_attention_weights" the float64 autograd gradients of sum(grad_out * out) through the same grid_sample
reference (so samples exactly on pixel centres and edges get grid_sample's own one-sided gradients)."""
import torch
import torch.nn.functional as F

# case -> (batch, level shapes (h, w), queries, heads, head_dim, points)
CASES = {
    "tiny.basic": (2, [(3, 4), (2, 2)], 5, 2, 3, 2),
    "tiny.single_level": (1, [(2, 3)], 7, 1, 4, 3),
    "real.pixel_decoder": (1, [(16, 16), (32, 32), (64, 64)], 5376, 8, 32, 4),
}


def deform_attn_reference(value, shapes, locations, weights):
    """value [b, S, H, Dh], locations [b, Q, H, L, P, 2], weights [b, Q, H, L, P] -> [b, Q, H * Dh]."""
    batch, _, heads, head_dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    out = torch.zeros(batch, heads, head_dim, queries, dtype=value.dtype)
    start = 0
    for level, (h, w) in enumerate(shapes):
        # one image per (batch, head): [b * H, Dh, h, w]
        maps = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        start += h * w
        grid = 2 * locations[:, :, :, level] - 1                                 # [b, Q, H, P, 2]
        grid = grid.permute(0, 2, 1, 3, 4).reshape(batch * heads, queries, points, 2)
        samples = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        w_level = weights[:, :, :, level].permute(0, 2, 1, 3).reshape(batch * heads, 1, queries, points)
        out += (samples * w_level).sum(-1).view(batch, heads, head_dim, queries)
    return out.permute(0, 3, 1, 2).reshape(batch, queries, heads * head_dim)


def special_locations(shapes, count):
    """Normalized coordinates that probe the sampling's corner cases on each level. In pixel coordinates
    (loc * n - 0.5): the first and last pixel centres 0 and n - 1, the map's edges -0.5 and n - 0.5 (half the
    weight outside), exactly one pixel outside the outer centres -1 and n (all weight outside), -1.5 and n + 0.5,
    far outside, and a hair off the middle."""
    per_level = []
    for h, w in shapes:
        def coords(n):
            return torch.tensor([0.5 / n, (n - 0.5) / n, 0.0, 1.0, -0.5 / n, 1 + 0.5 / n, -1.0 / n, 1 + 1.0 / n,
                                 -3.0, 4.0, 0.5 + 1e-7], dtype=torch.float64)
        xs, ys = coords(w), coords(h)
        pick = torch.arange(count)
        per_level.append(torch.stack([xs[pick % len(xs)], ys[(pick * 5 + 1) % len(ys)]], -1))
    return torch.stack(per_level, 0)  # [L, count, 2]


def make_inputs(gen, batch, shapes, queries, heads, head_dim, points):
    levels = len(shapes)
    pixels = sum(h * w for h, w in shapes)
    value = torch.randn(batch, pixels, heads, head_dim, generator=gen, dtype=torch.float64)
    # Around the query's own pixel centre on every level (the encoder's reference points), offsets of a few
    # pixels (as sampling_offsets / (w, h)), so queries near the border sample outside the map.
    ref = torch.rand(batch, queries, 1, 1, 1, 2, generator=gen, dtype=torch.float64)
    size_xy = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64).view(1, 1, 1, levels, 1, 2)
    offsets = 3 * torch.randn(batch, queries, heads, levels, points, 2, generator=gen, dtype=torch.float64)
    locations = ref + offsets / size_xy
    # every 13th sample takes one of the special locations of its level
    flat = locations.permute(3, 0, 1, 2, 4, 5).reshape(levels, -1, 2)
    chosen = torch.arange(0, flat.shape[1], 13)
    flat[:, chosen] = special_locations(shapes, len(chosen))
    locations = flat.view(levels, batch, queries, heads, points, 2).permute(1, 2, 3, 0, 4, 5).contiguous()
    logits = torch.randn(batch, queries, heads, levels * points, generator=gen, dtype=torch.float64)
    weights = logits.softmax(-1).view(batch, queries, heads, levels, points)
    return value, locations, weights


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, (batch, shapes, queries, heads, head_dim, points) in CASES.items():
        value, locations, weights = make_inputs(gen, batch, shapes, queries, heads, head_dim, points)
        # the kernel sees f32 inputs: the reference starts from exactly those values
        value, locations, weights = value.float(), locations.float(), weights.float()
        sizes = torch.tensor([h * w for h, w in shapes], dtype=torch.int64)
        out[f"{name}.value"] = value
        out[f"{name}.spatial_shapes"] = torch.tensor(shapes, dtype=torch.int64)
        out[f"{name}.level_start_index"] = torch.cumsum(sizes, 0) - sizes
        out[f"{name}.sampling_locations"] = locations
        out[f"{name}.attention_weights"] = weights
        leaves = [t.double().requires_grad_(True) for t in (value, locations, weights)]
        result = deform_attn_reference(leaves[0], shapes, leaves[1], leaves[2])
        out[f"{name}.out"] = result.detach().float()
        grad_out = torch.randn(result.shape, generator=gen, dtype=torch.float64).float()
        result.backward(grad_out.double())
        out[f"{name}.grad_out"] = grad_out
        for key, leaf in zip(("value", "sampling_locations", "attention_weights"), leaves):
            out[f"{name}.grad_{key}"] = leaf.grad.float()
    return out
