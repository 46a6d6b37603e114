#!/usr/bin/env python3
"""Writes PyTorch golden data for one operator's C++ test: inputs, PyTorch's outputs, and the seed.

    /usr/bin/python3 tools/reference/op_golden.py cast --out build/tests/golden/cast.safetensors

The seed is fresh on every run unless MFUSER_SEED is set; it is printed and stored in the file's metadata so a
failing C++ test can say how to reproduce it.
"""
import argparse
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mfuser_ref.safetensors_io import save_file  # noqa: E402


def golden_cast(gen: torch.Generator) -> dict:
    """f32 inputs (random over many magnitudes plus the edge cases: ties, subnormals, overflow, inf, NaN) and
    PyTorch's round-to-nearest-even conversions to bf16 and f16, and back."""
    n = 1 << 16
    mantissa = torch.rand(n, generator=gen) * 2 - 1
    exponent = torch.randint(-30, 30, (n,), generator=gen).float()
    x = mantissa * torch.pow(2.0, exponent)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e6, -1e6, 5.96e-8, 2.98e-8,
                            6.1e-5, 3.0e-5, 1e-40, float("inf"), float("-inf"), float("nan"),
                            1.00390625, 1.01171875,  # exact bf16 ties (round down / up to even)
                            1.00048828125, 1.00146484375, 3.4e38, -3.4e38])
    x = torch.cat([special, x])
    bf16 = x.to(torch.bfloat16)
    f16 = x.to(torch.float16)
    return {"x": x, "bf16": bf16, "f16": f16, "bf16_to_f32": bf16.float(), "f16_to_f32": f16.float(),
            "bf16_to_f16": bf16.to(torch.float16), "f16_to_bf16": f16.to(torch.bfloat16)}


GENERATORS = {"cast": golden_cast}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=sorted(GENERATORS))
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=None, help="default: $MFUSER_SEED or fresh")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(os.environ.get("MFUSER_SEED", random.getrandbits(31)))
    gen = torch.Generator().manual_seed(seed)
    tensors = GENERATORS[args.op](gen)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata={"op": args.op, "seed": str(seed)})
    print(f"golden {args.op}: seed {seed} -> {args.out} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
