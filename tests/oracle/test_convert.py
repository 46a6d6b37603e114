"""Tests of tools/convert_checkpoint.py on the tiny config.

Trained: an oracle checkpoint written the way mmseg writes one (dict with 'meta' and 'state_dict')
must round-trip bit-exactly into model.safetensors (dtypes kept) with the right config.json; broken
inputs must fail with the file named; existing outputs are kept unless --force.

Pretrained: real DINOv2 / CLIP files are not available, so the test writes small fakes with the real
key layouts and the real source grids (DINOv2 37x37 patch 14, CLIP 24x24 patch 14, CLIP text 77
positions) at the tiny widths. The CLIP fake is written twice: as a TorchScript archive with fp16
weights (like ViT-L-14-336px.pt) and as a plain torch.save'd state dict.

Run: /usr/bin/python3 -m unittest tests.oracle.test_convert   (MFUSER_SEED=N to repeat a run)
"""

import contextlib
import importlib.util
import io
import json
import os
import random
import subprocess
import tempfile
import unittest
from collections import OrderedDict

if __package__:
    from .seeding import ROOT, SeededTestCase
else:  # run as a script
    from seeding import ROOT, SeededTestCase

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfuser_ref import safetensors_io  # noqa: E402
from mfuser_ref.config import cityscapes_token_ids, load_config  # noqa: E402
from mfuser_ref.model import MFuserCLIP  # noqa: E402

TOOL = os.path.join(ROOT, "tools", "convert_checkpoint.py")
TINY = os.path.join(ROOT, "tools", "configs", "mfuser_clip_tiny.json")
_spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
convert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class ToolTestCase(SeededTestCase):
    """Seeded test with its own temporary folder, running the tool in-process."""

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, *names):
        return os.path.join(self.tmp.name, *names)

    def convert(self, *argv):
        """Run the tool in-process: (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = convert.main([str(a) for a in argv])
            except SystemExit as e:  # argparse
                rc = e.code
        return rc, out.getvalue(), err.getvalue()


def oracle_state_dict(cfg):
    """Tiny oracle weights with every entry randomised (buffers and BN statistics included)."""
    model = MFuserCLIP(cfg).init_weights()
    sd = model.state_dict()
    for k, v in sd.items():
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
        else:
            v.fill_(int(torch.randint(1, 10 ** 6, ())))
    return sd


class TrainedTest(ToolTestCase):
    def setUp(self):
        super().setUp()
        self.cfg = load_config(TINY)
        self.sd = oracle_state_dict(self.cfg)
        self.ckpt = self.path("iter_20000.pth")
        torch.save({"meta": {"iter": 20000, "mmcv_version": "1.5.0", "CLASSES": self.cfg.class_names,
                             "config": "model = dict(type='MFuser_CLIP')"},
                    "state_dict": self.sd, "optimizer": {"state": {}, "param_groups": []}},
                   self.ckpt)

    def test_roundtrip_bit_exact(self):
        rc, out, err = self.convert("trained", self.ckpt, "--out", self.path("out"), "--config", TINY,
                                    "--bpe-vocab", "")  # no merges file, even with $MFUSER_BPE_VOCAB
        self.assertEqual(rc, 0, err)
        self.assertIn("EMBEDDED TABLE", err)  # the fallback is announced
        got = safetensors_io.load_file(self.path("out", "model.safetensors"))
        self.assertEqual(set(got), set(self.sd) | {"texts"})
        for k, v in self.sd.items():
            self.assertEqual(got[k].dtype, v.dtype, k)
            self.assertEqual(got[k].shape, v.shape, k)
            self.assertTrue(torch.equal(got[k], v), k)
        self.assertEqual(got["texts"].dtype, torch.int64)
        self.assertTrue(torch.equal(got["texts"], cityscapes_token_ids()))
        self.assertEqual(len([k for k in got if got[k].dim() == 0]), 4 + 1 + 1)  # scales + nbt

        cfg = _read_json(self.path("out", "config.json"))
        tiny = _read_json(TINY)
        for key, value in tiny.items():
            self.assertEqual(cfg[key], value, key)
        self.assertEqual(cfg["conversion"]["kind"], "trained")
        # the converted weights load strictly into a fresh oracle built from config.json
        model = MFuserCLIP(load_config(self.path("out", "config.json")))
        model.load_state_dict({k: v for k, v in got.items() if k != "texts"}, strict=True)

    def test_bare_state_dict_and_ddp_prefix(self):
        bare = self.path("bare.pth")
        torch.save(OrderedDict(("module." + k, v) for k, v in self.sd.items()), bare)
        rc, _, err = self.convert("trained", bare, "--out", self.path("o"), "--config", TINY)
        self.assertEqual(rc, 0, err)
        got = safetensors_io.load_file(self.path("o", "model.safetensors"))
        self.assertTrue(all(torch.equal(got[k], v) for k, v in self.sd.items()))

    def test_dtypes_kept(self):
        sd = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in self.sd.items())
        half = self.path("half.pth")
        torch.save({"state_dict": sd, "meta": {}}, half)
        rc, out, err = self.convert("trained", half, "--out", self.path("h"), "--config", TINY)
        self.assertEqual(rc, 0, err)
        self.assertIn("dtypes kept", out)
        got = safetensors_io.load_file(self.path("h", "model.safetensors"))
        for k, v in sd.items():
            self.assertEqual(got[k].dtype, v.dtype, k)
            self.assertTrue(torch.equal(got[k], v), k)

    def test_sizes_from_shapes_and_head_overrides(self):
        # with the real config as the base, every size that shapes determine comes from the file;
        # head counts come from the options
        rc, out, err = self.convert("trained", self.ckpt, "--out", self.path("r"),
                                    "--vision-heads", 4, "--text-heads", 4, "--context-heads", 4,
                                    "--head-heads", 4)
        self.assertNotEqual(rc, 0)  # real config lists out_indices up to 23: refused, clearly
        self.assertIn("out_indices", err)
        base = _read_json(TINY)
        base["vision"].update(width=1024, layers=24, heads=16)
        base["decode_head"].update(feat_channels=256, num_heads=8, encoder_ffn=2048)
        with open(self.path("base.json"), "w") as f:
            json.dump(base, f)
        rc, out, err = self.convert("trained", self.ckpt, "--out", self.path("r"), "--config",
                                    self.path("base.json"), "--vision-heads", 4, "--head-heads", 4)
        self.assertEqual(rc, 0, err)
        cfg = _read_json(self.path("r", "config.json"))
        self.assertEqual((cfg["vision"]["width"], cfg["vision"]["layers"], cfg["vision"]["heads"]),
                         (64, 4, 4))
        self.assertEqual((cfg["decode_head"]["feat_channels"], cfg["decode_head"]["encoder_ffn"],
                          cfg["decode_head"]["num_heads"], cfg["decode_head"]["num_points"]),
                         (64, 128, 4, 4))
        self.assertIn("base config had 1024", out)
        # a head count that does not divide the width is refused
        rc, _, err = self.convert("trained", self.ckpt, "--out", self.path("r2"), "--config", TINY,
                                  "--vision-heads", 5)
        self.assertEqual(rc, 1)
        self.assertIn("vision.heads = 5", err)

    def test_class_names_need_bpe(self):
        base = _read_json(TINY)
        base["class_names"][0] = "zebra crossing"
        with open(self.path("zebra.json"), "w") as f:
            json.dump(base, f)
        rc, _, err = self.convert("trained", self.ckpt, "--out", self.path("z"), "--config",
                                  self.path("zebra.json"), "--bpe-vocab", "")
        self.assertEqual(rc, 1)
        self.assertIn("'zebra crossing' is not in the embedded", err)
        vocab = os.environ.get("MFUSER_BPE_VOCAB")
        if vocab and os.path.isfile(vocab):
            rc, _, err = self.convert("trained", self.ckpt, "--out", self.path("z"), "--config",
                                      self.path("zebra.json"), "--bpe-vocab", vocab)
            self.assertEqual(rc, 0, err)
            texts = safetensors_io.load_file(self.path("z", "model.safetensors"))["texts"]
            self.assertTrue(torch.equal(texts[1:], cityscapes_token_ids()[1:]))
            self.assertEqual(texts[0, 0].item(), 49406)

    def test_missing_unexpected_and_shape_mismatch(self):
        sd = OrderedDict(self.sd)
        del sd["backbone.adapter.1.D"]
        del sd["decode_head.mask_embed.2.bias"]
        sd["backbone.bogus.weight"] = torch.zeros(3)
        sd["gamma"] = torch.zeros(7)
        bad = self.path("bad_keys.pth")
        torch.save({"state_dict": sd, "meta": {}}, bad)
        rc, _, err = self.convert("trained", bad, "--out", self.path("x"), "--config", TINY)
        self.assertEqual(rc, 1)
        for name in ("backbone.adapter.1.D", "decode_head.mask_embed.2.bias", "backbone.bogus.weight",
                     "gamma", "bad_keys.pth", "2 missing", "1 unexpected", "shape mismatch"):
            self.assertIn(name, err)
        self.assertFalse(os.path.exists(self.path("x", "model.safetensors")))

    def test_truncated_and_garbage_files(self):
        with open(self.ckpt, "rb") as f:
            data = f.read()
        trunc = self.path("truncated.pth")
        with open(trunc, "wb") as f:
            f.write(data[: len(data) // 2])
        garbage = self.path("garbage.pth")
        with open(garbage, "wb") as f:
            f.write(bytes(random.Random(self.seed).randrange(256) for _ in range(4096)))
        empty = self.path("empty.pth")
        open(empty, "wb").close()
        for path in (trunc, garbage, empty, self.path("missing.pth")):
            rc, _, err = self.convert("trained", path, "--out", self.path("y"), "--config", TINY)
            self.assertEqual(rc, 1, path)
            self.assertIn(os.path.basename(path), err)
            self.assertIn("error:", err)
        not_ckpt = self.path("list.pth")
        torch.save([1, 2, 3], not_ckpt)
        rc, _, err = self.convert("trained", not_ckpt, "--out", self.path("y"), "--config", TINY)
        self.assertEqual(rc, 1)
        self.assertIn("list.pth", err)
        self.assertFalse(os.path.exists(self.path("y")))

    def test_refuse_overwrite_cli(self):
        out = self.path("cli")
        argv = ["trained", self.ckpt, "--out", out, "--config", TINY]
        r = subprocess.run(["/usr/bin/python3", TOOL] + argv, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)  # the command line, once
        self.assertIn("wrote", r.stdout)
        model_file = os.path.join(out, "model.safetensors")
        before = _read_bytes(model_file)
        rc, _, err = self.convert(*argv)
        self.assertEqual(rc, 1)
        self.assertIn("refusing to overwrite", err)
        self.assertIn("--force", err)
        self.assertEqual(_read_bytes(model_file), before)
        rc, _, err = self.convert(*argv, "--force")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "model.safetensors"])  # no temps
        self.assertEqual(self.convert("trained")[0], 2)  # usage error


class SafetensorsTest(ToolTestCase):
    """The output format, written and read without the `safetensors` package."""

    def tensors(self):
        return OrderedDict([
            ("w", torch.randn(3, 4)), ("scalar", torch.tensor(1.5)), ("ids", torch.randint(0, 99, (2, 5))),
            ("bf", torch.randn(7).bfloat16()), ("h", torch.randn(2, 3).half()),
            ("mask", torch.tensor([True, False, True])), ("empty", torch.zeros(0, 3)),
            ("d", torch.randn(2, 2).double()), ("i8", torch.tensor([1, -2, 3], dtype=torch.int8)),
            ("t", torch.randn(4, 5).t()), ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
        ])

    def test_roundtrip_and_layout(self):
        ts = self.tensors()
        path = self.path("x.safetensors")
        safetensors_io.save_file(ts, path, {"k": "v"})
        got, meta = safetensors_io.load_file(path, with_metadata=True)
        self.assertEqual(meta, {"k": "v"})
        self.assertEqual(list(got), list(ts))  # header order = the writer's order
        for k, v in ts.items():
            self.assertEqual((got[k].dtype, got[k].shape), (v.dtype, v.shape), k)
            self.assertTrue(torch.equal(got[k], v), k)
        # the layout, parsed here independently of the reader
        raw = _read_bytes(path)
        n = int.from_bytes(raw[:8], "little")
        self.assertEqual((8 + n) % 8, 0)
        header = json.loads(raw[8:8 + n])
        self.assertEqual(header.pop("__metadata__"), {"k": "v"})
        codes = {"w": "F32", "scalar": "F32", "ids": "I64", "bf": "BF16", "h": "F16", "mask": "BOOL",
                 "empty": "F32", "d": "F64", "i8": "I8", "t": "F32", "u8": "U8"}
        spans = []
        for k, info in header.items():
            self.assertEqual(info["dtype"], codes[k])
            self.assertEqual(info["shape"], list(ts[k].shape))
            begin, end = info["data_offsets"]
            itemsize = ts[k].element_size()
            self.assertEqual(begin % itemsize, 0, k)  # every tensor aligned to its element size
            self.assertEqual(end - begin, ts[k].numel() * itemsize)
            spans.append((begin, end))
        spans.sort()
        self.assertEqual(spans[0][0], 0)
        self.assertTrue(all(a[1] == b[0] for a, b in zip(spans, spans[1:])))
        self.assertEqual(spans[-1][1], len(raw) - 8 - n)
        b, e = header["w"]["data_offsets"]
        self.assertEqual(raw[8 + n + b:8 + n + e], ts["w"].numpy().tobytes())  # little-endian f32

    def test_truncated_and_garbage(self):
        path = self.path("x.safetensors")
        safetensors_io.save_file(self.tensors(), path)
        raw = _read_bytes(path)
        bad = self.path("bad.safetensors")
        for data in (raw[:4], raw[:40], raw[:-1], raw + b"\0", b"\xff" * 64):
            with open(bad, "wb") as f:
                f.write(data)
            with self.assertRaisesRegex(safetensors_io.SafetensorsError, "bad.safetensors"):
                safetensors_io.load_file(bad)


# ---------------------------------------------------------------------------------------------
# pretrained conversion on fake files


class _Holder(nn.Module):
    """A module tree whose state dict is a given flat dict (to be scripted like CLIP's archive)."""

    def __init__(self, flat):
        super().__init__()
        for name, t in flat.items():
            mod = self
            parts = name.split(".")
            for p in parts[:-1]:
                if p not in mod._modules:
                    mod.add_module(p, nn.Module())
                mod = mod._modules[p]
            mod.register_parameter(parts[-1], nn.Parameter(t, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fake_pretrained(cfg, dino_grid=37, clip_grid=24, src_patch=14, text_ctx=77):
    """(DINOv2 state dict, CLIP state dict) with the official files' key layouts at cfg's widths."""
    sd = MFuserCLIP(cfg).state_dict()
    dino, clip = OrderedDict(), OrderedDict()
    for k, v in sd.items():
        if k.startswith("backbone.dinov2."):
            dino[k[len("backbone.dinov2."):]] = torch.randn_like(v)
    w = cfg.vision.width
    dino["pos_embed"] = torch.randn(1, 1 + dino_grid * dino_grid, w)
    dino["patch_embed.proj.weight"] = torch.randn(w, 3, src_patch, src_patch)
    for k, v in sd.items():
        if k.startswith("backbone.") and not k.startswith(("backbone.dinov2", "backbone.adapter",
                                                            "backbone.fpn")):
            clip["visual." + k[len("backbone."):]] = torch.randn_like(v)
    clip["visual.positional_embedding"] = torch.randn(1 + clip_grid * clip_grid, w)
    clip["visual.conv1.weight"] = torch.randn(w, 3, src_patch, src_patch)
    for k, v in sd.items():
        if k.startswith("text_encoder."):
            clip[k[len("text_encoder."):]] = torch.randn_like(v)
    clip["positional_embedding"] = torch.randn(text_ctx, cfg.text.width)
    clip["logit_scale"] = torch.tensor(4.6052)
    return dino, clip


class PretrainedTest(ToolTestCase):
    def setUp(self):
        super().setUp()
        self.cfg = load_config(TINY)
        self.dino, clip = fake_pretrained(self.cfg)
        self.clip16 = OrderedDict((k, v.half()) for k, v in clip.items())  # the real file is fp16
        self.dino_file = self.path("dinov2_vitl14_pretrain.pth")
        torch.save(self.dino, self.dino_file)
        self.clip_jit = self.path("ViT-L-14-336px.pt")
        torch.jit.save(torch.jit.script(_Holder(self.clip16)), self.clip_jit)
        self.clip_sd = self.path("clip_state_dict.pt")
        torch.save(self.clip16, self.clip_sd)

    def run_pretrained(self, clip_file, out, seed, *extra):
        return self.convert("pretrained", "--dinov2", self.dino_file, "--clip", clip_file,
                            "--out", self.path(out), "--config", TINY, "--seed", seed, *extra)

    def test_shapes_and_resizing(self):
        rc, out, err = self.run_pretrained(self.clip_jit, "jit", 7)
        self.assertEqual(rc, 0, err)
        self.assertIn("torchscript", out)
        got = safetensors_io.load_file(self.path("jit", "model.safetensors"))
        model = MFuserCLIP(self.cfg)
        expected = model.state_dict()
        self.assertEqual(set(got), set(expected) | {"texts"})
        for k, v in expected.items():
            self.assertEqual(tuple(got[k].shape), tuple(v.shape), k)
            self.assertEqual(got[k].dtype, v.dtype, k)
        model.load_state_dict({k: v for k, v in got.items() if k != "texts"}, strict=True)

        g, w = self.cfg.grid, self.cfg.vision.width
        # DINOv2 pos_embed: grid rows bicubic 37x37 -> g x g (permuted view, as upstream)
        pos = self.dino["pos_embed"]
        grid = pos[:, 1:].reshape(1, 37, 37, w).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
        want = torch.cat([pos[:, :1], want.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
        self.assertTrue(torch.equal(got["backbone.dinov2.pos_embed"], want))
        want = F.interpolate(self.dino["patch_embed.proj.weight"], size=(16, 16), mode="bicubic",
                             align_corners=False)
        self.assertTrue(torch.equal(got["backbone.dinov2.patch_embed.proj.weight"], want))
        # CLIP: fp16 file -> float32 first, then bilinear resizes
        cpos = self.clip16["visual.positional_embedding"].float()
        grid = cpos[1:].reshape(1, 24, 24, w).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=False)
        want = torch.cat([cpos[:1], want.reshape(w, g * g).permute(1, 0)], dim=0)
        self.assertTrue(torch.equal(got["backbone.positional_embedding"], want))
        contiguous = F.interpolate(grid.contiguous(), size=(g, g), mode="bilinear",
                                   align_corners=False).reshape(w, g * g).permute(1, 0)
        self.assertLess((got["backbone.positional_embedding"][1:] - contiguous).abs().max().item(),
                        1e-5)
        want = F.interpolate(self.clip16["visual.conv1.weight"].float(), size=(16, 16),
                             mode="bilinear", align_corners=False)
        self.assertTrue(torch.equal(got["backbone.conv1.weight"], want))
        # copied weights
        for k, v in self.dino.items():
            if k not in ("pos_embed", "patch_embed.proj.weight"):
                self.assertTrue(torch.equal(got["backbone.dinov2." + k], v), k)
        for k, v in self.clip16.items():
            if k.startswith("visual.") and k not in ("visual.positional_embedding",
                                                     "visual.conv1.weight"):
                self.assertTrue(torch.equal(got["backbone." + k[7:]], v.float()), k)
            elif k == "positional_embedding":  # truncated 77 -> 10 rows
                self.assertTrue(torch.equal(got["text_encoder.positional_embedding"],
                                            v.float()[:self.cfg.text_context_length]))
            elif not k.startswith("visual.") and k != "logit_scale":
                self.assertTrue(torch.equal(got["text_encoder." + k], v.float()), k)
        self.assertIn("logit_scale", out)  # listed as ignored
        self.assertTrue(torch.equal(got["texts"], cityscapes_token_ids()))

    def test_seeded_fresh_weights_and_plain_state_dict(self):
        rc, _, err = self.run_pretrained(self.clip_jit, "a", 3)
        self.assertEqual(rc, 0, err)
        rc, out, err = self.run_pretrained(self.clip_sd, "b", 3)
        self.assertEqual(rc, 0, err)
        self.assertIn("torch.load", out)
        rc, _, err = self.run_pretrained(self.clip_sd, "c", 4)
        self.assertEqual(rc, 0, err)
        a = safetensors_io.load_file(self.path("a", "model.safetensors"))
        b = safetensors_io.load_file(self.path("b", "model.safetensors"))
        c = safetensors_io.load_file(self.path("c", "model.safetensors"))
        for k in a:  # same seed, same sources (TorchScript or not): identical files
            self.assertTrue(torch.equal(a[k], b[k]), k)
        fresh = [k for k in a if k.startswith(("backbone.adapter", "backbone.fpn", "contexts",
                                               "context_decoder", "decode_head"))
                 and a[k].is_floating_point() and a[k].numel() > 1 and a[k].std() > 0]
        self.assertTrue(fresh)
        self.assertTrue(any(not torch.equal(a[k], c[k]) for k in fresh))
        pretrained = [k for k in a if k.startswith(("backbone.dinov2", "text_encoder", "backbone.conv1"))]
        self.assertTrue(all(torch.equal(a[k], c[k]) for k in pretrained))
        cfg = _read_json(self.path("c", "config.json"))
        self.assertEqual(cfg["conversion"]["seed"], 4)
        self.assertIn("dinov2.pos_embed", cfg["conversion"]["resized"])

    def test_wrong_files(self):
        # DINOv2 file lacking a block weight; CLIP file lacking a text weight
        dino = OrderedDict(self.dino)
        del dino["blocks.1.ls2.gamma"]
        torch.save(dino, self.dino_file)
        clip = OrderedDict(self.clip16)
        del clip["ln_final.bias"]
        torch.save(clip, self.clip_sd)
        rc, _, err = self.run_pretrained(self.clip_sd, "w", 0)
        self.assertEqual(rc, 1)
        self.assertIn("blocks.1.ls2.gamma", err)
        self.assertIn("ln_final.bias", err)
        self.assertFalse(os.path.exists(self.path("w")))
        # swapped files and a truncated CLIP archive: clear errors naming the file
        rc, _, err = self.convert("pretrained", "--dinov2", self.clip_jit, "--clip", self.dino_file,
                                  "--out", self.path("s"), "--config", TINY)
        self.assertEqual(rc, 1)
        self.assertIn("ViT-L-14-336px.pt", err)
        with open(self.clip_jit, "rb") as f:
            data = f.read()
        with open(self.clip_jit, "wb") as f:
            f.write(data[:len(data) // 3])
        torch.save(self.dino, self.dino_file)
        rc, _, err = self.run_pretrained(self.clip_jit, "t", 0)
        self.assertEqual(rc, 1)
        self.assertIn("ViT-L-14-336px.pt", err)


if __name__ == "__main__":
    unittest.main()
