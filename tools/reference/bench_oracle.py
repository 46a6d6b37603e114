#!/usr/bin/env python3
"""Times the PyTorch oracle's crop forward (the official encode_decode) for `mfuser bench`, on the same
weights, device and thread count, for each crop batch and precision asked for, in one process (the weights
load once). Prints one JSON line last:
    {"device": ..., "threads": T, "torch": ..., "attention": ..., "scan": ...,
     "results": [{"batch": B, "precision": "fp32"|"bf16", "ms": [..], "median_ms": m, "peak_cuda_bytes": ..}],
     "peak_rss_bytes": ...}

fp32 is eager float32; bf16 is eager under torch.autocast(bfloat16). With --train, one training step instead:
the training-mode forward with the losses (random masks off, as our graph) and loss.backward(), timed as a
whole; peak memory covers the saved activations. Attention runs through
F.scaled_dot_product_attention (nn.MultiheadAttention's fast path, and DINOv2's attention switched to it):
PyTorch's fastest. The selective scan is the oracle's: a loop over the sequence, each step vectorized over
batch, channels and state (plain PyTorch has no parallel scan that stays exact in fp32).

    python3 tools/reference/bench_oracle.py --weights DIR/model.safetensors --config CFG.json \\
        --batches 1,18 --precisions fp32,bf16 --device cuda
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mfuser_ref import backbone  # noqa: E402
from mfuser_ref.config import load_config  # noqa: E402
from mfuser_ref.model import MFuserCLIP, total_loss  # noqa: E402
from mfuser_ref.safetensors_io import load_file  # noqa: E402


def time_forward(model, img, device, bf16, runs, labels=None):
    def forward():
        if labels is None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(img)
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = total_loss(model(img, gt_semantic_seg=labels))
            model.zero_grad(set_to_none=True)
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--batches", default="1", help="comma-separated crop batch sizes")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32 (eager), bf16 (autocast)")
    p.add_argument("--size", type=int, default=None, help="crop size (default: the config's)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train", action="store_true", help="time a training step (forward, losses, backward)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    backbone.FAST_ATTENTION = True
    cfg = load_config(args.config)
    size = args.size or cfg.image_size
    state = load_file(args.weights)
    texts = state.pop("texts", None)
    model = MFuserCLIP(cfg, texts=texts, deterministic=True)
    model.train() if args.train else model.eval()
    model.load_state_dict(state)
    del state
    device = torch.device(args.device)
    model.to(device)

    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        gen = torch.Generator().manual_seed(0)
        img = torch.randn(batch, 3, size, size, generator=gen).to(device)
        labels = None
        if args.train:  # blocky random label maps over all classes, as the golden data's
            coarse = torch.randint(0, cfg.num_classes, (batch, 1, size // 8, size // 8), generator=gen).float()
            labels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest").long().to(device)
        for precision in args.precisions.split(","):
            if precision not in ("fp32", "bf16"):
                raise SystemExit(f"unknown precision {precision!r}")
            times = time_forward(model, img, device, precision == "bf16", args.runs, labels)
            results.append({
                "batch": batch, "precision": precision, "ms": times, "median_ms": sorted(times)[len(times) // 2],
                "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
            })
            print(f"oracle: batch {batch} {precision}: {results[-1]['median_ms']:.1f} ms", file=sys.stderr)
    print(json.dumps({
        "device": args.device, "threads": args.threads, "size": size, "torch": torch.__version__,
        "attention": "F.scaled_dot_product_attention" if hasattr(torch.nn.functional, "scaled_dot_product_attention")
                     else "explicit softmax (torch < 2.1)", "scan": "sequential loop over L (vectorized over b, d, n)",
        "results": results, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
