"""CLIP byte-level BPE tokenizer (our own implementation, pure python + torch).

MFuser tokenizes the 19 class names once, with CLIP's tokenizer, to a context length of 5:
``[SOT, bpe ids..., EOT, 0...]``. The ids become the ``texts`` buffer of the model.

What the reference tokenizer does (openai/CLIP ``simple_tokenizer``; MFuser carries a copy in
``models/backbones/utils.py``), and what this file reproduces:

1. Text clean-up: ``ftfy.fix_text``, HTML-unescape twice, strip; then every run of whitespace becomes
   one space, strip, ``str.lower()``. ``ftfy`` is not installed here: :func:`clean_text` implements the
   parts of ``fix_text`` that are pure character mappings (NFC, curly quotes, Latin ligatures, full-width
   forms, line breaks, control characters) but NOT ftfy's mojibake repair. Plain ASCII text, such as the
   class names, is unaffected by all of this.
2. Pre-tokenization with the pattern
   ``<|startoftext|> | <|endoftext|> | 's|'t|'re|'ve|'m|'ll|'d | letters+ | one number char |
   (not whitespace, letter or number)+`` (case-insensitive, leftmost alternative wins). The ``regex``
   module is not installed, so :func:`pretokenize` is a hand-written scanner over Unicode categories
   (``L*`` letters, ``N*`` numbers, Unicode ``White_Space``).
3. Each piece -> UTF-8 bytes -> printable stand-in characters (the byte->unicode table), the last
   symbol gets the ``</w>`` end-of-word marker, then BPE: repeatedly merge every occurrence (left to
   right, non-overlapping) of the adjacent pair with the lowest merge rank, until no ranked pair is left.
4. Vocabulary: 256 byte symbols, the same 256 with ``</w>``, one entry per merge (the concatenated pair),
   then ``<|startoftext|>`` and ``<|endoftext|>``. The merges file is ``bpe_simple_vocab_16e6.txt.gz``
   (first line is a header; the reference uses the next 49152 - 256 - 2 = 48894 lines), so SOT = 49406,
   EOT = 49407, vocabulary 49408.

The merges file cannot ship with this project. Without it only the 19 Cityscapes class names can be
tokenized, from the table below (computed with the reference tokenizer, see REFERENCE-NOTES.md);
:func:`tokenize` says so loudly on stderr when it falls back to the table.
"""

from __future__ import annotations

import gzip
import html
import os
import sys
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
# The reference keeps merges[1 : 49152 - 256 - 2 + 1] of the file's lines: 48894 merges.
OFFICIAL_NUM_MERGES = 49152 - 256 - 2
CLIP_SOT_ID = 49406
CLIP_EOT_ID = 49407

# Fallback: token ids of the 19 Cityscapes class names (trainId order) at context length 5, as
# produced by the reference tokenizer with the standard merges file (REFERENCE-NOTES.md table).
CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_TOKEN_IDS: Dict[str, Tuple[int, ...]] = {
    "road": (49406, 1759, 49407, 0, 0),
    "sidewalk": (49406, 23278, 49407, 0, 0),
    "building": (49406, 2307, 49407, 0, 0),
    "wall": (49406, 2569, 49407, 0, 0),
    "fence": (49406, 12679, 49407, 0, 0),
    "pole": (49406, 8170, 49407, 0, 0),
    "traffic light": (49406, 3399, 1395, 49407, 0),
    "traffic sign": (49406, 3399, 2292, 49407, 0),
    "vegetation": (49406, 33947, 49407, 0, 0),
    "terrain": (49406, 20184, 49407, 0, 0),
    "sky": (49406, 2390, 49407, 0, 0),
    "person": (49406, 2533, 49407, 0, 0),
    "rider": (49406, 9707, 49407, 0, 0),
    "car": (49406, 1615, 49407, 0, 0),
    "truck": (49406, 4629, 49407, 0, 0),
    "bus": (49406, 2840, 49407, 0, 0),
    "train": (49406, 3231, 49407, 0, 0),
    "motorcycle": (49406, 10297, 49407, 0, 0),
    "bicycle": (49406, 11652, 49407, 0, 0),
}

ENV_BPE_VOCAB = "MFUSER_BPE_VOCAB"


class TokenizerError(ValueError):
    """Bad merges file, unknown symbol, or a text longer than the context length."""


# ----------------------------------------------------------------------------------------------
# byte <-> printable character table
# ----------------------------------------------------------------------------------------------
def byte_to_unicode() -> List[str]:
    """Stand-in character for each byte value 0..255.

    Bytes that are printable Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for
    themselves; the remaining 68 bytes (controls, space, U+00A0, U+00AD) get U+0100, U+0101, ... in
    increasing byte order. The vocabulary's first 256 entries follow the order "self-mapped bytes in
    increasing order, then the others in increasing order" (see :func:`base_symbols`).
    """
    table = [""] * 256
    extra = 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


def base_symbols() -> List[str]:
    """The 256 single-byte symbols in vocabulary order (self-mapped bytes first, then the rest)."""
    table = byte_to_unicode()
    kept = [b for b in range(256) if table[b] == chr(b)]
    moved = [b for b in range(256) if table[b] != chr(b)]
    return [table[b] for b in kept + moved]


# ----------------------------------------------------------------------------------------------
# text clean-up
# ----------------------------------------------------------------------------------------------
# Unicode White_Space property (what the `regex` module's \s matches on str patterns).
_WHITE_SPACE = frozenset(
    [chr(c) for c in range(0x09, 0x0E)]
    + [" ", "\u0085", "\u00a0", "\u1680"]
    + [chr(c) for c in range(0x2000, 0x200B)]
    + ["\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
)

_CURLY_QUOTES = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
}
_LIGATURES = {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)}
_LIGATURES.update({"\u0132": "IJ", "\u0133": "ij", "\u01c7": "LJ", "\u01c8": "Lj", "\u01c9": "lj",
                   "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj"})
# Control characters ftfy's remove_control_chars drops (tab, newline, form feed and CR are kept).
_CONTROL = frozenset(
    [chr(c) for c in range(0x00, 0x09)] + ["\x0b"] + [chr(c) for c in range(0x0E, 0x20)] + ["\x7f"]
    + [chr(c) for c in range(0x206A, 0x2070)] + ["\ufeff"] + [chr(c) for c in range(0xFFF9, 0xFFFD)]
)


def _fix_text_subset(text: str) -> str:
    """The character-mapping parts of ftfy.fix_text (no mojibake repair; see module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n").replace("\u0085", "\n")
    out = []
    for ch in text:
        if ch in _CONTROL:
            continue
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:  # full-width ASCII forms
            ch = chr(code - 0xFEE0)
        elif code == 0x3000:  # ideographic space
            ch = " "
        ch = _CURLY_QUOTES.get(ch, ch)
        out.append(_LIGATURES.get(ch, ch))  # a ligature may become several characters
    return unicodedata.normalize("NFC", "".join(out))


def clean_text(text: str) -> str:
    """Reference clean-up: fix_text, unescape HTML twice, strip, collapse whitespace, lower-case."""
    text = _fix_text_subset(text)
    text = html.unescape(html.unescape(text)).strip()
    pieces, run = [], []
    for ch in text:  # every maximal whitespace run -> one space
        if ch in _WHITE_SPACE:
            if run:
                pieces.append("".join(run))
                run = []
        else:
            run.append(ch)
    if run:
        pieces.append("".join(run))
    return " ".join(pieces).lower()


# ----------------------------------------------------------------------------------------------
# pre-tokenization
# ----------------------------------------------------------------------------------------------
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # tried in this order


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def pretokenize(text: str) -> List[str]:
    """Split cleaned text into pieces exactly like the reference's findall over its pattern."""
    pieces: List[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        matched = None
        for special in (SOT_TEXT, EOT_TEXT):
            if text[i:i + len(special)].lower() == special:
                matched = text[i:i + len(special)]
                break
        if matched is None:
            for c in _CONTRACTIONS:
                if text[i:i + len(c)].lower() == c:
                    matched = text[i:i + len(c)]
                    break
        if matched is None:
            j = i
            if _is_letter(ch):
                while j < n and _is_letter(text[j]):
                    j += 1
            elif _is_number(ch):
                j = i + 1
            elif ch not in _WHITE_SPACE:
                while j < n and not (text[j] in _WHITE_SPACE or _is_letter(text[j])
                                     or _is_number(text[j])):
                    j += 1
            if j > i:
                matched = text[i:j]
        if matched is None:  # whitespace: no alternative matches here
            i += 1
            continue
        pieces.append(matched)
        i += len(matched)
    return pieces


# ----------------------------------------------------------------------------------------------
# merges file and the BPE itself
# ----------------------------------------------------------------------------------------------
def read_merges(path: str, max_merges: int = OFFICIAL_NUM_MERGES) -> List[Tuple[str, str]]:
    """Merge rules from a merges file (gzip or plain UTF-8 text).

    Line 0 is a header and is skipped; the next ``max_merges`` lines (fewer if the file is shorter;
    trailing empty lines ignored) are "left right" pairs, rank = line order.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise TokenizerError(f"cannot read BPE merges file {path!r}: {e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise TokenizerError(f"BPE merges file {path!r} is not a valid gzip file: {e}") from e
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"BPE merges file {path!r} is not UTF-8 text: {e}") from e
    body = lines[1:1 + max_merges]
    while body and body[-1].strip() == "":
        body.pop()
    merges = []
    for lineno, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"BPE merges file {path!r}, line {lineno}: expected two symbols, "
                                 f"got {line!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise TokenizerError(f"BPE merges file {path!r} holds no merge rules")
    return merges


class BPETokenizer:
    """Byte-level BPE with CLIP's vocabulary layout, built from a list of merge rules."""

    def __init__(self, merges: Sequence[Tuple[str, str]]):
        self.byte_table = byte_to_unicode()
        self.unicode_to_byte = {c: b for b, c in enumerate(self.byte_table)}
        symbols = base_symbols()
        vocab = symbols + [s + END_OF_WORD for s in symbols] + [a + b for a, b in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder: Dict[str, int] = {}
        for idx, sym in enumerate(vocab):  # like dict(zip(...)): a repeated symbol keeps the last id
            self.encoder[sym] = idx
        self.decoder = {idx: sym for sym, idx in self.encoder.items()}
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.sot = self.encoder[SOT_TEXT]
        self.eot = self.encoder[EOT_TEXT]
        self._cache: Dict[str, List[str]] = {SOT_TEXT: [SOT_TEXT], EOT_TEXT: [EOT_TEXT]}

    @classmethod
    def from_file(cls, path: str, max_merges: int = OFFICIAL_NUM_MERGES) -> "BPETokenizer":
        return cls(read_merges(path, max_merges))

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def bpe(self, piece: str) -> List[str]:
        """BPE symbols of one pre-tokenized piece (already mapped to stand-in characters)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        inf = float("inf")
        while len(word) > 1:
            best, best_rank = None, inf
            for pair in zip(word[:-1], word[1:]):
                r = self.ranks.get(pair, inf)
                if r < best_rank:
                    best, best_rank = pair, r
            if best is None:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> List[int]:
        """Token ids of a text (no SOT/EOT)."""
        ids: List[int] = []
        for piece in pretokenize(clean_text(text)):
            mapped = "".join(self.byte_table[b] for b in piece.encode("utf-8"))
            for sym in self.bpe(mapped):
                try:
                    ids.append(self.encoder[sym])
                except KeyError:
                    raise TokenizerError(f"BPE symbol {sym!r} (from {text!r}) is not in the "
                                         f"vocabulary; is the merges file complete?") from None
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray()
        for ch in text:  # SOT/EOT spell themselves out; everything else maps back to bytes
            data.append(self.unicode_to_byte[ch])
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def tokenize(self, texts: Union[str, Sequence[str]], context_length: int) -> torch.Tensor:
        """int64 [N, context_length]: SOT, ids, EOT, then zeros. Too long -> TokenizerError."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > context_length:
                raise TokenizerError(f"text {text!r} needs {len(ids)} tokens (with SOT/EOT), more "
                                     f"than the context length {context_length}")
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out


# ----------------------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------------------
def fallback_tokenize(names: Sequence[str], context_length: int) -> torch.Tensor:
    """Token ids from the embedded Cityscapes table (no merges file needed)."""
    out = torch.zeros(len(names), context_length, dtype=torch.int64)
    for row, name in enumerate(names):
        ids = CITYSCAPES_TOKEN_IDS.get(name)
        if ids is None:
            raise TokenizerError(
                f"class name {name!r} is not in the embedded Cityscapes token table; a BPE merges "
                f"file (bpe_simple_vocab_16e6.txt.gz, e.g. via --bpe-vocab or ${ENV_BPE_VOCAB}) is "
                f"needed to tokenize it")
        used = [i for i in ids if i != 0]
        if len(used) > context_length:
            raise TokenizerError(f"text {name!r} needs {len(used)} tokens (with SOT/EOT), more "
                                 f"than the context length {context_length}")
        out[row, :len(used)] = torch.tensor(used, dtype=torch.int64)
    return out


_FALLBACK_BANNER = (
    "!" * 78 + "\n"
    "!! WARNING: no BPE merges file given: class names are tokenized from the EMBEDDED TABLE of\n"
    "!! the 19 Cityscapes names (tools/reference/mfuser_ref/tokenizer.py), not by running BPE.\n"
    "!! Pass the CLIP merges file (bpe_simple_vocab_16e6.txt.gz) to tokenize anything else.\n"
    + "!" * 78
)


def tokenize(names: Union[str, Sequence[str]], context_length: int,
             bpe_vocab: Optional[str] = None, quiet: bool = False) -> torch.Tensor:
    """CLIP token ids, int64 [N, context_length] (SOT, ids, EOT, zero padding).

    With ``bpe_vocab`` (path of the merges file) the names are run through the BPE; without it the
    embedded Cityscapes table is used and a warning banner goes to stderr (unless ``quiet``).
    """
    if isinstance(names, str):
        names = [names]
    if bpe_vocab is not None:
        return BPETokenizer.from_file(bpe_vocab).tokenize(list(names), context_length)
    if not quiet:
        print(_FALLBACK_BANNER, file=sys.stderr)
    return fallback_tokenize(list(names), context_length)


def default_bpe_vocab() -> Optional[str]:
    """Path from $MFUSER_BPE_VOCAB if it names an existing file, else None."""
    path = os.environ.get(ENV_BPE_VOCAB)
    return path if path and os.path.isfile(path) else None
