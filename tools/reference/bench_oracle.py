#!/usr/bin/env python3
"""Times the PyTorch oracle's crop forward (the official encode_decode) for `mfuser bench`, on the same
weights and with the same thread count, and prints one JSON line:
    {"device": ..., "batch": B, "size": S, "threads": T, "runs": R, "ms": [..], "median_ms": m,
     "peak_rss_bytes": ..., "peak_cuda_bytes": ...}

    /usr/bin/python3 tools/reference/bench_oracle.py --weights DIR/model.safetensors --config CFG.json
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mfuser_ref.config import load_config  # noqa: E402
from mfuser_ref.model import MFuserCLIP  # noqa: E402
from mfuser_ref.safetensors_io import load_file  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=None, help="crop size (default: the config's)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    size = args.size or cfg.image_size
    state = load_file(args.weights)
    texts = state.pop("texts", None)
    model = MFuserCLIP(cfg, texts=texts).eval()
    model.load_state_dict(state)
    del state
    device = torch.device(args.device)
    model.to(device)
    img = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            model(img)
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    result = {
        "device": args.device, "batch": args.batch, "size": size, "threads": args.threads, "runs": args.runs,
        "ms": times, "median_ms": sorted(times)[len(times) // 2],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else 0,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
