"""The tqdm decode head of the oracle (mfuser_ref/head.py, losses.py) at the tiny config, plus the
state-dict naming / size of the real config.

- forward (eval) to 1 + decoder_layers class / mask predictions and the semantic output;
- losses finite, gradients reach every head parameter; loss formulas recomputed independently;
- the traps: text queries, fully-masked attention rows unmasked, pixel-centre reference points, sine
  positional encoding, layer-level FFN width;
- state_dict names and shapes = an enumeration written from the official module structure.

Seed: fresh per test, printed with every failure; set MFUSER_SEED to reproduce.
"""

import math
import random
import unittest

import torch
import torch.nn.functional as F

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

from mfuser_ref import losses as L  # noqa: E402
from mfuser_ref.config import load_config  # noqa: E402
from mfuser_ref.head import TqdmHead  # noqa: E402


def tiny_head():
    cfg = load_config("tiny")
    head = TqdmHead.from_config(cfg)
    head.init_weights()
    return cfg, head


def tiny_inputs(cfg, batch=2):
    """Backbone-FPN-like features (2 x vision.width channels at 4x, 2x, 1x, 1/2x the patch grid) and
    enhanced text embeddings [B, 19, text.embed_dim]."""
    grid = cfg.image_size // cfg.patch_size
    c = 2 * cfg.vision.width
    feats = [torch.randn(batch, c, s, s) for s in (4 * grid, 2 * grid, grid, grid // 2)]
    texts = torch.randn(batch, cfg.num_classes, cfg.text.embed_dim)
    return feats, texts


def random_targets(cfg, seed, batch=2, empty=()):
    """Random label maps at the crop size with some ignore pixels, turned into (labels, masks) as the
    dataset pipeline does. Images listed in ``empty`` are all-ignore."""
    labels, masks = [], []
    for b in range(batch):
        n_present = random.Random(seed + b).randint(1, cfg.num_classes)
        present = torch.randperm(cfg.num_classes)[:n_present]
        seg = present[torch.randint(0, n_present, (cfg.image_size // 4, cfg.image_size // 4))]
        seg = F.interpolate(seg[None, None].float(), size=(cfg.image_size, cfg.image_size), mode="nearest")[0, 0].long()
        seg[torch.rand(seg.shape) < 0.1] = 255
        if b in empty:
            seg[:] = 255
        lab, msk = L.semantic_to_targets(seg)
        labels.append(lab)
        masks.append(msk)
    return labels, masks


def bilinear(maps, pts):
    """Independent bilinear read of maps [N, H, W] at pts [N, P, 2] (x, y in [0, 1]),
    align_corners=False, zero outside; float64."""
    maps = maps.double()
    pts = pts.double()
    n, h, w = maps.shape
    x = pts[..., 0] * w - 0.5
    y = pts[..., 1] * h - 0.5
    x0, y0 = x.floor(), y.floor()
    out = torch.zeros_like(x)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            out += torch.where(valid, wgt * maps.flatten(1).gather(1, idx), torch.zeros_like(wgt))
    return out


# ---------------------------------------------------------------------------------------------
# expected state dict, written from the official module structure (tqdm_head.py,
# tqdm_msdeformattn_pixel_decoder.py, mmcv 1.x bricks, the g2c-512 config):
#
# pixel_decoder                                                   entries
#   input_convs.{0,1,2}: ConvModule(1x1, bias=True, GN) -> conv.weight/bias, gn.weight/bias   3 x 4
#   encoder.layers.{0..5}: attentions.0 = MultiScaleDeformableAttention (sampling_offsets,
#       attention_weights, value_proj, output_proj: weight+bias)                             8
#     attentions.1 = mmcv MultiheadAttention -> attn.in_proj_weight/bias, attn.out_proj.w/b  4
#     ffns.0 = FFN -> layers.0.0 (Linear C->ffn), layers.1 (Linear ffn->C)                   4
#     norms.{0,1,2} LayerNorm                                                                6
#                                                                           per layer 22, x 6
#   encoder.post_norm (DetrTransformerDecoder)                                               2
#   level_encoding (Embedding 3 x C)                                                         1
#   lateral_convs.0 (1x1, bias=False since norm_cfg is set, GN): conv.weight, gn.w/b         3
#   output_convs.0 (3x3, bias=False, GN, ReLU): conv.weight, gn.w/b                           3
#   mask_feature (Conv2d 1x1 with bias)                                                       2
#   text_proj (Linear 768->C), text_pos_embed (Embedding 19 x C)                              3
#                                                                 pixel_decoder total: 158
# transformer_decoder.layers.{0..8}: attentions.{0,1} MHA (4 each), ffns.0 (4), norms (6) = 18, x 9
#   + post_norm 2                                                   decoder total: 164
# head: query_embed 1, text_proj.{0,2} 4, level_embed 1, cls_embed 2, mask_embed.{0,2,4} 6 = 14
#   (decoder_input_projs are nn.Identity, conv_seg is None, the loss modules have no state)
# -> 336 entries for the real config (no buffers: GroupNorm/LayerNorm keep none).
#
# Parameters at the real config (C=256, 8 heads, 3 levels, 4 points, in 2048, text 768, ffn 2048):
#   input_convs 3 x (2048*256 + 3*256)                      =  1,575,168
#   encoder layer: offsets 256*192+192 + weights 256*96+96 + 2 x (256*256+256)   =   205,600
#                  MHA 3*256*256+3*256 + 256*256+256                             =   263,168
#                  FFN 256*2048+2048 + 2048*256+256                              = 1,050,880
#                  norms 3*512                                                   =     1,536
#                  = 1,521,184, x 6                            =  9,127,104
#   post_norm 512, level_encoding 768, lateral 524,288+512, output 589,824+512,
#   mask_feature 65,792, text_proj 196,864, text_pos_embed 4,864 =  1,383,936
#   transformer_decoder 9 x (2*263,168 + 1,050,880 + 1,536) + 512 = 14,209,280
#   head: query_embed 4,864, text_proj 196,864+65,792, level_embed 768, cls_embed 5,140,
#         mask_embed 3*65,792                                   =    470,804
#   total                                                      = 26,766,292
REAL_HEAD_ENTRIES = 336
REAL_HEAD_PARAMS = 26766292


def expected_head_state(C, in_ch, text_dim, heads, levels, points, enc_layers, enc_ffn, dec_layers, dec_ffn, Q, K):
    e = {}

    def lin(name, out_f, in_f, bias=True):
        e[name + ".weight"] = (out_f, in_f)
        if bias:
            e[name + ".bias"] = (out_f,)

    def ln(name):
        e[name + ".weight"] = (C,)
        e[name + ".bias"] = (C,)

    def mha(name):
        e[name + ".attn.in_proj_weight"] = (3 * C, C)
        e[name + ".attn.in_proj_bias"] = (3 * C,)
        lin(name + ".attn.out_proj", C, C)

    def ffn(name, hidden):
        lin(name + ".layers.0.0", hidden, C)
        lin(name + ".layers.1", C, hidden)

    pd = "pixel_decoder."
    for i in range(levels):
        e[pd + "input_convs.%d.conv.weight" % i] = (C, in_ch, 1, 1)
        e[pd + "input_convs.%d.conv.bias" % i] = (C,)
        ln(pd + "input_convs.%d.gn" % i)
    for l in range(enc_layers):
        p = pd + "encoder.layers.%d." % l
        lin(p + "attentions.0.sampling_offsets", heads * levels * points * 2, C)
        lin(p + "attentions.0.attention_weights", heads * levels * points, C)
        lin(p + "attentions.0.value_proj", C, C)
        lin(p + "attentions.0.output_proj", C, C)
        mha(p + "attentions.1")
        ffn(p + "ffns.0", enc_ffn)
        for n in range(3):
            ln(p + "norms.%d" % n)
    ln(pd + "encoder.post_norm")
    e[pd + "level_encoding.weight"] = (levels, C)
    e[pd + "lateral_convs.0.conv.weight"] = (C, in_ch, 1, 1)
    ln(pd + "lateral_convs.0.gn")
    e[pd + "output_convs.0.conv.weight"] = (C, C, 3, 3)
    ln(pd + "output_convs.0.gn")
    e[pd + "mask_feature.weight"] = (C, C, 1, 1)
    e[pd + "mask_feature.bias"] = (C,)
    lin(pd + "text_proj", C, text_dim)
    e[pd + "text_pos_embed.weight"] = (Q, C)
    for l in range(dec_layers):
        p = "transformer_decoder.layers.%d." % l
        mha(p + "attentions.0")
        mha(p + "attentions.1")
        ffn(p + "ffns.0", dec_ffn)
        for n in range(3):
            ln(p + "norms.%d" % n)
    ln("transformer_decoder.post_norm")
    e["query_embed.weight"] = (Q, C)
    lin("text_proj.0", C, text_dim)
    lin("text_proj.2", C, C)
    e["level_embed.weight"] = (levels, C)
    lin("cls_embed", K + 1, C)
    lin("mask_embed.0", C, C)
    lin("mask_embed.2", C, C)
    lin("mask_embed.4", C, C)
    return e


def expected_for(cfg):
    dh = cfg.decode_head
    return expected_head_state(dh.feat_channels, 2 * cfg.vision.width, cfg.text.embed_dim, dh.num_heads,
                               dh.num_levels, dh.num_points, dh.encoder_layers, dh.encoder_ffn,
                               dh.decoder_layers, dh.decoder_ffn, cfg.num_classes, cfg.num_classes)


class TestStateDict(SeededTestCase):
    def check(self, cfg, head):
        got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
        want = expected_for(cfg)
        self.assertEqual(sorted(set(got) - set(want)), [])
        self.assertEqual(sorted(set(want) - set(got)), [])
        for k in want:
            self.assertEqual(got[k], want[k], k)
        return got

    def test_tiny_names_and_shapes(self):
        cfg, head = tiny_head()
        self.check(cfg, head)

    def test_real_names_count_and_size(self):
        cfg = load_config("vitl_512")
        head = TqdmHead.from_config(cfg)
        got = self.check(cfg, head)
        self.assertEqual(len(got), REAL_HEAD_ENTRIES)
        n_params = sum(p.numel() for p in head.parameters())
        self.assertEqual(n_params, REAL_HEAD_PARAMS)
        self.assertEqual(sum(math.prod(s) for s in got.values()), REAL_HEAD_PARAMS)
        # exact checkpoint keys (the segmentor registers the head as decode_head)
        keys = {"decode_head." + k: s for k, s in got.items()}
        for k, shape in [
            ("decode_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight", (192, 256)),
            ("decode_head.pixel_decoder.encoder.layers.5.attentions.0.attention_weights.bias", (96,)),
            ("decode_head.pixel_decoder.encoder.layers.3.attentions.1.attn.in_proj_weight", (768, 256)),
            # layer-level feedforward_channels=2048 overrides ffn_cfgs' 1024
            ("decode_head.pixel_decoder.encoder.layers.0.ffns.0.layers.0.0.weight", (2048, 256)),
            ("decode_head.pixel_decoder.encoder.post_norm.weight", (256,)),
            ("decode_head.pixel_decoder.input_convs.0.conv.weight", (256, 2048, 1, 1)),
            ("decode_head.pixel_decoder.input_convs.2.gn.bias", (256,)),
            ("decode_head.pixel_decoder.lateral_convs.0.conv.weight", (256, 2048, 1, 1)),
            ("decode_head.pixel_decoder.output_convs.0.conv.weight", (256, 256, 3, 3)),
            ("decode_head.pixel_decoder.mask_feature.bias", (256,)),
            ("decode_head.pixel_decoder.text_proj.weight", (256, 768)),
            ("decode_head.pixel_decoder.text_pos_embed.weight", (19, 256)),
            ("decode_head.pixel_decoder.level_encoding.weight", (3, 256)),
            ("decode_head.transformer_decoder.layers.8.attentions.1.attn.out_proj.weight", (256, 256)),
            ("decode_head.transformer_decoder.layers.0.ffns.0.layers.1.weight", (256, 2048)),
            ("decode_head.transformer_decoder.post_norm.bias", (256,)),
            ("decode_head.query_embed.weight", (19, 256)),
            ("decode_head.text_proj.0.weight", (256, 768)),
            ("decode_head.text_proj.2.bias", (256,)),
            ("decode_head.level_embed.weight", (3, 256)),
            ("decode_head.cls_embed.weight", (20, 256)),
            ("decode_head.mask_embed.4.weight", (256, 256)),
        ]:
            self.assertIn(k, keys)
            self.assertEqual(keys[k], shape, k)
        self.assertNotIn("decode_head.pixel_decoder.lateral_convs.0.conv.bias", keys)
        self.assertNotIn("decode_head.pixel_decoder.output_convs.0.conv.bias", keys)


class TestForward(SeededTestCase):
    def test_eval_forward_shapes_and_semantic_output(self):
        cfg, head = tiny_head()
        head.eval()
        feats, texts = tiny_inputs(cfg)
        hw = feats[0].shape[-2:]
        with torch.no_grad():
            cls_list, mask_list = head(feats, texts, [{}, {}])
            seg = head.forward_test(feats, texts, [{}, {}], None)
        self.assertEqual(len(cls_list), 1 + cfg.decode_head.decoder_layers)
        self.assertEqual(len(mask_list), 1 + cfg.decode_head.decoder_layers)
        for c, m in zip(cls_list, mask_list):
            self.assertEqual(tuple(c.shape), (2, 19, 20))
            self.assertEqual(tuple(m.shape), (2, 19) + tuple(hw))
            self.assertTrue(torch.isfinite(c).all() and torch.isfinite(m).all())
        self.assertEqual(tuple(seg.shape), (2, 19) + tuple(hw))
        want = torch.einsum("bqc,bqhw->bchw", cls_list[-1].softmax(-1)[..., :19], mask_list[-1].sigmoid())
        self.assertLess((seg - want).abs().max().item(), 1e-6)
        self.assertGreaterEqual(seg.min().item(), 0.0)
        self.assertLessEqual(seg.sum(1).max().item(), 19.0)

    def test_queries_are_projected_texts(self):
        """Prediction 0 (before any decoder layer) is the heads applied to LN(text_proj(texts))."""
        cfg, head = tiny_head()
        head.eval()
        feats, texts = tiny_inputs(cfg)
        with torch.no_grad():
            cls_list, mask_list, mask_feat = head(feats, texts, [{}, {}], return_mask_features=True)
            q = head.transformer_decoder.post_norm(head.text_proj(texts))
            self.assertLess((cls_list[0] - head.cls_embed(q)).abs().max().item(), 1e-5)
            m = torch.einsum("bqc,bchw->bqhw", head.mask_embed(q), mask_feat)
            self.assertLess((mask_list[0] - m).abs().max().item(), 1e-4)

    def test_fully_masked_rows_are_unmasked(self):
        """All mask logits negative (every query masked everywhere) must behave as no mask at all
        (all logits positive); without the official unmasking the attention would be NaN."""
        cfg, head = tiny_head()
        head.eval()
        feats, texts = tiny_inputs(cfg)
        outs = []
        for sign in (-1.0, 1.0):
            with torch.no_grad():
                head.pixel_decoder.mask_feature.weight.zero_()
                head.pixel_decoder.mask_feature.bias.fill_(1.0)
                head.mask_embed[4].weight.zero_()
                head.mask_embed[4].bias.fill_(sign)
                outs.append(head(feats, texts, [{}, {}])[0])
        for a, b in zip(*outs):
            self.assertTrue(torch.isfinite(a).all())
            self.assertTrue(torch.equal(a, b))

    def test_attention_mask_threshold(self):
        cfg, head = tiny_head()
        C = cfg.decode_head.feat_channels
        out = torch.randn(19, 2, C)
        feat = torch.randn(2, C, 16, 16)
        with torch.no_grad():
            cls, masks, attn = head.forward_head(out, feat, (4, 4))
        self.assertEqual(tuple(attn.shape), (2 * cfg.decode_head.num_heads, 19, 16))
        small = F.interpolate(masks, (4, 4), mode="bilinear", align_corners=False).flatten(2)
        want = (small < 0).repeat_interleave(cfg.decode_head.num_heads, dim=0)
        # sigmoid(x) < 0.5 is x < 0 (up to the rounding of sigmoid near 0)
        near = small.abs().repeat_interleave(cfg.decode_head.num_heads, dim=0) < 1e-6
        self.assertTrue(((attn == want) | near).all())

    def test_reference_points_and_positional_encoding(self):
        cfg, head = tiny_head()
        ref = head.pixel_decoder.reference_points(3, 5, 1, torch.device("cpu"))
        ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
        want = torch.stack([(xs.flatten() + 0.5) / 5, (ys.flatten() + 0.5) / 3], -1)
        self.assertLess((ref - want).abs().max().item(), 1e-7)

        pe = head.pixel_decoder.postional_encoding
        nf = pe.num_feats
        pos = pe(torch.zeros(1, 3, 5, dtype=torch.bool))[0].double()        # [2*nf, 3, 5]
        self.assertEqual(tuple(pos.shape), (2 * nf, 3, 5))
        for c in range(2 * nf):
            k = c % nf
            t = 10000.0 ** (2 * (k // 2) / nf)
            for i in range(3):
                for j in range(5):
                    v = ((i + 1) / (3 + 1e-6) if c < nf else (j + 1) / (5 + 1e-6)) * 2 * math.pi / t
                    want = math.sin(v) if k % 2 == 0 else math.cos(v)
                    self.assertLess(abs(pos[c, i, j].item() - want), 1e-5, (c, i, j))


class TestLoss(SeededTestCase):
    def forward_train_losses(self, head, cfg, labels, masks, **kw):
        feats, texts = tiny_inputs(cfg)
        return head.forward_train(feats, texts, [{}, {}], None, None, labels, masks, **kw)

    def predictions(self, head, cfg):
        """(class predictions, mask predictions) on fresh tiny inputs, without autograd."""
        feats, texts = tiny_inputs(cfg)
        with torch.no_grad():
            return head(feats, texts)

    def test_losses_finite_and_gradients_reach_every_parameter(self):
        cfg, head = tiny_head()
        head.train()
        labels, masks = random_targets(cfg, self.seed)
        losses = self.forward_train_losses(head, cfg, labels, masks)
        n_pred = 1 + cfg.decode_head.decoder_layers
        want_keys = {"loss_cls", "loss_mask", "loss_dice"}
        for i in range(n_pred - 1):
            want_keys |= {"d%d.loss_cls" % i, "d%d.loss_mask" % i, "d%d.loss_dice" % i}
        self.assertEqual(set(losses), want_keys)
        for k, v in losses.items():
            self.assertEqual(v.dim(), 0, k)
            self.assertTrue(torch.isfinite(v), "%s = %s" % (k, v))
            self.assertGreater(v.item(), 0.0, k)
        sum(losses.values()).backward()
        for name, p in head.named_parameters():
            self.assertIsNotNone(p.grad, name)
            self.assertTrue(torch.isfinite(p.grad).all(), name)
            self.assertGreater(p.grad.abs().sum().item(), 0.0, name)

    def test_deterministic_and_generator(self):
        cfg, head = tiny_head()
        labels, masks = random_targets(cfg, self.seed)
        cls_list, mask_list = self.predictions(head, cfg)
        head.deterministic = True
        a = head.loss(cls_list, mask_list, labels, masks)
        torch.rand(5)                                   # the global RNG does not matter
        b = head.loss(cls_list, mask_list, labels, masks)
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)
        head.deterministic = False
        g1 = torch.Generator().manual_seed(self.seed)
        g2 = torch.Generator().manual_seed(self.seed)
        c = head.loss(cls_list, mask_list, labels, masks, generator=g1)
        d = head.loss(cls_list, mask_list, labels, masks, generator=g2)
        for k in c:
            self.assertTrue(torch.equal(c[k], d[k]), k)
        # the global RNG path, as upstream: same seed, same result
        torch.manual_seed(self.seed)
        e = head.loss(cls_list, mask_list, labels, masks)
        torch.manual_seed(self.seed)
        f = head.loss(cls_list, mask_list, labels, masks)
        for k in e:
            self.assertTrue(torch.equal(e[k], f[k]), k)

    def test_draw_order_matches_upstream(self):
        """Per prediction: one [1, P, 2] draw per image (assigner, unused), then [N, 3P, 2], [N, P/4, 2]."""
        cfg, head = tiny_head()
        labels, masks = random_targets(cfg, self.seed)
        cls_list, mask_list = self.predictions(head, cfg)
        rand = L.PointRandomness.seeded(self.seed, record=True)
        head.loss(cls_list, mask_list, labels, masks, rand=rand)
        n = sum(len(x) for x in labels)
        P = 12544
        per_pred = [(1, P, 2), (1, P, 2), (n, 3 * P, 2), (n, P - int(0.75 * P), 2)]
        self.assertEqual([tuple(t.shape) for t in rand.draws], per_pred * len(cls_list))

    def test_uncertain_point_selection(self):
        logits = torch.randn(3, 1, 7, 9)
        rand = L.PointRandomness.seeded(self.seed, record=True)
        pts = L.get_uncertain_point_coords_with_randomness(logits, 40, 3.0, 0.75, rand)
        cand, extra = rand.draws
        self.assertEqual(tuple(pts.shape), (3, 40, 2))
        self.assertTrue(torch.equal(pts[:, 30:], extra))
        unc = -bilinear(logits[:, 0], cand).abs()                      # [3, 120]
        for i in range(3):
            chosen = pts[i, :30]
            # every chosen point is a candidate, and no unchosen candidate is more uncertain
            match = (cand[i][None] == chosen[:, None]).all(-1)          # [30, 120]
            self.assertTrue(match.any(1).all())
            is_chosen = match.any(0)
            self.assertEqual(int(is_chosen.sum()), 30)
            self.assertGreaterEqual(unc[i][is_chosen].min().item(), unc[i][~is_chosen].max().item() - 1e-6)

    def test_loss_formulas(self):
        """Recompute every loss of every prediction in float64 from the recorded random draws."""
        cfg, head = tiny_head()
        head.num_points = 300                            # keeps the check light; formulas unchanged
        labels, masks = random_targets(cfg, self.seed, empty=(1,) if self.seed % 3 == 0 else ())
        cls_list, mask_list = self.predictions(head, cfg)
        rand = L.PointRandomness.seeded(self.seed, record=True)
        got = head.loss(cls_list, mask_list, labels, masks, rand=rand)
        draws = list(rand.draws)
        P, B = 300, 2
        w_cls = torch.tensor([1.0] * 19 + [0.1], dtype=torch.float64)
        expect = []
        for cls, mpred in zip(cls_list, mask_list):
            del draws[:B]                                # the assigner's unused draws
            y = torch.full((B, 19), 19, dtype=torch.long)
            preds, targets = [], []
            for b in range(B):
                for j, c in enumerate(labels[b].tolist()):
                    y[b, c] = c
                    preds.append(mpred[b, c])
                    targets.append(masks[b][j])
            logp = cls.double().log_softmax(-1)
            nll = -logp.gather(-1, y[..., None])[..., 0]
            wy = w_cls[y]
            loss_cls = 2.0 * (wy * nll).sum() / wy.sum()
            if not preds:
                expect.append((loss_cls, 0.0, 0.0))
                continue
            preds, targets = torch.stack(preds), torch.stack(targets)
            n = preds.shape[0]
            replay = L.PointRandomness(replay=draws[:2])
            del draws[:2]
            pts = L.get_uncertain_point_coords_with_randomness(preds[:, None], P, 3.0, 0.75, replay)
            x = bilinear(preds, pts)
            t = bilinear(targets.double(), pts)
            bce = x.clamp(min=0) - x * t + torch.log1p(torch.exp(-x.abs()))
            loss_mask = 5.0 * bce.sum() / (n * P)
            s = torch.sigmoid(x)
            dice = 1 - (2 * (s * t).sum(1) + 1.0) / (s.sum(1) + t.sum(1) + 1.0)
            loss_dice = 5.0 * dice.sum() / n
            expect.append((loss_cls, loss_mask, loss_dice))
        self.assertEqual(draws, [])
        names = ["d%d." % i for i in range(len(expect) - 1)] + [""]
        for prefix, (lc, lm, ld) in zip(names, expect):
            for key, want in (("loss_cls", lc), ("loss_mask", lm), ("loss_dice", ld)):
                val = got[prefix + key].item()
                self.assertLess(abs(val - float(want)), 1e-5 * max(1.0, abs(float(want))),
                                "%s%s: %r vs %r" % (prefix, key, val, float(want)))

    def test_empty_batch(self):
        """No class present anywhere: mask/dice losses are 0 (keeping the graph), cls is all 'no object'."""
        cfg, head = tiny_head()
        labels, masks = random_targets(cfg, self.seed, empty=(0, 1))
        self.assertEqual([len(x) for x in labels], [0, 0])
        losses = self.forward_train_losses(head, cfg, labels, masks, generator=torch.Generator().manual_seed(1))
        self.assertEqual(losses["loss_mask"].item(), 0.0)
        self.assertEqual(losses["loss_dice"].item(), 0.0)
        self.assertTrue(torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0)
        sum(losses.values()).backward()

    def test_semantic_to_targets(self):
        seg = torch.tensor([[3, 3, 255], [0, 18, 3]])
        labels, masks = L.semantic_to_targets(seg)
        self.assertEqual(labels.tolist(), [0, 3, 18])
        self.assertEqual(masks.tolist(), [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [0, 1, 0]]])


if __name__ == "__main__":
    unittest.main()
