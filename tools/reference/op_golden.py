#!/usr/bin/env python3
"""Writes PyTorch golden data for one operator's C++ test: inputs, PyTorch's outputs, and the seed.

    /usr/bin/python3 tools/reference/op_golden.py cast --out build/tests/golden/cast.safetensors

The generator of op X is `golden(gen: torch.Generator) -> dict[str, Tensor]` in kernels/X/X_golden.py.

The seed is fresh on every run unless MFUSER_SEED is set; it is printed and stored in the file's metadata so a
failing C++ test can say how to reproduce it.
"""
import argparse
import importlib.util
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from mfuser_ref.safetensors_io import save_file  # noqa: E402


def load_generator(op: str):
    """The `golden(gen)` function of kernels/<op>/<op>_golden.py: each operator keeps its PyTorch oracle
    beside its kernels."""
    path = os.path.join(ROOT, "kernels", op, f"{op}_golden.py")
    if not os.path.isfile(path):
        raise SystemExit(f"op_golden: no golden generator for '{op}' (expected {path})")
    spec = importlib.util.spec_from_file_location(f"{op}_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.golden


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", help="operator folder name under kernels/")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=None, help="default: $MFUSER_SEED or fresh")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(os.environ.get("MFUSER_SEED", random.getrandbits(31)))
    gen = torch.Generator().manual_seed(seed)
    tensors = load_generator(args.op)(gen)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata={"op": args.op, "seed": str(seed)})
    print(f"golden {args.op}: seed {seed} -> {args.out} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
