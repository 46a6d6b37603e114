"""Shared set-up of the oracle's unit tests.

Importing this module puts tools/reference on sys.path (so ``mfuser_ref`` imports) and gives:

- ``fresh_seed()``: $MFUSER_SEED when set, else a new random seed;
- ``report_seed(what, seed)``: prints "<what> failed with MFUSER_SEED=<n>" to stderr;
- ``ReportsSeed``: a TestCase that reports ``self.seed`` that way when a test fails or errors
  (for classes that draw their seed themselves, e.g. once per class in setUpClass);
- ``SeededTestCase``: a fresh seed per test: ``self.seed``, ``self.rng = random.Random(self.seed)``
  and ``torch.manual_seed(self.seed)`` in setUp, reported on failure.

To repeat a failed run: MFUSER_SEED=<n> /usr/bin/python3 -m unittest tests.oracle.test_...
"""

import os
import random
import sys
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REFERENCE = os.path.join(ROOT, "tools", "reference")
if REFERENCE not in sys.path:
    sys.path.insert(0, REFERENCE)

import torch  # noqa: E402


def fresh_seed():
    """$MFUSER_SEED when set, else a fresh seed from the system's entropy."""
    env = os.environ.get("MFUSER_SEED")
    return int(env) if env else random.SystemRandom().randrange(2 ** 31)


def report_seed(what, seed):
    print(f"\n{what} failed with MFUSER_SEED={seed}", file=sys.stderr)


class ReportsSeed(unittest.TestCase):
    """Prints ``MFUSER_SEED=<self.seed>`` when the test fails or errors (``?`` before any seed)."""

    seed = "?"

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            report_seed(self.id(), self.seed)
        return out


class SeededTestCase(ReportsSeed):
    """Fresh seed per test (or $MFUSER_SEED): ``self.seed``, ``self.rng``, torch seeded."""

    def setUp(self):
        self.seed = fresh_seed()
        self.rng = random.Random(self.seed)
        torch.manual_seed(self.seed)
