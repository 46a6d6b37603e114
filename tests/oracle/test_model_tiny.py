"""Tests of the whole oracle model (tools/reference/mfuser_ref/model.py) on the tiny config, plus the
size of the real one (built with the initialisers switched off, so it takes seconds).

Run: /usr/bin/python3 -m unittest tests.oracle.test_model_tiny   (MFUSER_SEED=N to repeat a run)
"""

import contextlib
import re
import time
import unittest
from unittest import mock

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfuser_ref.config import cityscapes_token_ids, load_config  # noqa: E402
from mfuser_ref.model import MFuserCLIP, total_loss  # noqa: E402


@contextlib.contextmanager
def initialisers_off():
    """Every torch.nn.init function returns its tensor untouched: builds only allocate."""
    with contextlib.ExitStack() as stack:
        for name in dir(nn.init):
            if name.endswith("_") and not name.startswith("_"):
                stack.enter_context(mock.patch.object(nn.init, name, lambda t, *a, **k: t))
        yield


def trainable_by_upstream_rule(name):
    """MFuser_CLIP: text encoder frozen; backbone trainable only where the name holds 'adapter' or
    'fpn'; everything else (contexts, gamma, context decoder, decode head) trained."""
    if name.startswith("text_encoder."):
        return False
    if name.startswith("backbone."):
        return "adapter" in name or "fpn" in name
    return True


def entries_without_head(cfg):
    """state_dict entries of backbone + text encoder + context decoder + contexts/gamma, counted per
    module from the upstream definitions."""
    L, Lt, Lc = cfg.vision.layers, cfg.text.layers, cfg.context_decoder.layers
    clip_visual = 3 + 1 + 2 + 12 * L + 2        # pos/cls/proj, conv1, ln_pre, blocks, ln_post
    dinov2 = 3 + 2 + 14 * L + 2                 # cls/pos/mask tokens, patch_embed, blocks, norm
    fpn = 2 + 5 + 2 + 2                         # convT, BN (+3 buffers), convT; fpn2 convT
    fusion = 11 * L + 2 * L + 2 * L + 2         # MVFusers, proj1, proj2, proj3
    text = 2 + 1 + 2 + 12 * Lt                  # pos/projection, token_embedding, ln_final, blocks
    context_decoder = 6 + 4 + 4 + 26 * Lc       # memory_proj, text_proj, out_proj, MTEnhancers
    return clip_visual + dinov2 + fpn + fusion + text + context_decoder + 2


class TinyModelCase(SeededTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cfg = load_config("tiny")

    def build(self, **kw):
        return MFuserCLIP(self.cfg, **kw)

    def image(self, batch=2):
        return torch.randn(batch, 3, self.cfg.image_size, self.cfg.image_size)

    def labels(self, batch=2):
        s = self.cfg.image_size
        seg = torch.randint(0, self.cfg.num_classes, (batch, 1, s, s))
        seg[:, :, : s // 8] = 255                               # some ignored rows
        return seg


class TestStateDict(TinyModelCase):
    def test_keys_and_shapes(self):
        cfg = self.cfg
        m = self.build()
        sd = m.state_dict()
        self.assertNotIn("texts", sd)
        self.assertTrue(torch.equal(m.texts, cityscapes_token_ids()))
        self.assertEqual(m.texts.dtype, torch.int64)
        self.assertEqual(len([k for k in sd if not k.startswith("decode_head.")]), entries_without_head(cfg))

        w, v, t = cfg.vision.width, cfg.vision, cfg.text
        half = w // 2
        expected = {
            "contexts": (1, t.n_contexts, t.width),
            "gamma": (t.embed_dim,),
            "backbone.positional_embedding": (cfg.num_tokens, w),
            "backbone.class_embedding": (w,),
            "backbone.proj": (w, v.output_dim),
            "backbone.conv1.weight": (w, 3, cfg.patch_size, cfg.patch_size),
            "backbone.transformer.resblocks.0.attn.in_proj_weight": (3 * w, w),
            "backbone.dinov2.pos_embed": (1, cfg.num_tokens, w),
            "backbone.dinov2.mask_token": (1, w),
            "backbone.dinov2.blocks.0.ls1.gamma": (w,),
            "backbone.fpn1.0.weight": (cfg.fpn_dim, cfg.fpn_dim, 2, 2),
            "backbone.fpn1.1.running_var": (cfg.fpn_dim,),
            "backbone.fpn1.3.weight": (cfg.fpn_dim, cfg.fpn_dim, 2, 2),
            "backbone.fpn2.0.weight": (cfg.fpn_dim, cfg.fpn_dim, 2, 2),
            "backbone.adapter.0.in_proj.weight": (w, w),
            "backbone.adapter.0.x_proj.weight": (cfg.adapter_dt_rank + 2 * cfg.adapter.d_state, half),
            "backbone.adapter.0.A_log": (half, cfg.adapter.d_state),
            "backbone.adapter.0.conv1d_x.weight": (half, 1, cfg.adapter.d_conv),
            "backbone.adapter.0.scale": (),
            "backbone.adapter_proj3.weight": (w, w),
            "text_encoder.positional_embedding": (cfg.text_context_length, t.width),
            "text_encoder.token_embedding.weight": (t.vocab_size, t.width),
            "text_encoder.text_projection": (t.width, t.embed_dim),
            "context_decoder.memory_proj.1.weight": (cfg.context_decoder.width, v.output_dim),
            "context_decoder.decoder.0.cross_attn.in_proj.weight": (cfg.context_decoder.width,) * 2,
            "context_decoder.out_proj.1.weight": (v.output_dim, cfg.context_decoder.width),
        }
        for k, shape in expected.items():
            self.assertEqual(tuple(sd[k].shape), shape, k)

        # repeated layers: identical key suffixes and shapes at every index
        for prefix, n in (("backbone.transformer.resblocks", v.layers), ("backbone.dinov2.blocks", v.layers),
                          ("backbone.adapter", v.layers), ("backbone.adapter_proj1", v.layers),
                          ("backbone.adapter_proj2", v.layers), ("text_encoder.transformer.resblocks", t.layers)):
            pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(.*)")
            per_layer = {}
            for k, val in sd.items():
                hit = pattern.fullmatch(k)
                if hit:
                    per_layer.setdefault(int(hit.group(1)), {})[hit.group(2)] = tuple(val.shape)
            self.assertEqual(sorted(per_layer), list(range(n)), prefix)
            for i in range(1, n):
                self.assertEqual(per_layer[i], per_layer[0], "%s.%d" % (prefix, i))

        # the 0-d entries: one MVFuser scale per fusion layer and per context-decoder layer, and BN's counter
        scalars = sorted(k for k, val in sd.items() if val.dim() == 0)
        self.assertEqual(len(scalars), v.layers + cfg.context_decoder.layers + 1)
        self.assertIn("backbone.fpn1.1.num_batches_tracked", scalars)

    def test_round_trip(self):
        a, b = self.build().eval(), self.build().eval()
        b.load_state_dict(a.state_dict(), strict=True)
        img = self.image(1)
        with torch.no_grad():
            self.assertTrue(torch.equal(a(img), b(img)))

    def test_trainable_parameters(self):
        m = self.build()
        for name, p in m.named_parameters():
            self.assertEqual(p.requires_grad, trainable_by_upstream_rule(name), name)

    def test_initialisation_traps(self):
        m = self.build()
        # gamma: 1e-4 * ones overwritten by trunc_normal_(std 1) upstream
        self.assertGreater(m.gamma.abs().max().item(), 0.1)
        # the context decoder's apply(_init_weights) zeroes its MVFuser's dt bias
        self.assertEqual(m.context_decoder.decoder[0].cross_attn.dt_proj.bias.abs().max().item(), 0.0)
        self.assertGreater(m.backbone.adapter[0].dt_proj.bias.abs().min().item(), 0.0)


class TestForward(TinyModelCase):
    def test_eval_forward(self):
        m = self.build().eval()
        img = self.image(2)
        start = time.time()
        with torch.no_grad():
            logits = m(img)
            feats = m.extract_feat(img)
            x_orig, score_map, text_emb, global_feat = m.after_extract_feat(feats)
        self.assertLess(time.time() - start, 5.0)
        s, g = self.cfg.image_size, self.cfg.grid
        self.assertEqual(tuple(logits.shape), (2, self.cfg.num_classes, s, s))
        self.assertTrue(bool(torch.isfinite(logits).all()))
        # sum over queries of softmax-class x sigmoid-mask: within [0, num_queries], not constant
        self.assertGreaterEqual(logits.min().item(), 0.0)
        self.assertLessEqual(logits.max().item(), float(self.cfg.num_classes))
        self.assertGreater(logits.std().item(), 1e-4)
        self.assertEqual([tuple(f.shape) for f in x_orig],
                         [(2, self.cfg.fpn_dim, g * 4, g * 4), (2, self.cfg.fpn_dim, g * 2, g * 2),
                          (2, self.cfg.fpn_dim, g, g), (2, self.cfg.fpn_dim, g // 2, g // 2)])
        self.assertEqual(tuple(score_map.shape), (2, self.cfg.num_classes, g, g))
        self.assertLessEqual(score_map.abs().max().item(), 1.0 + 1e-5)      # cosine similarities
        self.assertEqual(tuple(text_emb.shape), (2, self.cfg.num_classes, self.cfg.text.embed_dim))
        self.assertEqual(tuple(global_feat.shape), (2, 1, self.cfg.vision.output_dim))
        for t in (*x_orig, text_emb, global_feat):
            self.assertTrue(bool(torch.isfinite(t).all()))
            self.assertLess(t.abs().max().item(), 100.0)

    def test_batch_independence_in_eval(self):
        m = self.build().eval()
        img = self.image(2)
        with torch.no_grad():
            both = m(img)
            one = m(img[1:])
        torch.testing.assert_close(both[1:], one, rtol=1e-4, atol=1e-5)

    def test_training_losses(self):
        m = self.build(deterministic=True).train()
        img, seg = self.image(2), self.labels(2)
        losses = m(img, gt_semantic_seg=seg)
        n_dec = self.cfg.decode_head.decoder_layers
        expected = {"scr_map.loss_seg", "scr_map.acc_seg", "decode.loss_cls", "decode.loss_mask", "decode.loss_dice"}
        expected |= {"decode.d%d.%s" % (i, k) for i in range(n_dec) for k in ("loss_cls", "loss_mask", "loss_dice")}
        self.assertEqual(set(losses), expected)
        self.assertEqual(m.backbone.fpn1[1].num_batches_tracked.item(), 1)     # BN in training mode
        for k, val in losses.items():
            self.assertTrue(bool(torch.isfinite(val).all()), k)

        # the auxiliary loss: CE of score_map / tau, upsampled to the labels, averaged over all pixels
        # (ignored ones count as 0 in the mean, as mmseg's avg_non_ignore=False)
        with torch.no_grad():
            _, score_map, _, _ = m.after_extract_feat(m.extract_feat(img))
            up = F.interpolate(score_map / 0.07, size=seg.shape[-2:], mode="bilinear", align_corners=False)
            logp = up.log_softmax(dim=1)
            lab = seg[:, 0]
            valid = lab != 255
            picked = logp.gather(1, torch.where(valid, lab, 0)[:, None])[:, 0]
            ce = -(picked * valid).sum() / lab.numel()
            acc = ((up.argmax(1) == lab) & valid).sum() * 100.0 / lab.numel()
        torch.testing.assert_close(losses["scr_map.loss_seg"].detach(), ce, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(losses["scr_map.acc_seg"], acc.float())

        total_loss(losses).backward()
        for name, p in m.named_parameters():
            if p.requires_grad:
                self.assertIsNotNone(p.grad, name)
                self.assertTrue(bool(torch.isfinite(p.grad).all()), name)
            else:
                self.assertIsNone(p.grad, name)
        self.assertGreater(m.contexts.grad.abs().sum().item(), 0.0)     # through the frozen text encoder

    def test_deterministic_switch(self):
        img = self.image(2)
        m = self.build(deterministic=True).train()
        with torch.no_grad():
            a, b = m(img), m(img)
            self.assertTrue(torch.equal(a, b))
            # the only train/eval difference left is BatchNorm's batch statistics
            m.backbone.fpn1[1].eval()
            c = m(img)
            m.eval()
            self.assertTrue(torch.equal(c, m(img)))
            m.set_deterministic(False).train()
            self.assertTrue(m.backbone.transformer.resblocks[-1].drop_path.training)
            d, e = m(img), m(img)
            self.assertFalse(torch.equal(d, e))          # drop path / dropout masks differ

    def test_segment(self):
        m = self.build().eval()
        image = torch.randint(0, 256, (45, 100, 3), dtype=torch.uint8)
        labels = m.segment(image, scale=(128, 64))          # -> 128 x 58: windows clipped to 58 rows
        self.assertEqual(tuple(labels.shape), (45, 100))
        self.assertEqual(labels.dtype, torch.int64)
        self.assertTrue(bool(((labels >= 0) & (labels < self.cfg.num_classes)).all()))
        # no resize when the image already has the target scale: segment == argmax(slide(normalised))
        image = torch.randint(0, 256, (64, 128, 3), dtype=torch.uint8)
        labels = m.segment(image, scale=(128, 64))
        norm = m.normalize(image.permute(2, 0, 1)[None].float())
        self.assertTrue(torch.equal(labels, m.slide_inference(norm).argmax(dim=1)[0]))


class TestRealConfigSize(unittest.TestCase):
    def test_official_checkpoint_size(self):
        with initialisers_off():
            m = MFuserCLIP(load_config("vitl_512"))
        sd = m.state_dict()
        self.assertEqual(len(sd), 1539)
        self.assertEqual(sum(p.numel() for p in m.parameters()), 902_795_117)
        self.assertEqual(sum(p.numel() for p in m.parameters() if p.requires_grad), 170_059_629)
        self.assertEqual(sum(1 for v in sd.values() if v.dim() == 0), 26)
        self.assertEqual(len([k for k in sd if not k.startswith("decode_head.")]), entries_without_head(m.cfg))
        self.assertEqual(tuple(sd["backbone.positional_embedding"].shape), (1025, 1024))
        self.assertEqual(tuple(sd["backbone.fpn1.0.weight"].shape), (2048, 2048, 2, 2))
        self.assertEqual(tuple(sd["backbone.adapter.23.x_proj.weight"].shape), (96, 512))
        self.assertEqual(tuple(sd["context_decoder.decoder.0.cross_attn.x_proj.weight"].shape), (48, 128))
        self.assertEqual(tuple(sd["text_encoder.positional_embedding"].shape), (10, 768))
        self.assertEqual(tuple(sd["contexts"].shape), (1, 5, 768))


if __name__ == "__main__":
    unittest.main()
