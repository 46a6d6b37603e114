"""Tests of the golden-data generator tools/reference/golden.py on the tiny config.

The generator must run in seconds, write a complete manifest, keep every recorded activation O(1),
and its model.safetensors must reproduce the golden logits bit-exactly in a fresh oracle.

Run: /usr/bin/python3 -m unittest tests.oracle.test_golden   (MFUSER_SEED=N to repeat a run)
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import tempfile
import time
import unittest

if __package__:
    from .seeding import ROOT, ReportsSeed, fresh_seed, report_seed
else:  # run as a script
    from seeding import ROOT, ReportsSeed, fresh_seed, report_seed

import torch  # noqa: E402

from mfuser_ref import safetensors_io  # noqa: E402
from mfuser_ref.config import cityscapes_token_ids, load_config  # noqa: E402
from mfuser_ref.model import MFuserCLIP  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "reference", "golden.py")
TINY = os.path.join(ROOT, "tools", "configs", "mfuser_clip_tiny.json")
_spec = importlib.util.spec_from_file_location("golden", TOOL)
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


class GoldenTest(ReportsSeed):
    """One training-mode generation per class (seeded afresh each run), checked from all sides."""

    @classmethod
    def setUpClass(cls):
        cls.seed = fresh_seed()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = cls.tmp.name
        start = time.time()
        try:
            cls.manifest = golden.generate(TINY, cls.seed, cls.out, train=True, quiet=True)
        except Exception:
            report_seed("golden generation", cls.seed)
            raise
        cls.seconds = time.time() - start
        cls.cfg = load_config(TINY)
        cls.files = {n: safetensors_io.load_file(os.path.join(cls.out, n)) for n in
                     ("model.safetensors", "input.safetensors", "golden.safetensors")}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_fast(self):
        self.assertLess(self.seconds, 30.0)

    def test_manifest_complete(self):
        with open(os.path.join(self.out, "manifest.json")) as f:
            manifest = json.load(f)
        self.assertEqual(manifest["seed"], self.seed)
        with open(TINY) as f:
            self.assertEqual(manifest["config"], json.load(f))
        self.assertTrue(manifest["train"])
        for name, tensors in self.files.items():
            listed = manifest["files"][name]
            self.assertEqual(list(listed), list(tensors), name)
            for k, v in tensors.items():
                self.assertEqual(listed[k]["shape"], list(v.shape), k)
                self.assertEqual(listed[k]["dtype"], str(v.dtype).replace("torch.", ""), k)

        g = self.files["golden.safetensors"]
        cfg = self.cfg
        want = ["backbone.conv1", "backbone.dinov2.patch_embed", "backbone.ln_post",
                "backbone.adapter_proj3", "text_encoder", "context_decoder",
                "context_decoder.decoder.0.cross_attn", "decode_head.pixel_decoder.mask_feature",
                "text_embeddings", "score_map", "logits"]
        for i in range(cfg.vision.layers):
            want += [f"backbone.transformer.resblocks.{i}", f"backbone.dinov2.blocks.{i}",
                     f"backbone.adapter.{i}", f"backbone.adapter_proj1.{i}",
                     f"backbone.adapter_proj2.{i}"]
        want += [f"backbone.fpn{i}" for i in range(1, 5)]
        want += [f"backbone.features.{i}" for i in range(4)]
        want += [f"decode_head.pixel_decoder.memory.{i}" for i in range(cfg.decode_head.num_levels)]
        want += [f"decode_head.pixel_decoder.encoder.layers.{i}"
                 for i in range(cfg.decode_head.encoder_layers)]
        for j in range(cfg.decode_head.decoder_layers + 1):
            want += [f"decode_head.cls_pred.{j}", f"decode_head.mask_pred.{j}"]
        want += [f"decode_head.transformer_decoder.layers.{j}"
                 for j in range(cfg.decode_head.decoder_layers)]
        want += ["train." + n for n in want if n != "logits"]
        want += ["loss.total", "loss.scr_map.loss_seg", "loss.decode.loss_cls",
                 "loss.decode.loss_mask", "loss.decode.loss_dice", "points.0"]
        missing = [n for n in want if n not in g]
        self.assertEqual(missing, [])

        # shapes that follow from the config
        B, K, S, grid = 2, cfg.num_classes, cfg.image_size, cfg.grid
        self.assertEqual(tuple(g["logits"].shape), (B, K, S, S))
        self.assertEqual(tuple(g["decode_head.cls_pred.0"].shape), (B, K, K + 1))
        self.assertEqual(tuple(g["backbone.fpn1"].shape), (B, 2 * cfg.vision.width, 4 * grid, 4 * grid))
        self.assertEqual(tuple(g["backbone.transformer.resblocks.0"].shape),
                         (grid * grid + 1, B, cfg.vision.width))  # sequence-first, as upstream

        # a gradient for every trainable parameter, all finite and most of them non-zero
        model = MFuserCLIP(cfg)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        self.assertEqual(sorted(k[5:] for k in g if k.startswith("grad.")), sorted(trainable))
        self.assertTrue(all(torch.isfinite(g["grad." + n]).all() for n in trainable))
        nonzero = sum(bool(g["grad." + n].abs().sum() > 0) for n in trainable)
        self.assertGreater(nonzero, 0.95 * len(trainable))
        self.assertTrue(frozen and not any(("grad." + n) in g for n in frozen))
        self.assertIn("input_grad.backbone.adapter.0", g)
        self.assertIn("input_grad.backbone.transformer.resblocks.1", g)
        self.assertEqual(g["input_grad.backbone.adapter.0"].shape, g["backbone.adapter.0"].shape)
        # d loss / d the module outputs
        self.assertEqual(g["output_grad.backbone.adapter.0"].shape, g["train.backbone.adapter.0"].shape)
        self.assertIn("output_grad.decode_head.pixel_decoder.mask_feature", g)
        self.assertEqual(self.manifest["train_info"]["unused_trainable"], [])

        # loss.total is the sum of the loss entries
        total = sum(float(v) for k, v in g.items() if k.startswith("loss.") and "loss" in k[5:]
                    and k != "loss.total")
        self.assertAlmostEqual(float(g["loss.total"]), total, places=3)

    def test_activations_order_one(self):
        g = self.files["golden.safetensors"]
        checked = 0
        for k, v in g.items():
            if k.startswith(("grad.", "input_grad.", "output_grad.", "loss.", "points.")) or not v.is_floating_point():
                continue
            self.assertTrue(torch.isfinite(v).all(), k)
            r = float(v.double().square().mean().sqrt())
            self.assertGreaterEqual(r, 1e-2, k)
            self.assertLessEqual(r, 1e2, k)
            checked += 1
        self.assertGreater(checked, 100)
        # the fusion path is exercised: MVFuser outputs are not scaled down to ~1e-3
        self.assertGreater(float(g["backbone.adapter.0"].square().mean().sqrt()), 0.05)

    def test_inputs(self):
        inp = self.files["input.safetensors"]
        B, S = 2, self.cfg.image_size
        self.assertEqual(tuple(inp["img"].shape), (B, 3, S, S))
        self.assertEqual(inp["img"].dtype, torch.float32)
        model = MFuserCLIP(self.cfg)
        self.assertTrue(torch.equal(model.normalize(inp["rgb"].float()), inp["img"]))
        seg = inp["gt_semantic_seg"]
        self.assertEqual((tuple(seg.shape), seg.dtype), ((B, 1, S, S), torch.int64))
        valid = seg[seg != 255]
        self.assertTrue(bool(((valid >= 0) & (valid < self.cfg.num_classes)).all()))

    def test_reload_reproduces_logits_bit_exactly(self):
        weights = dict(self.files["model.safetensors"])
        texts = weights.pop("texts")
        self.assertTrue(torch.equal(texts, cityscapes_token_ids()))
        self.assertTrue(all(v.dtype in (torch.float32, torch.int64) for v in weights.values()))
        torch.manual_seed(self.seed + 12345)  # a different init, fully overwritten by the load
        model = MFuserCLIP(self.cfg, texts=texts)
        model.load_state_dict(weights, strict=True)
        model.eval()
        with torch.no_grad():
            logits = model(self.files["input.safetensors"]["img"])
        want = self.files["golden.safetensors"]["logits"]
        self.assertEqual(logits.dtype, want.dtype)
        self.assertTrue(torch.equal(logits, want),
                        f"max |diff| {(logits - want).abs().max().item():.3g}")

    def test_reload_reproduces_loss_and_grads(self):
        weights = dict(self.files["model.safetensors"])
        texts = weights.pop("texts")
        model = MFuserCLIP(self.cfg, texts=texts, deterministic=True)
        model.load_state_dict(weights, strict=True)
        model.decode_head.loss_seed = self.manifest["point_seed"]
        model.train()
        inp = self.files["input.safetensors"]
        from mfuser_ref.model import total_loss
        total = total_loss(model(inp["img"], gt_semantic_seg=inp["gt_semantic_seg"]))
        total.backward()
        g = self.files["golden.safetensors"]
        self.assertTrue(torch.equal(total.detach(), g["loss.total"]))
        for n, p in model.named_parameters():
            if p.requires_grad:
                self.assertTrue(torch.equal(p.grad, g["grad." + n]), n)


class GoldenCliTest(ReportsSeed):
    def test_cli_eval_only_and_overwrite(self):
        self.seed = seed = fresh_seed()
        with tempfile.TemporaryDirectory() as d:
            cmd = ["/usr/bin/python3", TOOL, "--config", TINY, "--seed", str(seed), "--out", d]
            r = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, f"MFUSER_SEED={seed}\n{r.stderr}")
            self.assertIn("rms", r.stdout)
            self.assertEqual(sorted(os.listdir(d)), ["golden.safetensors", "input.safetensors",
                                                     "manifest.json", "model.safetensors"])
            g = safetensors_io.read_header(os.path.join(d, "golden.safetensors"))
            self.assertFalse(any(k.startswith(("train.", "grad.", "loss.")) for k in g))
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = golden.main(cmd[2:])
            self.assertEqual(rc, 1)
            self.assertIn("--force", err.getvalue())


if __name__ == "__main__":
    unittest.main()
