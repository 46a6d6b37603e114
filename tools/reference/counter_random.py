"""Counter-based pseudo-random values that the C++ tests recompute bit for bit (tests/common/counter_random.h).

Large upstream gradients for the backward tests are made this way instead of being stored: a 5376 x 2048
gradient would add 22 MB to a golden file, a formula adds nothing. Element i of stream `salt` is murmur3's
32-bit finalizer of (i + salt * 0x9E3779B9) mod 2^32; its top 24 bits give a value in [-1, 1) that is exact
in f32."""
import torch

MASK = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for h < 2^32 without int64 overflow: c is split into 16-bit halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & MASK


def counter_uniform(shape, salt: int) -> torch.Tensor:
    """f32 tensor of `shape` (row-major element i) with values in [-1, 1)."""
    n = 1
    for d in shape:
        n *= d
    h = (torch.arange(n, dtype=torch.int64) + (salt * 0x9E3779B9) % (1 << 32)) & MASK
    h ^= h >> 16
    h = _mul32(h, 0x85EBCA6B)
    h ^= h >> 13
    h = _mul32(h, 0xC2B2AE35)
    h ^= h >> 16
    return (((h >> 8) - (1 << 23)).double() / (1 << 23)).float().reshape(shape)
