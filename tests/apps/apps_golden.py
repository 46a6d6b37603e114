#!/usr/bin/env python3
"""Golden data for the apps' test-time pipeline (tests/apps/*_test.cpp), from the PyTorch oracle.

    apps_golden.py pipeline --out FILE.safetensors
        slide windows (mfuser_ref.model.slide_windows) for many image / crop / stride sizes, keep-ratio
        target sizes (mfuser_ref.model.rescale_size), and uint8 INTER_LINEAR resizes.
    apps_golden.py segment --model-dir DIR --out FILE.safetensors
        the whole pipeline on the tiny model's weights (DIR = the golden_model_tiny fixture's folder): the
        oracle's normalize -> slide_inference (or whole encode_decode) -> bilinear resize back -> argmax,
        in float64 on the float32 weights, for a few image sizes above the 64x64 crop.

The resize reference is cv2.resize(..., INTER_LINEAR) (what mmcv's imrescale calls) when `import cv2` works;
then the Python re-implementation below (cv2_linear_u8, written from OpenCV's fixed-point semantics) is checked
against it on every case. Without cv2 the re-implementation is the reference, and the metadata says so.
The oracle's own segment() resizes with torch bilinear instead (its docstring notes the 1-level difference), so
the segment cases resize with the same cv2-exact function before the oracle's normalize.

Fresh random seed each run (printed, in the metadata), MFUSER_SEED pins it.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "reference"))
from mfuser_ref.config import Config  # noqa: E402
from mfuser_ref.model import MFuserCLIP, rescale_size, slide_windows  # noqa: E402
from mfuser_ref.safetensors_io import load_file, save_file  # noqa: E402

try:
    import cv2  # noqa: E402
except ImportError:  # the Debian package python3-opencv is optional
    cv2 = None


def seed_from_env():
    s = os.environ.get("MFUSER_SEED")
    return int(s) if s else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def cv2_linear_u8(src, out_h, out_w):
    """cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_LINEAR) for uint8 [H, W, C], bit for bit:
    11-bit coefficients rint(2048 * w) from float32 offsets; exact int32 horizontal pass (a column outside
    [0, W - 1) takes that border pixel x 2048); vertical pass in OpenCV's int16 SIMD arithmetic
    (((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2, rows clamped into the image. An exact
    2x downscale (INTER_AREA inside OpenCV) gives the same numbers through this formula."""
    H, W, C = src.shape
    if (H, W) == (out_h, out_w):
        return src.copy()

    def taps(n_in, n_out):
        scale = np.float64(1.0) / (np.float64(n_out) / np.float64(n_in))
        f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
        s = np.floor(f).astype(np.int64)
        return s, (f - s.astype(np.float32)).astype(np.float32)

    def coef(v):
        return np.rint(v.astype(np.float32) * np.float32(2048)).astype(np.int64)

    sx, fx = taps(W, out_w)
    border = (sx < 0) | (sx >= W - 1)
    fx = np.where(border, np.float32(0), fx).astype(np.float32)
    sx = np.clip(sx, 0, W - 1)
    a0, a1 = coef(np.float32(1) - fx), coef(fx)
    s = src.astype(np.int64)
    h = s[:, sx, :] * a0[None, :, None] + s[:, np.minimum(sx + 1, W - 1), :] * a1[None, :, None]
    h = np.where(border[None, :, None], s[:, sx, :] * 2048, h)

    sy, fy = taps(H, out_h)
    b0, b1 = coef(np.float32(1) - fy)[:, None, None], coef(fy)[:, None, None]
    h0, h1 = h[np.clip(sy, 0, H - 1)], h[np.clip(sy + 1, 0, H - 1)]
    out = ((((b0 * (h0 >> 4)) >> 16) + ((b1 * (h1 >> 4)) >> 16) + 2) >> 2)
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_reference(src, out_h, out_w):
    """The reference resize: cv2 when present (and the re-implementation checked against it)."""
    mine = cv2_linear_u8(src, out_h, out_w)
    if cv2 is None:
        return mine
    ref = cv2.resize(src, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    if not np.array_equal(ref, mine):
        bad = np.argwhere(ref != mine)[0]
        raise SystemExit(f"cv2_linear_u8 differs from cv2.resize for {src.shape} -> {out_h}x{out_w} at {bad}: "
                         f"cv2 {ref[tuple(bad)]}, ours {mine[tuple(bad)]}")
    return ref


def resize_source():
    if cv2 is None:
        return "python re-implementation of cv2's fixed-point INTER_LINEAR (cv2 not importable)"
    return f"cv2 {cv2.__version__} (the python re-implementation agreed on every case)"


def pipeline(out, seed):
    rng = np.random.default_rng(seed)
    tensors = {}
    # slide windows: (h, w, crop, stride), crop / stride as int or (h, w)
    window_cases = [
        (1024, 2048, 512, 341),   # Cityscapes: 3 x 6 = 18
        (720, 1280, 512, 341),    # BDD100K
        (1024, 1863, 512, 341),   # GTA5 at (2048, 1024)
        (1023, 2047, 512, 341), (777, 1001, 512, 341), (513, 855, 512, 341), (512, 512, 512, 341),
        (511, 700, 512, 341), (300, 400, 512, 341), (100, 1000, 512, 341), (1, 1, 512, 341),
        (853, 853, 512, 341), (854, 854, 512, 341), (855, 855, 512, 341),
        (64, 128, 64, 43), (96, 103, 64, 43), (40, 90, 64, 43), (65, 65, 64, 43),
        (600, 900, (512, 384), (341, 256)),
    ]
    for h, w, crop, stride in window_cases:
        ch, cw = (crop, crop) if isinstance(crop, int) else crop
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        boxes = slide_windows(h, w, crop, stride)
        tensors[f"windows/{h}x{w}/{ch}x{cw}/{sh}x{sw}"] = torch.tensor(boxes, dtype=torch.int64)

    # keep-ratio target sizes: rows (w, h, long, short, new_w, new_h)
    rescale_cases = [(2048, 1024, 2048, 1024), (1280, 720, 1280, 720), (1280, 720, 2048, 1024),
                     (1914, 1052, 2048, 1024), (1914, 1052, 1280, 720), (4000, 3000, 2048, 1024),
                     (3264, 2448, 2048, 1024), (1024, 2048, 2048, 1024), (1, 1, 2048, 1024), (333, 777, 1280, 720),
                     (130, 75, 128, 64), (97, 90, 160, 96), (100, 70, 112, 80), (2048, 1024, 1024, 2048)]
    for _ in range(20):
        w, h = (int(v) for v in rng.integers(1, 5000, size=2))
        rescale_cases.append((w, h, 2048, 1024))
    rows = [(w, h, lo, sh) + tuple(rescale_size(w, h, (lo, sh))) for w, h, lo, sh in rescale_cases]
    tensors["rescale"] = torch.tensor(rows, dtype=torch.int64)

    # uint8 INTER_LINEAR resizes: fixed cases that exercise each branch, then random ones
    resize_cases = [
        (1052, 1914, 1024, 1863),  # GTA5 -> (2048, 1024)
        (360, 640, 576, 1024),     # upscale
        (200, 300, 100, 150),      # exact 2x down (INTER_AREA inside OpenCV)
        (50, 60, 100, 120),        # exact 2x up
        (77, 91, 77, 45),          # one axis only
        (77, 91, 30, 91),
        (1, 9, 1, 4), (9, 1, 4, 1), (1, 1, 3, 5), (5, 7, 1, 1),
        (75, 130, 64, 111), (90, 97, 96, 103), (70, 100, 78, 112),
    ]
    for _ in range(24):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 160, size=4))
        resize_cases.append((h, w, oh, ow))
    for i, (h, w, oh, ow) in enumerate(resize_cases):
        if i == 2:
            src = np.full((h, w, 3), 255, np.uint8)  # saturation
        else:
            src = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        tensors[f"resize/{i}/src"] = torch.from_numpy(src)
        tensors[f"resize/{i}/dst"] = torch.from_numpy(resize_reference(src, oh, ow))

    meta = {"seed": str(seed), "generator": "tests/apps/apps_golden.py pipeline", "resize_reference": resize_source()}
    save_file(tensors, out, meta)
    print(f"wrote {out}: {len(window_cases)} window grids, {len(rows)} target sizes, {len(resize_cases)} resizes "
          f"(reference: {meta['resize_reference']}), seed {seed}")


# Segment cases for the tiny model (crop 64, stride 43): name, image H, W, scale (long, short), mode, batch.
SEGMENT_CASES = [
    ("same_size_3_windows", 64, 128, (128, 64), "slide", 0),
    ("downscale", 75, 130, (128, 64), "slide", 0),
    ("upscale_batches_of_3", 90, 97, (160, 96), "slide", 3),
    ("smaller_than_crop", 40, 90, (90, 40), "slide", 0),
    ("whole", 70, 100, (112, 80), "whole", 0),
]


def segment(model_dir, out, seed):
    torch.set_grad_enabled(False)
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    cfg = Config(manifest["config"])
    state = load_file(os.path.join(model_dir, "model.safetensors"))
    texts = state.pop("texts")
    model = MFuserCLIP(cfg, texts=texts).eval()
    model.load_state_dict(state)
    model64 = copy.deepcopy(model).double()  # float64 on the same float32 weights: the exact function
    rng = np.random.default_rng(seed)
    tensors, cases = {}, []
    for name, H, W, scale, mode, batch in SEGMENT_CASES:
        rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        new_w, new_h = rescale_size(W, H, scale)
        resized = resize_reference(rgb, new_h, new_w) if (new_h, new_w) != (H, W) else rgb
        img = model.normalize(torch.from_numpy(resized).permute(2, 0, 1)[None].float())  # float32, as ours
        logits = {}
        for key, m, x in (("f64", model64, img.double()), ("f32", model, img)):
            if mode == "slide":
                lg = m.slide_inference(x)
            else:
                lg = m.encode_decode(x)  # mmseg whole_inference: one forward, logits at the input size
            logits[key] = F.interpolate(lg, size=(H, W), mode="bilinear", align_corners=False)[0]
        ref = logits["f64"]
        labels = F.softmax(ref, dim=0).argmax(dim=0)
        top2 = ref.topk(2, dim=0).values
        windows = len(slide_windows(new_h, new_w, cfg.slide.crop, cfg.slide.stride)) if mode == "slide" else 1
        rel32 = float((logits["f32"].double() - ref).norm() / ref.norm())
        tensors[f"{name}/rgb"] = torch.from_numpy(rgb)
        tensors[f"{name}/logits"] = ref.float()
        tensors[f"{name}/labels"] = labels.to(torch.uint8)
        tensors[f"{name}/margin"] = (top2[0] - top2[1]).float()
        cases.append({"name": name, "height": H, "width": W, "scale": list(scale), "mode": mode, "batch": batch,
                      "resized": [new_h, new_w], "windows": windows, "oracle_fp32_rel_error": rel32,
                      "oracle_fp32_label_disagreement": int((logits["f32"].argmax(0) != labels).sum())})
        print(f"{name:24s} {H}x{W} -> {new_h}x{new_w} {mode} {windows} window(s); oracle fp32 vs float64: "
              f"rel {rel32:.2e}, {cases[-1]['oracle_fp32_label_disagreement']} label(s) differ")
    meta = {"seed": str(seed), "generator": "tests/apps/apps_golden.py segment", "model_seed": str(manifest["seed"]),
            "cases": json.dumps(cases), "resize_reference": resize_source()}
    save_file(tensors, out, meta)
    print(f"wrote {out}: {len(cases)} cases on the weights of {model_dir}, seed {seed}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["pipeline", "segment"])
    p.add_argument("--out", required=True)
    p.add_argument("--model-dir", help="segment: the tiny model's golden folder (model.safetensors, manifest.json)")
    args = p.parse_args(argv)
    seed = seed_from_env()
    print(f"seed {seed} (MFUSER_SEED={seed} reproduces)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.what == "pipeline":
        pipeline(args.out, seed)
    else:
        if not args.model_dir:
            p.error("segment needs --model-dir")
        segment(args.model_dir, args.out, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
