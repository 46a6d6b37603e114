"""Multi-scale deformable attention (Deformable DETR), the self-attention of the pixel decoder's
encoder layers, in plain torch.

Upstream the layer is mmcv's ``MultiScaleDeformableAttention`` (mmcv/ops/multi_scale_deform_attn.py,
mmcv 1.x); on a GPU it runs a CUDA kernel, on the CPU a grid_sample composition. Both sample each
level bilinearly at normalised locations with the align_corners=False pixel convention and zero
padding outside the map, so the core below (our own grid_sample formulation) is the semantics of
both. The CUDA kernel rounds differently (its own bilinear weights and accumulation order), so
official GPU numbers differ from these at float32 rounding level.

Shapes (batch_first=False, as configured upstream):
    query     [num_query, bs, C]          value [num_value, bs, C]  (value = query in the encoder)
    reference_points [bs, num_query, num_levels, 2]   (x, y) in [0, 1] of the whole map
    spatial_shapes   [num_levels, 2]      (h, w) per level, low resolution first
    level_start_index [num_levels]         offsets of each level in the flattened value
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    """Bilinear multi-scale sampling, weighted by attention weights.

    value:              [bs, num_value, num_heads, head_dim], levels concatenated along num_value
    spatial_shapes:     [num_levels, 2] (h, w), a LongTensor or a list of pairs
    sampling_locations: [bs, num_query, num_heads, num_levels, num_points, 2], (x, y) normalised:
                        pixel j of a level of width w covers [j/w, (j+1)/w], its centre is (j+0.5)/w
    attention_weights:  [bs, num_query, num_heads, num_levels, num_points] (already softmaxed)
    returns             [bs, num_query, num_heads * head_dim]

    out[b, q, h*D:(h+1)*D] = sum_{l, p} A[b, q, h, l, p] * bilinear(value_l[b, :, h, :], loc[b, q, h, l, p])
    where bilinear() reads the map at pixel coordinates (x * w - 0.5, y * h - 0.5) and treats every
    pixel outside the map as 0 (grid_sample, padding_mode='zeros', align_corners=False).
    """
    bs, num_value, num_heads, head_dim = value.shape
    _, num_query, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    assert len(shapes) == num_levels
    assert sum(h * w for h, w in shapes) == num_value
    per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] coordinates: -1 and 1 are the outer edges of the border pixels
    grids = sampling_locations * 2 - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [bs, h*w, heads, D] -> [bs*heads, D, h, w]: one image per (batch, head)
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(bs * num_heads, head_dim, h, w)
        # [bs, nq, heads, points, 2] -> [bs*heads, nq, points, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(bs * num_heads, num_query, num_points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [bs*heads, D, nq, levels, points] -> [bs*heads, D, nq, levels*points]
    sampled = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_query, num_levels * num_points)
    out = (sampled * weights).sum(-1)                                   # [bs*heads, D, nq]
    return out.view(bs, num_heads * head_dim, num_query).transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """mmcv ``MultiScaleDeformableAttention`` (state-dict names: sampling_offsets, attention_weights,
    value_proj, output_proj), with the residual added inside as upstream:

        q    = query + query_pos
        v    = value_proj(value)                  (no positional encoding on the values)
        off  = sampling_offsets(q)                -> [bs, nq, heads, levels, points, 2]
        A    = softmax over levels*points of attention_weights(q)
        loc  = reference_points + off / (w_l, h_l)    (offsets are in pixels of each level)
        out  = identity + dropout(output_proj(core(v, loc, A)))
    """

    def __init__(self, embed_dims=256, num_heads=8, num_levels=4, num_points=4, dropout=0.1,
                 batch_first=False):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError("embed_dims %d not divisible by num_heads %d" % (embed_dims, num_heads))
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.batch_first = batch_first
        self.dropout = nn.Dropout(dropout)
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.init_weights()

    def init_weights(self):
        """mmcv's initialisation: zero offset weights and a bias that puts point p of head h at
        (p + 1) * (cos t_h, sin t_h) / max(|cos t_h|, |sin t_h|) pixels, t_h = 2 pi h / heads (the
        same on every level); zero attention logits (uniform weights); xavier-uniform projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        for p in range(self.num_points):
            grid[:, :, p, :] *= p + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
                reference_points=None, spatial_shapes=None, level_start_index=None, **kwargs):
        # key, key_pos, attn_mask, valid_radios, ... arrive through the transformer layer's kwargs
        # and are ignored, as upstream.
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points).softmax(-1)
        weights = weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)

        if reference_points.shape[-1] != 2:
            raise ValueError("only (x, y) reference points are used by MFuser")
        shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=query.device).view(-1, 2)
        # offsets are in pixels of each level: divide by (w, h) of that level
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]

        out = ms_deform_attn_core(value, shapes, locations, weights)
        out = self.output_proj(out)
        if not self.batch_first:
            out = out.permute(1, 0, 2)
        return self.dropout(out) + identity
