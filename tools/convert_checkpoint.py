#!/usr/bin/python3
"""Convert MFuser-CLIP weights into the runtime's format: DIR/model.safetensors + DIR/config.json.

Two sources:

  trained     an official trained MFuser-CLIP checkpoint (mmseg format: a dict with 'state_dict'
              and 'meta', or a bare state dict). Tensors are copied bit for bit, dtypes kept.
              Sizes are read off the tensor shapes; what shapes cannot tell (attention head counts,
              out_indices, GroupNorm groups, class names, slide window) comes from --config
              (default: the released ViT-L/512 config) or the --*-heads overrides.

      convert_checkpoint.py trained CKPT.pth --out DIR [--config JSON] [--bpe-vocab FILE]

  pretrained  the starting point of fine-tuning, built as the official constructor does: DINOv2
              ViT-L/14 (dinov2_vitl14_pretrain.pth) and OpenAI CLIP ViT-L/14-336 (ViT-L-14-336px.pt,
              a TorchScript archive; a plain torch.save'd state dict or module also works) resized
              to patch 16 at the config's crop size, every other weight freshly initialised by the
              oracle's init_weights() under --seed.

      convert_checkpoint.py pretrained --dinov2 FILE --clip FILE --out DIR [--config JSON] [--seed N]

Both add the class-name token ids as an int64 tensor ``texts`` [num_classes, context_length] to
model.safetensors (from the CLIP BPE when --bpe-vocab names bpe_simple_vocab_16e6.txt.gz, otherwise
from the embedded table of the 19 Cityscapes names, with a loud warning). config.json is the model
config (same keys as tools/configs/*.json) plus a "conversion" section saying where things came from.

Outputs are never overwritten without --force, and are written atomically (temporary file + rename).
Exit status: 0 done, 1 invalid input (wrong/truncated file, key or shape mismatch), 2 usage error.

Run with Debian's /usr/bin/python3 (PyTorch 1.13).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pickle
import re
import sys
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfuser_ref import safetensors_io  # noqa: E402
from mfuser_ref import tokenizer as tok  # noqa: E402
from mfuser_ref.config import CONFIG_DIR, Config  # noqa: E402

DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "mfuser_clip_vitl_512.json")
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ConvertError(Exception):
    """Invalid input; the message names the file."""


# ---------------------------------------------------------------------------------------------
# reading torch files
# ---------------------------------------------------------------------------------------------
class _Placeholder:
    """Stands in for a class whose module cannot be imported (e.g. mmcv objects in 'meta')."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": "placeholder." + module})


class _LenientPickle:
    """A pickle module for torch.load whose Unpickler tolerates unimportable classes."""
    Unpickler = _LenientUnpickler
    load = staticmethod(lambda f, **kw: _LenientUnpickler(f, **kw).load())
    __name__ = "lenient_pickle"


def load_torch_file(path: str, what: str):
    """torch.load on CPU; any failure becomes a ConvertError that names the file."""
    if not os.path.isfile(path):
        raise ConvertError(f"{what} file {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", pickle_module=_LenientPickle)
    except Exception as e:  # truncated zip, garbage bytes, foreign pickle, ...
        raise ConvertError(f"{what} file {path!r} could not be read as a PyTorch file "
                           f"(wrong or truncated file?): {type(e).__name__}: {e}") from None


def load_clip_file(path: str):
    """State dict of an OpenAI CLIP file, in float32 (the official code: jit.load(...).float())."""
    if not os.path.isfile(path):
        raise ConvertError(f"CLIP file {path!r} does not exist")
    jit_error = None
    try:
        module = torch.jit.load(path, map_location="cpu")
        sd = module.float().state_dict()
        return OrderedDict((k, v.detach().clone()) for k, v in sd.items()), "torchscript"
    except Exception as e:  # not TorchScript: fall back to torch.load
        jit_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        obj = load_torch_file(path, "CLIP")
    except ConvertError as e:
        raise ConvertError(f"{e}; as TorchScript: {jit_error}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    sd = extract_state_dict(obj, path, "CLIP")
    return OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in sd.items()), \
        "torch.load"


def extract_state_dict(obj, path: str, what: str):
    """The state dict of a checkpoint: obj['state_dict'] (mmcv/mmseg), obj['model'], or obj itself;
    a 'module.' prefix on every key (DistributedDataParallel) is removed."""
    sd = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                sd = obj[key]
                break
    if not isinstance(sd, dict) or not sd:
        keys = " with keys " + ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ""
        raise ConvertError(f"{what} file {path!r} holds no state dict (found "
                           f"{type(obj).__name__}{keys})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{what} file {path!r}: state dict entries that are not tensors: "
                           f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}")
    if all(k.startswith("module.") for k in sd):
        sd = OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return OrderedDict(sd)


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def read_config_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConvertError(f"config file {path!r} could not be read: {e}") from None


def _count(sd, prefix: str) -> int:
    """Number of consecutive numbered children prefix.0, prefix.1, ... present in the keys."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    n = 0
    while n in idx:
        n += 1
    return n


def derive_config(sd, base: dict, path: str, heads: dict) -> tuple:
    """Config dict with every size that the shapes determine read from them.

    Returns (config dict, list of (key, value, 'shape'|'config'|'option', note))."""
    cfg = copy.deepcopy(base)
    log = []

    def need(key):
        if key not in sd:
            raise ConvertError(f"checkpoint {path!r} lacks {key!r}, needed to read the model sizes "
                               f"(is this an MFuser-CLIP checkpoint?)")
        return sd[key].shape

    def put(section, key, value, source, note=""):
        target = cfg if section is None else cfg.setdefault(section, {})
        old = target.get(key)
        target[key] = value
        name = key if section is None else f"{section}.{key}"
        if source == "shape" and old is not None and old != value:
            note = (note + "; " if note else "") + f"base config had {old}"
        log.append((name, value, source, note))

    conv1 = need("backbone.conv1.weight")
    width, patch = conv1[0], conv1[-1]
    grid2 = need("backbone.positional_embedding")[0] - 1
    grid = math.isqrt(grid2)
    if grid * grid != grid2:
        raise ConvertError(f"checkpoint {path!r}: backbone.positional_embedding has {grid2 + 1} rows, "
                           f"not 1 + a square grid")
    put(None, "patch_size", patch, "shape", "backbone.conv1.weight")
    put(None, "image_size", grid * patch, "shape", "positional_embedding grid x patch")
    put("vision", "width", width, "shape")
    put("vision", "layers", _count(sd, "backbone.transformer.resblocks"), "shape")
    put("vision", "mlp_ratio",
        need("backbone.transformer.resblocks.0.mlp.c_fc.weight")[0] // width, "shape")
    put("vision", "output_dim", need("backbone.proj")[1], "shape")
    put("adapter", "d_state", need("backbone.adapter.0.A_log")[1], "shape")
    put("adapter", "d_conv", need("backbone.adapter.0.conv1d_x.weight")[-1], "shape")

    n_ctx = need("contexts")[1]
    total = need("text_encoder.positional_embedding")[0]
    emb = need("text_encoder.token_embedding.weight")
    put("text", "n_contexts", n_ctx, "shape", "contexts")
    put("text", "context_length", total - n_ctx, "shape", "positional_embedding rows - contexts")
    put("text", "width", emb[1], "shape")
    put("text", "vocab_size", emb[0], "shape")
    put("text", "layers", _count(sd, "text_encoder.transformer.resblocks"), "shape")
    put("text", "embed_dim", need("text_encoder.text_projection")[1], "shape")

    put("context_decoder", "width", need("context_decoder.text_proj.1.weight")[0], "shape")
    put("context_decoder", "layers", _count(sd, "context_decoder.decoder"), "shape")

    feat = need("decode_head.query_embed.weight")[1]
    num_classes = need("decode_head.cls_embed.weight")[0] - 1
    put("decode_head", "feat_channels", feat, "shape")
    put(None, "num_classes", num_classes, "shape", "cls_embed rows - 1")
    put("decode_head", "num_levels", need("decode_head.level_embed.weight")[0], "shape")
    put("decode_head", "pos_feats", feat // 2, "shape", "feat_channels / 2")
    enc = "decode_head.pixel_decoder.encoder.layers"
    dec = "decode_head.transformer_decoder.layers"
    put("decode_head", "encoder_layers", _count(sd, enc), "shape")
    put("decode_head", "encoder_ffn", need(f"{enc}.0.ffns.0.layers.0.0.weight")[0], "shape")
    put("decode_head", "decoder_layers", _count(sd, dec), "shape")
    put("decode_head", "decoder_ffn", need(f"{dec}.0.ffns.0.layers.0.0.weight")[0], "shape")

    # head counts: not in the shapes
    for (section, key), value in heads.items():
        if value is not None:
            put(section, key, value, "option")
        else:
            log.append((f"{section}.{key}", cfg[section][key], "config", "not derivable from shapes"))
    for name in ("vision.out_indices", "decode_head.gn_groups", "class_names", "slide", "tau",
                 "vision.drop_path_rate", "context_decoder.dropout"):
        section, _, key = name.rpartition(".")
        value = cfg[section][key] if section else cfg[key]
        log.append((name, value, "config", "not derivable from shapes"))

    # points: attention_weights rows = heads x levels x points
    aw = need(f"{enc}.0.attentions.0.attention_weights.weight")[0]
    h, lv = cfg["decode_head"]["num_heads"], cfg["decode_head"]["num_levels"]
    if aw % (h * lv):
        raise ConvertError(f"checkpoint {path!r}: attention_weights has {aw} rows, not a multiple of "
                           f"heads x levels = {h} x {lv}; pass --head-heads")
    put("decode_head", "num_points", aw // (h * lv), "shape", f"attention_weights rows / ({h} x {lv})")

    for section, wkey in (("vision", "width"), ("text", "width"), ("context_decoder", "width"),
                          ("decode_head", "feat_channels")):
        hk = "num_heads" if section == "decode_head" else "heads"
        if cfg[section][wkey] % cfg[section][hk]:
            raise ConvertError(f"{section}.{hk} = {cfg[section][hk]} does not divide "
                               f"{section}.{wkey} = {cfg[section][wkey]}; pass the right head count")
    if len(cfg["class_names"]) != num_classes:
        raise ConvertError(f"checkpoint {path!r} has {num_classes} classes but the config lists "
                           f"{len(cfg['class_names'])} class names; pass a matching --config")
    if max(cfg["vision"]["out_indices"]) >= cfg["vision"]["layers"]:
        raise ConvertError(f"vision.out_indices {cfg['vision']['out_indices']} do not fit "
                           f"{cfg['vision']['layers']} layers; pass a matching --config")
    return cfg, log


# ---------------------------------------------------------------------------------------------
# the oracle model: expected layout
# ---------------------------------------------------------------------------------------------
def build_model(cfg_dict: dict, texts=None):
    from mfuser_ref.model import MFuserCLIP
    return MFuserCLIP(Config(cfg_dict), texts=texts)


def expected_layout(model) -> "OrderedDict[str, tuple]":
    return OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())


def check_against(sd, layout, path: str, what: str) -> list:
    """Error lines for missing / unexpected keys and shape mismatches (empty list: all good)."""
    missing = [k for k in layout if k not in sd]
    unexpected = [k for k in sd if k not in layout]
    shapes = [k for k in layout if k in sd and tuple(sd[k].shape) != layout[k][0]]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
    for k in shapes:
        lines.append(f"shape mismatch {k}: {tuple(sd[k].shape)} in {what}, {layout[k][0]} expected")
    return lines


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def check_outputs(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConvertError(f"--out {out_dir!r} exists and is not a folder")
    existing = [os.path.join(out_dir, n) for n in (MODEL_FILE, CONFIG_FILE)
                if os.path.exists(os.path.join(out_dir, n))]
    if existing and not force:
        raise ConvertError("refusing to overwrite " + ", ".join(existing) + " (use --force)")


def write_outputs(out_dir: str, tensors, cfg: dict, metadata: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    safetensors_io.save_file(tensors, os.path.join(out_dir, MODEL_FILE), metadata)
    text = json.dumps(cfg, indent=2) + "\n"
    safetensors_io.write_atomic(os.path.join(out_dir, CONFIG_FILE), text.encode("utf-8"))


def class_name_ids(cfg: dict, bpe_vocab) -> tuple:
    names = list(cfg["class_names"])
    length = cfg["text"]["context_length"]
    try:
        if bpe_vocab:
            return tok.tokenize(names, length, bpe_vocab=bpe_vocab), \
                "CLIP BPE (" + os.path.basename(bpe_vocab) + ")"
        ids = tok.tokenize(names, length)  # prints the warning banner
        return ids, "embedded Cityscapes table (no --bpe-vocab)"
    except tok.TokenizerError as e:
        raise ConvertError(str(e)) from None


def _print_log(log) -> None:
    print("model sizes:")
    for name, value, source, note in log:
        text = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
        print(f"  {name:28s} = {text:12s} [{source}]{'  ' + note if note else ''}")


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
HEAD_OPTIONS = (("vision", "heads", "vision_heads"), ("text", "heads", "text_heads"),
                ("context_decoder", "heads", "context_heads"),
                ("decode_head", "num_heads", "head_heads"))


def cmd_trained(args) -> int:
    check_outputs(args.out, args.force)
    base = read_config_json(args.config)
    obj = load_torch_file(args.checkpoint, "checkpoint")
    sd = extract_state_dict(obj, args.checkpoint, "checkpoint")
    meta = obj.get("meta") if isinstance(obj, dict) else None
    print(f"read {len(sd)} tensors from {args.checkpoint}"
          f"{' (with meta)' if isinstance(meta, dict) else ''}")

    heads = {(s, k): getattr(args, a) for s, k, a in HEAD_OPTIONS}
    cfg, log = derive_config(sd, base, args.checkpoint, heads)
    _print_log(log)

    texts, texts_source = class_name_ids(cfg, args.bpe_vocab)
    torch.manual_seed(0)  # the reference model is only built to list the expected keys
    layout = expected_layout(build_model(cfg, texts=texts))
    problems = check_against(sd, layout, args.checkpoint, "checkpoint")
    if problems:
        raise ConvertError(f"checkpoint {args.checkpoint!r} does not match the MFuser-CLIP layout "
                           f"of the derived config:\n  " + "\n  ".join(problems))
    other_dtypes = sorted({str(v.dtype) for k, v in sd.items() if v.dtype != layout[k][1]})
    if other_dtypes:
        print(f"note: dtypes kept as stored; some differ from the oracle's: {', '.join(other_dtypes)}")

    tensors = OrderedDict((k, sd[k]) for k in layout)
    tensors["texts"] = texts
    cfg["conversion"] = {
        "kind": "trained",
        "source": os.path.basename(args.checkpoint),
        "texts": texts_source,
        "from_config": [name for name, _, src, _ in log if src != "shape"],
    }
    metadata = {"format": "mfuser-clip", "kind": "trained",
                "source": os.path.basename(args.checkpoint), "texts": texts_source}
    write_outputs(args.out, tensors, cfg, metadata)
    n_params = sum(v.numel() for k, v in tensors.items() if k != "texts")
    print(f"wrote {os.path.join(args.out, MODEL_FILE)} ({len(tensors)} tensors, {n_params:,} "
          f"elements + texts {tuple(texts.shape)}) and {os.path.join(args.out, CONFIG_FILE)}")
    return 0


def resize_dinov2(sd, model_sd, path: str):
    """DINOv2 pretrained weights at the model's grid and patch, as the official constructor does.

    pos_embed: the grid tokens, reshaped [1, C, g, g] (a permuted view, as upstream), bicubic,
    align_corners=False, to the model's grid; the class token row kept. patch_embed.proj.weight:
    float32, bicubic, align_corners=False, to the model's kernel. (No antialias: the default.)"""
    out = OrderedDict(sd)
    pos = sd["pos_embed"]
    target = model_sd["backbone.dinov2.pos_embed"]
    n_extra = 1
    if pos.dim() != 3 or pos.shape[-1] != target.shape[-1]:
        raise ConvertError(f"DINOv2 file {path!r}: pos_embed has shape {tuple(pos.shape)}, "
                           f"expected [1, 1 + g*g, {target.shape[-1]}]")
    orig = math.isqrt(pos.shape[1] - n_extra)
    new = math.isqrt(target.shape[1] - n_extra)
    if orig * orig != pos.shape[1] - n_extra:
        raise ConvertError(f"DINOv2 file {path!r}: pos_embed grid of {pos.shape[1] - n_extra} tokens "
                           f"is not square")
    resized = {}
    if orig != new:
        c = pos.shape[-1]
        pos = pos.float()  # a no-op for the official (float32) file
        extra = pos[:, :n_extra]
        grid = pos[:, n_extra:].reshape(-1, orig, orig, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
        out["pos_embed"] = torch.cat((extra, grid), dim=1)
        resized["pos_embed"] = f"{orig}x{orig} -> {new}x{new} bicubic"
    w = sd["patch_embed.proj.weight"]
    k = tuple(model_sd["backbone.dinov2.patch_embed.proj.weight"].shape[-2:])
    if tuple(w.shape[-2:]) != k:
        out["patch_embed.proj.weight"] = F.interpolate(w.float(), size=k, mode="bicubic",
                                                       align_corners=False)
        resized["patch_embed.proj.weight"] = f"{tuple(w.shape[-2:])} -> {k} bicubic"
    return out, resized


def resize_clip_visual(sd, model_sd, path: str):
    """CLIP visual weights at the model's grid and patch, as the official init_weights does:
    positional_embedding grid rows bilinear (align_corners=False) to the model's grid (class row
    kept); conv1.weight bilinear to the model's kernel.

    The grid is resized as upstream's permuted (channels-last strided) view: on torch 1.13's CPU,
    bilinear on that layout differs from bilinear on a contiguous copy by up to 1 ulp."""
    out = OrderedDict(sd)
    resized = {}
    pos = sd["positional_embedding"]
    target = model_sd["backbone.positional_embedding"]
    if tuple(pos.shape) != tuple(target.shape):
        c = target.shape[1]
        orig = math.isqrt(pos.shape[0] - 1)
        new = math.isqrt(target.shape[0] - 1)
        if pos.dim() != 2 or pos.shape[1] != c or orig * orig != pos.shape[0] - 1:
            raise ConvertError(f"CLIP file {path!r}: visual.positional_embedding has shape "
                               f"{tuple(pos.shape)}, expected [1 + g*g, {c}]")
        cls_pos = pos[0:1, :]
        grid = pos[1:, ].reshape(1, orig, orig, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
        grid = grid.reshape(c, new * new).permute(1, 0)
        out["positional_embedding"] = torch.cat([cls_pos, grid], dim=0)
        resized["positional_embedding"] = f"{orig}x{orig} -> {new}x{new} bilinear"
    w = sd["conv1.weight"]
    k = tuple(model_sd["backbone.conv1.weight"].shape[-2:])
    if tuple(w.shape[-2:]) != k:
        out["conv1.weight"] = F.interpolate(w, size=k, mode="bilinear", align_corners=False)
        resized["conv1.weight"] = f"{tuple(w.shape[-2:])} -> {k} bilinear"
    return out, resized


def cmd_pretrained(args) -> int:
    check_outputs(args.out, args.force)
    cfg = read_config_json(args.config)
    for s, k, a in HEAD_OPTIONS:
        if getattr(args, a) is not None:
            cfg[s][k] = getattr(args, a)
    texts, texts_source = class_name_ids(cfg, args.bpe_vocab)

    dino_obj = load_torch_file(args.dinov2, "DINOv2")
    dino = extract_state_dict(dino_obj, args.dinov2, "DINOv2")
    clip, clip_format = load_clip_file(args.clip)
    print(f"read {len(dino)} DINOv2 tensors from {args.dinov2}, {len(clip)} CLIP tensors from "
          f"{args.clip} ({clip_format})")

    torch.manual_seed(args.seed)
    model = build_model(cfg, texts=texts)
    model.init_weights()
    model_sd = model.state_dict()
    layout = expected_layout(model)

    problems = []
    # DINOv2: the official constructor loads it with strict=True
    for key in ("pos_embed", "patch_embed.proj.weight"):
        if key not in dino:
            raise ConvertError(f"DINOv2 file {args.dinov2!r} lacks {key!r}")
    dino, dino_resized = resize_dinov2(dino, model_sd, args.dinov2)
    dino_layout = OrderedDict((k[len("backbone.dinov2."):], v) for k, v in layout.items()
                              if k.startswith("backbone.dinov2."))
    problems += [f"DINOv2: {p}" for p in check_against(dino, dino_layout, args.dinov2, "DINOv2 file")]

    # CLIP visual -> backbone.* and text -> text_encoder.* (official: strict=False; here every
    # tower weight must be present, CLIP-only entries are ignored and listed)
    visual = OrderedDict((k[len("visual."):], v) for k, v in clip.items() if k.startswith("visual."))
    for key in ("positional_embedding", "conv1.weight"):
        if key not in visual:
            raise ConvertError(f"CLIP file {args.clip!r} lacks 'visual.{key}'")
    visual, clip_resized = resize_clip_visual(visual, model_sd, args.clip)
    visual_layout = OrderedDict(
        (k[len("backbone."):], v) for k, v in layout.items()
        if k.startswith("backbone.") and not re.match(r"backbone\.(dinov2|adapter|fpn)", k))
    text_layout = OrderedDict((k[len("text_encoder."):], v) for k, v in layout.items()
                              if k.startswith("text_encoder."))
    text = OrderedDict((k, v) for k, v in clip.items() if k in text_layout)
    n_text = text_layout["positional_embedding"][0][0]
    if "positional_embedding" in text and text["positional_embedding"].shape[0] > n_text:
        text["positional_embedding"] = text["positional_embedding"][:n_text]  # 77 -> 10 rows
    ignored = sorted([f"visual.{k}" for k in visual if k not in visual_layout]
                     + [k for k in clip if not k.startswith("visual.") and k not in text_layout])
    for name, part, part_layout in (("CLIP visual", visual, visual_layout),
                                    ("CLIP text", text, text_layout)):
        lines = check_against({k: v for k, v in part.items() if k in part_layout}, part_layout,
                              args.clip, "CLIP file")
        problems += [f"{name}: {p}" for p in lines]
    if problems:
        raise ConvertError("pretrained weights do not fit the model of config "
                           f"{args.config!r}:\n  " + "\n  ".join(problems))

    tensors = OrderedDict()
    for k, v in model_sd.items():
        tensors[k] = v
    for k in dino_layout:
        tensors["backbone.dinov2." + k] = dino[k].float()
    for k in visual_layout:
        tensors["backbone." + k] = visual[k].float()
    for k in text_layout:
        tensors["text_encoder." + k] = text[k].float()
    tensors = OrderedDict((k, v.detach()) for k, v in tensors.items())
    tensors["texts"] = texts

    for name, how in {**{"dinov2." + k: v for k, v in dino_resized.items()},
                      **{"clip visual." + k: v for k, v in clip_resized.items()}}.items():
        print(f"  resized {name}: {how}")
    if ignored:
        print(f"  ignored CLIP entries ({len(ignored)}): {', '.join(ignored)}")
    cfg["conversion"] = {
        "kind": "pretrained",
        "dinov2": os.path.basename(args.dinov2),
        "clip": os.path.basename(args.clip),
        "clip_format": clip_format,
        "seed": args.seed,
        "resized": {**{"dinov2." + k: v for k, v in dino_resized.items()},
                    **{"clip." + k: v for k, v in clip_resized.items()}},
        "texts": texts_source,
    }
    metadata = {"format": "mfuser-clip", "kind": "pretrained", "seed": str(args.seed),
                "texts": texts_source}
    write_outputs(args.out, tensors, cfg, metadata)
    print(f"wrote {os.path.join(args.out, MODEL_FILE)} ({len(tensors)} tensors) and "
          f"{os.path.join(args.out, CONFIG_FILE)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--out", required=True, help="output folder (model.safetensors, config.json)")
        sp.add_argument("--config", default=DEFAULT_CONFIG,
                        help="model config JSON (default: %(default)s)")
        sp.add_argument("--bpe-vocab", default=tok.default_bpe_vocab(),
                        help="CLIP merges file bpe_simple_vocab_16e6.txt.gz (default: "
                             "$MFUSER_BPE_VOCAB; without it the embedded Cityscapes table is used)")
        sp.add_argument("--force", action="store_true", help="overwrite existing outputs")
        sp.add_argument("--vision-heads", type=int, help="CLIP/DINOv2 attention heads")
        sp.add_argument("--text-heads", type=int, help="text encoder attention heads")
        sp.add_argument("--context-heads", type=int, help="context decoder attention heads")
        sp.add_argument("--head-heads", type=int, help="decode head attention heads")

    t = sub.add_parser("trained", help="official trained MFuser-CLIP checkpoint (.pth)")
    t.add_argument("checkpoint", help="mmseg checkpoint (dict with state_dict/meta) or state dict")
    common(t)
    t.set_defaults(func=cmd_trained)

    q = sub.add_parser("pretrained", help="initial checkpoint from DINOv2 + CLIP pretrained files")
    q.add_argument("--dinov2", required=True, help="dinov2_vitl14_pretrain.pth")
    q.add_argument("--clip", required=True, help="ViT-L-14-336px.pt (TorchScript) or a state dict")
    q.add_argument("--seed", type=int, default=0, help="seed of the fresh fusion/head weights")
    common(q)
    q.set_defaults(func=cmd_pretrained)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
