"""Multi-scale deformable attention of the oracle (mfuser_ref/msdeform.py) against a direct
bilinear-sampling loop (python loops over batch/queries/heads/levels/points, float64).

Pixel convention of the loop (grid_sample, align_corners=False, zero padding): a normalised location
(x, y) of a level h x w reads pixel coordinates (x*w - 0.5, y*h - 0.5); the four surrounding integer
pixels get the usual bilinear weights, pixels outside the map contribute 0.

Seed: fresh per test, printed with every failure; set MFUSER_SEED to reproduce.
"""

import math
import unittest

import torch

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

from mfuser_ref.msdeform import MultiScaleDeformableAttention, ms_deform_attn_core  # noqa: E402


def loop_reference(value, shapes, locations, weights):
    """value [bs, nv, H, D], shapes [(h, w)], locations [bs, nq, H, L, P, 2], weights [bs, nq, H, L, P]
    -> [bs, nq, H*D]; everything float64 python loops."""
    value = value.double()
    locations = locations.double()
    weights = weights.double()
    bs, nv, nh, hd = value.shape
    _, nq, _, nl, npt, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(bs, nq, nh * hd, dtype=torch.float64)
    for b in range(bs):
        for q in range(nq):
            for m in range(nh):
                acc = torch.zeros(hd, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(npt):
                        x = locations[b, q, m, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, m, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(hd, dtype=torch.float64)
                        for yi in (y0, y0 + 1):
                            for xi in (x0, x0 + 1):
                                if 0 <= xi < w and 0 <= yi < h:
                                    wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                    sample += wgt * value[b, starts[lvl] + yi * w + xi, m]
                        acc += weights[b, q, m, lvl, p].item() * sample
                out[b, q, m * hd:(m + 1) * hd] = acc
    return out


def random_inputs(bs, nq, nh, hd, shapes, npt, lo=-0.25, hi=1.25, dtype=torch.float64):
    nv = sum(h * w for h, w in shapes)
    value = torch.randn(bs, nv, nh, hd, dtype=dtype)
    # locations partly outside [0, 1]: exercises the zero padding on every side
    locations = lo + (hi - lo) * torch.rand(bs, nq, nh, len(shapes), npt, 2, dtype=dtype)
    weights = torch.randn(bs, nq, nh, len(shapes) * npt, dtype=dtype).softmax(-1).view(bs, nq, nh, len(shapes), npt)
    return value, locations, weights


class TestCore(SeededTestCase):
    CASES = [
        # (bs, nq, heads, head_dim, level shapes (h, w), points)
        (2, 7, 3, 5, [(3, 5), (1, 1), (4, 2)], 3),         # odd shapes, a 1x1 level
        (1, 5, 2, 4, [(2, 2), (4, 4), (8, 8)], 4),         # the model's layout: low to high resolution
        (3, 4, 1, 1, [(7, 3)], 1),                          # one level, one head, one channel, one point
        (1, 3, 4, 2, [(5, 1), (1, 6)], 2),                  # degenerate rows / columns
    ]

    def test_float64_equals_loop(self):
        for case in self.CASES:
            bs, nq, nh, hd, shapes, npt = case
            with self.subTest(case=case):
                value, loc, w = random_inputs(bs, nq, nh, hd, shapes, npt)
                got = ms_deform_attn_core(value, torch.tensor(shapes), loc, w)
                ref = loop_reference(value, shapes, loc, w)
                self.assertEqual(got.shape, (bs, nq, nh * hd))
                err = (got - ref).abs().max().item()
                self.assertLess(err, 1e-12, "max abs err %g" % err)

    def test_float32_close_to_loop(self):
        bs, nq, nh, hd, shapes, npt = self.CASES[1]
        value, loc, w = random_inputs(bs, nq, nh, hd, shapes, npt, dtype=torch.float32)
        got = ms_deform_attn_core(value, shapes, loc, w).double()
        ref = loop_reference(value, shapes, loc, w)
        err = (got - ref).abs().max().item()
        self.assertLess(err, 1e-5, "max abs err %g" % err)

    def test_far_outside_is_zero(self):
        value, loc, w = random_inputs(2, 4, 2, 3, [(3, 4), (2, 2)], 2)
        # at least one pixel beyond the border in every direction: every corner is padding
        loc = torch.where(torch.rand_like(loc) < 0.5, -1.0 - loc.abs(), 2.0 + loc.abs())
        got = ms_deform_attn_core(value, [(3, 4), (2, 2)], loc, w)
        self.assertEqual(got.abs().max().item(), 0.0)

    def test_pixel_centres_and_borders(self):
        h, w = 3, 4
        value = torch.randn(1, h * w, 1, 2, dtype=torch.float64)
        grid = value[0, :, 0].view(h, w, 2)
        ones = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)

        def sample(x, y):
            loc = torch.tensor([x, y], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
            return ms_deform_attn_core(value, [(h, w)], loc, ones)[0, 0]

        # pixel centre (j + 0.5) / w reads pixel j exactly
        for yi in range(h):
            for xi in range(w):
                got = sample((xi + 0.5) / w, (yi + 0.5) / h)
                self.assertLess((got - grid[yi, xi]).abs().max().item(), 1e-15)
        # the left edge x = 0 is half-way between pixel 0 and the zero padding
        got = sample(0.0, 0.5 / h)
        self.assertLess((got - 0.5 * grid[0, 0]).abs().max().item(), 1e-15)
        # one pixel further out only padding is read
        self.assertEqual(sample(-0.5 / w, 0.5 / h).abs().max().item(), 0.0)
        self.assertEqual(sample(0.5 / w, 1.0 + 0.5 / h).abs().max().item(), 0.0)


class TestModule(SeededTestCase):
    def test_module_equals_manual(self):
        """Projections, softmax, offsets in pixels of each level, residual, (num_query, bs, C) layout."""
        C, nh, nl, npt, bs = 12, 3, 2, 2, 2
        shapes = [(2, 3), (3, 5)]
        nv = sum(h * w for h, w in shapes)
        m = MultiScaleDeformableAttention(C, nh, nl, npt, dropout=0.0).double()
        with torch.no_grad():
            for p in m.parameters():                     # non-trivial weights (init gives 0 offsets)
                p.copy_(torch.randn_like(p) * 0.3)
        query = torch.randn(nv, bs, C, dtype=torch.float64)
        pos = torch.randn(nv, bs, C, dtype=torch.float64)
        ref_pts = torch.rand(bs, nv, nl, 2, dtype=torch.float64)
        out = m(query, query, query, None, query_pos=pos, key_padding_mask=torch.zeros(bs, nv, dtype=torch.bool),
                reference_points=ref_pts, spatial_shapes=torch.tensor(shapes),
                level_start_index=torch.tensor([0, 6]), valid_radios=None)

        q = (query + pos).transpose(0, 1)
        v = (query.transpose(0, 1) @ m.value_proj.weight.T + m.value_proj.bias).view(bs, nv, nh, C // nh)
        off = (q @ m.sampling_offsets.weight.T + m.sampling_offsets.bias).view(bs, nv, nh, nl, npt, 2)
        logits = (q @ m.attention_weights.weight.T + m.attention_weights.bias).view(bs, nv, nh, nl * npt)
        aw = (logits - logits.logsumexp(-1, keepdim=True)).exp().view(bs, nv, nh, nl, npt)
        loc = torch.empty_like(off)
        for lvl, (h, w) in enumerate(shapes):
            loc[..., lvl, :, 0] = ref_pts[:, :, None, lvl, None, 0] + off[..., lvl, :, 0] / w
            loc[..., lvl, :, 1] = ref_pts[:, :, None, lvl, None, 1] + off[..., lvl, :, 1] / h
        core = loop_reference(v, shapes, loc, aw)
        expect = (core @ m.output_proj.weight.T + m.output_proj.bias).transpose(0, 1) + query
        err = (out - expect).abs().max().item()
        self.assertLess(err, 1e-12, "max abs err %g" % err)

    def test_init_weights(self):
        m = MultiScaleDeformableAttention(256, 8, 3, 4, dropout=0.0)
        self.assertEqual(m.sampling_offsets.weight.abs().max().item(), 0.0)
        self.assertEqual(m.attention_weights.weight.abs().max().item(), 0.0)
        self.assertEqual(m.attention_weights.bias.abs().max().item(), 0.0)
        bias = m.sampling_offsets.bias.view(8, 3, 4, 2)
        # head h points at angle 2*pi*h/8, scaled so that max(|dx|, |dy|) = 1, point p at (p + 1) x that
        for head, direction in [(0, (1.0, 0.0)), (1, (1.0, 1.0)), (2, (0.0, 1.0)), (5, (-1.0, -1.0))]:
            for lvl in range(3):
                for p in range(4):
                    want = torch.tensor(direction) * (p + 1)
                    self.assertLess((bias[head, lvl, p] - want).abs().max().item(), 1e-5)


if __name__ == "__main__":
    unittest.main()
