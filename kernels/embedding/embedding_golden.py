"""PyTorch golden data for kernels/embedding (see tools/reference/op_golden.py)."""
import torch
import torch.nn.functional as F

# CLIP's token embedding: 49408 BPE tokens x 768.
REAL_VOCAB, REAL_WIDTH = 49408, 768
SOT, EOT = 49406, 49407


def real_table(fraction: torch.Tensor) -> torch.Tensor:
    """The real-size table, rebuilt by the test from `fraction` (151 MB would not fit the file): row v is
    v + fraction, so every row differs from every other and a wrong row is visible at once. fraction holds
    multiples of 1/256 below 1/2, so v + fraction (v < 2^16) is exact in f32."""
    return torch.arange(REAL_VOCAB, dtype=torch.float32)[:, None] + fraction[None, :]


def golden(gen: torch.Generator) -> dict:
    """Tiny gathers (3-d ids, 0-d ids, first and last rows) and the text encoder's real lookup: 19 prompts
    x 10 tokens (SOT, EOT, padding 0 and the last id among them) into the 49408 x 768 table."""
    table = torch.randn(50, 7, generator=gen)
    ids = torch.randint(0, 50, (2, 3, 4), generator=gen)
    ids[0, 0, 0], ids[1, 2, 3] = 0, 49
    scalar_id = torch.randint(0, 50, (), generator=gen)
    out = {"tiny.table": table, "tiny.ids": ids, "tiny.out": F.embedding(ids, table),
           "scalar.ids": scalar_id, "scalar.out": F.embedding(scalar_id, table)}

    real_ids = torch.randint(0, REAL_VOCAB, (19, 10), generator=gen)
    real_ids[:, 0] = SOT
    real_ids[:, 8] = EOT
    real_ids[:, 9] = 0
    real_ids[0, 1] = REAL_VOCAB - 1
    fraction = torch.randint(0, 128, (REAL_WIDTH,), generator=gen).float() / 256
    out.update({"real.ids": real_ids, "real.fraction": fraction,
                "real.out": F.embedding(real_ids, real_table(fraction))})
    return out
