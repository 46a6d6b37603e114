"""PyTorch golden data for kernels/resize (see tools/reference/op_golden.py).

Each case `<case>.out` = F.interpolate(<input>, size or scale_factor, mode, align_corners=False) computed in
float64; inputs are stored once under their own names (several cases share one). The table below is mirrored
in resize_test.cpp.

Backward (bilinear only, BACKWARD below): "<case>.grad_src" is the float64 autograd gradient of
sum(grad_out * out) with respect to the input, for a random upstream gradient "<case>.grad_out". To keep the file
near 60 MB, real.fpn_upsample's upstream gradient is its own stored output (16 MB fewer; a bilinear upsample of
N(0, 1) noise), and real.logits_to_crop (inference only, 20 MB of gradient) has no backward case."""
import torch
import torch.nn.functional as F

INPUTS = {
    "tiny.a": [2, 3, 5, 7],
    "tiny.b": [1, 2, 9, 13],
    "tiny.one_pixel": [1, 2, 1, 1],
    "tiny.clip_grid": [1, 3, 24, 24],
    "tiny.dino_grid": [1, 3, 37, 37],
    "real.fpn_memory": [1, 256, 64, 64],      # pixel decoder: 64x64 memory added to the 128x128 lateral
    "real.mask_logits": [1, 19, 128, 128],    # decoder masks / per-crop logits
    "real.dino_pos": [1, 1024, 37, 37],       # DINOv2 ViT-L/14 positional embedding grid
}

# case -> (input, mode, size or None, scale_factor or None)
CASES = {
    "tiny.bilinear_up": ("tiny.a", "bilinear", (9, 13), None),
    "tiny.bilinear_down": ("tiny.b", "bilinear", (4, 5), None),
    "tiny.bilinear_same": ("tiny.a", "bilinear", (5, 7), None),
    "tiny.bilinear_mixed": ("tiny.b", "bilinear", (20, 3), None),
    "tiny.bilinear_scale": ("tiny.a", "bilinear", None, (1.7, 0.6)),
    "tiny.bilinear_one_pixel": ("tiny.one_pixel", "bilinear", (3, 4), None),
    "tiny.bilinear_clip_pos": ("tiny.clip_grid", "bilinear", (32, 32), None),
    "tiny.bicubic_up": ("tiny.a", "bicubic", (11, 10), None),
    "tiny.bicubic_down": ("tiny.b", "bicubic", (4, 6), None),
    "tiny.bicubic_same": ("tiny.a", "bicubic", (5, 7), None),
    "tiny.bicubic_scale": ("tiny.b", "bicubic", None, (0.55, 1.3)),
    "tiny.bicubic_one_pixel": ("tiny.one_pixel", "bicubic", (2, 3), None),
    "tiny.bicubic_dino_pos": ("tiny.dino_grid", "bicubic", None, (32.1 / 37, 32.1 / 37)),
    "real.fpn_upsample": ("real.fpn_memory", "bilinear", (128, 128), None),
    "real.logits_to_crop": ("real.mask_logits", "bilinear", (512, 512), None),
    "real.attn_mask_16": ("real.mask_logits", "bilinear", (16, 16), None),
    "real.dino_pos_convert": ("real.dino_pos", "bicubic", (32, 32), None),       # checkpoint conversion
    "real.dino_pos_runtime": ("real.dino_pos", "bicubic", None, (32.1 / 37, 32.1 / 37)),  # DINOv2's own rule
}

# bilinear case -> where its upstream gradient comes from: None for a fresh random one, else a stored tensor
BACKWARD = {
    "tiny.bilinear_up": None,
    "tiny.bilinear_down": None,
    "tiny.bilinear_same": None,
    "tiny.bilinear_mixed": None,
    "tiny.bilinear_scale": None,
    "tiny.bilinear_one_pixel": None,
    "tiny.bilinear_clip_pos": None,
    "real.fpn_upsample": "real.fpn_upsample.out",
    "real.attn_mask_16": None,
}


def interpolate(x, mode, size, scale):
    if scale is not None:
        return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def golden(gen: torch.Generator) -> dict:
    out = {}
    for name, shape in INPUTS.items():
        out[name] = torch.randn(shape, generator=gen)
    for name, (src, mode, size, scale) in CASES.items():
        out[f"{name}.out"] = interpolate(out[src].double(), mode, size, scale).float()
    for name, grad_from in BACKWARD.items():
        src, mode, size, scale = CASES[name]
        x = out[src].double().requires_grad_(True)
        y = interpolate(x, mode, size, scale)
        if grad_from is None:
            out[f"{name}.grad_out"] = torch.randn(y.shape, generator=gen)
        grad_out = out[grad_from or f"{name}.grad_out"]
        y.backward(grad_out.double())
        out[f"{name}.grad_src"] = x.grad.float()
    return out
