"""Tests of the CLIP BPE tokenizer (tools/reference/mfuser_ref/tokenizer.py).

The standard merges file cannot ship with the project: the test against the real vocabulary runs only
when $MFUSER_BPE_VOCAB names bpe_simple_vocab_16e6.txt.gz (e.g. extracted from openai/CLIP's clip/
folder); everything else runs on small hand-made merges files.

Run: /usr/bin/python3 -m unittest tests.oracle.test_tokenizer   (MFUSER_SEED=N to repeat a run)
"""

import gzip
import os
import tempfile
import unittest

if __package__:
    from .seeding import SeededTestCase
else:  # run as a script
    from seeding import SeededTestCase

import torch  # noqa: E402

from mfuser_ref import tokenizer as tk  # noqa: E402


# A hand-made merges file. Ranks: line order after the header.
TINY_MERGES = [
    ("l", "o"),          # 0
    ("lo", "w</w>"),     # 1
    ("e", "r</w>"),      # 2
    ("n", "e"),          # 3
    ("ne", "w"),         # 4
    ("new", "er</w>"),   # 5
    ("a", "a"),          # 6
    ("b", "c"),          # 7
    ("a", "b"),          # 8
    ("Ġ", "x"),          # 9  (never used: spaces are split off before BPE)
]


def _write_merges(folder, merges, gz=True, header="#version: 0.2"):
    text = "\n".join([header] + [f"{a} {b}" for a, b in merges]) + "\n"
    path = os.path.join(folder, "merges.txt.gz" if gz else "merges.txt")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(text.encode("utf-8"))
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return path


class ByteTableTest(SeededTestCase):
    def test_table(self):
        table = tk.byte_to_unicode()
        self.assertEqual(len(set(table)), 256)
        for b in range(0x21, 0x7F):
            self.assertEqual(table[b], chr(b))
        self.assertEqual(table[0], "\u0100")
        self.assertEqual(table[ord(" ")], "\u0120")  # the familiar 'Ġ' for a space
        self.assertEqual(table[0xAD], chr(0x100 + 67))  # the last of the 68 moved bytes
        for ch in table:
            self.assertTrue(ch.isprintable() and not ch.isspace(), repr(ch))
        sym = tk.base_symbols()
        self.assertEqual(sym[0], "!")
        self.assertEqual(sym[187], "\u00ff")  # 94 + 12 + 82 self-mapped bytes come first
        self.assertEqual(sym[188:], [chr(0x100 + i) for i in range(68)])


class CleanAndSplitTest(SeededTestCase):
    def test_clean(self):
        self.assertEqual(tk.clean_text("  Traffic \t\n  LIGHT  "), "traffic light")
        self.assertEqual(tk.clean_text("a &amp;amp; b"), "a & b")  # unescaped twice
        self.assertEqual(tk.clean_text("\u201cQuoted\u201d \uff21\uff22"), '"quoted" ab')
        self.assertEqual(tk.clean_text("\ufb01sh\u00a0\u3000x"), "fish x")
        self.assertEqual(tk.clean_text("e\u0301"), "\u00e9")  # NFC

    def test_pretokenize(self):
        self.assertEqual(tk.pretokenize("it's a test-case!! 2024 we'll"),
                         ["it", "'s", "a", "test", "-", "case", "!!", "2", "0", "2", "4", "we",
                          "'ll"])
        self.assertEqual(tk.pretokenize("x<|startoftext|>y <|endoftext|>"),
                         ["x", "<|startoftext|>", "y", "<|endoftext|>"])
        # a punctuation run swallows what follows it, apostrophes and '<' included
        self.assertEqual(tk.pretokenize("!<|endoftext|>"), ["!<|", "endoftext", "|>"])
        self.assertEqual(tk.pretokenize("'x '"), ["'", "x", "'"])
        self.assertEqual(tk.pretokenize("caf\u00e9 \u0416\u0436 \u00b2\u0661"),
                         ["caf\u00e9", "\u0416\u0436", "\u00b2", "\u0661"])
        self.assertEqual(tk.pretokenize(""), [])


class TinyBpeTest(SeededTestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.path = _write_merges(self.dir.name, TINY_MERGES)
        self.tok = tk.BPETokenizer.from_file(self.path)

    def merge_id(self, rank):
        return 512 + rank

    def byte_id(self, ch, end=False):
        return tk.base_symbols().index(ch) + (256 if end else 0)

    def test_layout(self):
        self.assertEqual(self.tok.vocab_size, 512 + len(TINY_MERGES) + 2)
        self.assertEqual(self.tok.sot, 512 + len(TINY_MERGES))
        self.assertEqual(self.tok.eot, self.tok.sot + 1)
        plain = tk.BPETokenizer.from_file(_write_merges(self.dir.name, TINY_MERGES, gz=False))
        self.assertEqual(plain.encoder, self.tok.encoder)

    def test_merges(self):
        t = self.tok
        self.assertEqual(t.bpe("low"), ["low</w>"])
        self.assertEqual(t.bpe("newer"), ["newer</w>"])
        self.assertEqual(t.bpe("lower"), ["lo", "w", "er</w>"])
        # lowest rank first, all non-overlapping occurrences left to right
        self.assertEqual(t.bpe("aaa"), ["aa", "a</w>"])
        self.assertEqual(t.bpe("aaaa"), ["aa", "a", "a</w>"])  # "a a</w>" is not a rule
        self.assertEqual(t.bpe("abc"), ["ab", "c</w>"])  # "b c" needs "c" without </w>
        self.assertEqual(t.bpe("abcz"), ["a", "bc", "z</w>"])  # rank 7 beats rank 8
        self.assertEqual(t.bpe("q"), ["q</w>"])
        self.assertEqual(t.encode("Low NEWER"), [self.merge_id(1), self.merge_id(5)])
        self.assertEqual(t.encode("lower"), [self.merge_id(0), self.byte_id("w"),
                                             self.merge_id(2)])

    def test_tokenize(self):
        t = self.tok
        ids = t.tokenize(["low", "newer lower", "q"], context_length=7)
        self.assertEqual(ids.dtype, torch.int64)
        self.assertEqual(ids.shape, (3, 7))
        sot, eot = t.sot, t.eot
        self.assertEqual(ids[0].tolist(), [sot, self.merge_id(1), eot, 0, 0, 0, 0])
        self.assertEqual(ids[1].tolist(), [sot, self.merge_id(5), self.merge_id(0),
                                           self.byte_id("w"), self.merge_id(2), eot, 0])
        self.assertEqual(ids[2].tolist(), [sot, self.byte_id("q", end=True), eot, 0, 0, 0, 0])
        self.assertEqual(t.tokenize("low", 3).tolist(), [[sot, self.merge_id(1), eot]])
        with self.assertRaisesRegex(tk.TokenizerError, "context length 2"):
            t.tokenize("low", 2)
        self.assertEqual(t.tokenize("<|endoftext|>", 3).tolist(), [[sot, eot, eot]])

    def test_roundtrip_random_text(self):
        pool = list("abcdefgloqwxyz ABC.,!?'-0123456789\u00e9\u00df\u0436\u4e2d\U0001f600\u00a0\t")
        for _ in range(200):
            s = "".join(self.rng.choice(pool) for _ in range(self.rng.randint(0, 40)))
            ids = self.tok.encode(s)
            self.assertTrue(all(0 <= i < self.tok.vocab_size for i in ids))
            back = self.tok.decode(ids)
            self.assertEqual(back.replace(" ", ""), tk.clean_text(s).replace(" ", ""), repr(s))

    def test_bad_files(self):
        bad = os.path.join(self.dir.name, "bad.txt")
        with open(bad, "w") as f:
            f.write("#version\na b c\n")
        with self.assertRaisesRegex(tk.TokenizerError, "bad.txt.*line 2"):
            tk.read_merges(bad)
        with open(bad, "wb") as f:
            f.write(b"\x1f\x8b\x08garbage")
        with self.assertRaisesRegex(tk.TokenizerError, "bad.txt"):
            tk.read_merges(bad)
        with self.assertRaisesRegex(tk.TokenizerError, "missing.gz"):
            tk.read_merges(os.path.join(self.dir.name, "missing.gz"))

    def test_max_merges(self):
        self.assertEqual(len(tk.read_merges(self.path, max_merges=3)), 3)
        self.assertEqual(tk.BPETokenizer(tk.read_merges(self.path, 3)).sot, 515)


class FallbackTableTest(SeededTestCase):
    def test_table(self):
        names = list(tk.CITYSCAPES_CLASS_NAMES)
        ids = tk.tokenize(names, 5, quiet=True)
        self.assertEqual(ids.dtype, torch.int64)
        self.assertEqual(ids.shape, (19, 5))
        self.assertEqual(ids[6].tolist(), [49406, 3399, 1395, 49407, 0])
        wide = tk.fallback_tokenize(names, 8)
        self.assertTrue(torch.equal(wide[:, :5], ids))
        self.assertTrue(bool((wide[:, 5:] == 0).all()))
        perm = list(range(19))
        self.rng.shuffle(perm)
        self.assertTrue(torch.equal(tk.fallback_tokenize([names[i] for i in perm], 5), ids[perm]))
        with self.assertRaisesRegex(tk.TokenizerError, "not in the embedded"):
            tk.fallback_tokenize(["zebra"], 5)
        with self.assertRaisesRegex(tk.TokenizerError, "context length 3"):
            tk.fallback_tokenize(["traffic light"], 3)

    def test_matches_config_table(self):
        from mfuser_ref import config
        self.assertEqual(tuple(tk.CITYSCAPES_TOKEN_IDS[n] for n in tk.CITYSCAPES_CLASS_NAMES),
                         tuple(config.CITYSCAPES_TOKEN_IDS))


@unittest.skipUnless(tk.default_bpe_vocab(),
                     "set MFUSER_BPE_VOCAB to CLIP's bpe_simple_vocab_16e6.txt.gz to run the test "
                     "against the real vocabulary")
class RealVocabTest(SeededTestCase):
    def test_cityscapes_names(self):
        tok = tk.BPETokenizer.from_file(tk.default_bpe_vocab())
        self.assertEqual(tok.vocab_size, 49408)
        self.assertEqual((tok.sot, tok.eot), (tk.CLIP_SOT_ID, tk.CLIP_EOT_ID))
        names = list(tk.CITYSCAPES_CLASS_NAMES)
        got = tk.tokenize(names, 5, bpe_vocab=tk.default_bpe_vocab())
        want = tk.fallback_tokenize(names, 5)
        for i, n in enumerate(names):
            self.assertEqual(got[i].tolist(), want[i].tolist(), n)
        self.assertEqual(tok.decode(got[6, 1:3].tolist()), "traffic light ")


if __name__ == "__main__":
    unittest.main()
