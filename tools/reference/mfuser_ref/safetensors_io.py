"""Read and write the safetensors format with plain python + torch (the `safetensors` package is not
installed here; when it is, files written by either are interchangeable).

Layout of a file:
    8 bytes      N, unsigned 64-bit little-endian: size of the header
    N bytes      UTF-8 JSON object: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                 ..., "__metadata__": {str: str}}; padded with spaces so the data starts 8-byte aligned
    rest         the data buffer: each tensor row-major, little-endian, at [begin, end) of the buffer

The header lists the tensors in the order they were given; the data buffer holds them ordered by
(largest element size first, then name), so every tensor starts at a multiple of its own element size
(as the reference writer does); the buffer is exactly covered, without gaps. The reader returns the
header order, checks all of that and names the file in every error.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file (the message names the file)."""


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    if sys.byteorder != "little":
        raise RuntimeError("big-endian hosts are not supported")
    # Reinterpret as bytes without numpy dtype limitations (bfloat16, bool).
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool \
        else t.to(torch.uint8).reshape(-1).numpy().tobytes()


def _plan(tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]]):
    """(header bytes incl. the 8-byte size, tensor names in buffer order)."""
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
        if t.dtype not in _NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} has no safetensors code")
    order = sorted(tensors, key=lambda n: (-_itemsize(tensors[n].dtype), n))
    header: Dict[str, object] = {}
    if metadata:
        meta = {}
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
            meta[k] = v
        header["__metadata__"] = meta
    offset, entries = 0, {}
    for name in order:
        t = tensors[name]
        size = t.numel() * _itemsize(t.dtype)
        entries[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    for name in tensors:  # the header lists the tensors in the caller's order
        header[name] = entries[name]
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    return struct.pack("<Q", len(hjson)) + hjson, order


def serialize(tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (and string ``metadata``)."""
    head, order = _plan(tensors, metadata)
    return head + b"".join(_tensor_bytes(tensors[n]) for n in order)


def _atomic_writer(path: str, write) -> None:
    """Call write(file) on a temporary file in the folder of ``path``, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary file in the same folder and a rename."""
    _atomic_writer(path, lambda f: f.write(data))


def save_file(tensors: Mapping[str, torch.Tensor], path: str,
              metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write a safetensors file atomically (temporary file + rename), one tensor at a time."""
    head, order = _plan(tensors, metadata)

    def write(f):
        f.write(head)
        for name in order:
            f.write(_tensor_bytes(tensors[name]))

    _atomic_writer(path, write)


def _parse_header(raw: bytes, path: str, file_size: int) -> Tuple[dict, int]:
    if len(raw) < 8:
        raise SafetensorsError(f"{path}: not a safetensors file (only {len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > file_size or 8 + n > len(raw):
        raise SafetensorsError(f"{path}: not a safetensors file or truncated (header size {n}, "
                               f"file size {file_size})")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    return header, 8 + n


def _read_raw_header(f, path: str) -> Tuple[dict, int, int]:
    file_size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    raw = head + (f.read(n) if len(head) == 8 and n <= min(_MAX_HEADER, file_size) else b"")
    header, start = _parse_header(raw, path, file_size)
    return header, start, file_size


def _check_spans(header: dict, path: str, buf_len: int):
    spans = []
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: bad header entry for {name!r}: {info!r}") from e
        numel = 1
        for s in shape:
            if s < 0:
                raise SafetensorsError(f"{path}: {name}: negative dimension in {shape}")
            numel *= s
        if not 0 <= begin <= end <= buf_len:
            raise SafetensorsError(f"{path}: {name}: data offsets [{begin}, {end}) outside the "
                                   f"{buf_len}-byte buffer (file truncated?)")
        if end - begin != numel * _itemsize(dtype):
            raise SafetensorsError(f"{path}: {name}: {end - begin} bytes for shape {shape} "
                                   f"{info['dtype']}")
        spans.append((begin, end, name, dtype, shape))
    pos = 0
    for begin, end, name, _, _ in sorted(spans, key=lambda s: (s[0], s[1])):
        if begin != pos:
            raise SafetensorsError(f"{path}: {name}: data at {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != buf_len:
        raise SafetensorsError(f"{path}: data buffer is {buf_len} bytes, tensors cover {pos} "
                               f"(trailing bytes or truncated file)")
    return {s[2]: s for s in spans}


def _open_for_reading(path: str):
    """The file opened in binary mode; an OSError becomes a SafetensorsError naming the file."""
    try:
        return open(path, "rb")
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read: {e}") from e


def load_file(path: str, with_metadata: bool = False):
    """Tensors of a safetensors file as an OrderedDict in header order (copies, writable).

    With ``with_metadata`` returns (tensors, metadata dict)."""
    with _open_for_reading(path) as f:
        header, start, file_size = _read_raw_header(f, path)
        metadata = header.pop("__metadata__", {}) or {}
        spans = _check_spans(header, path, file_size - start)
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for name in header:
            begin, end, _, dtype, shape = spans[name]
            if end == begin:
                out[name] = torch.empty(shape, dtype=dtype)
                continue
            chunk = bytearray(end - begin)
            f.seek(start + begin)
            if f.readinto(chunk) != len(chunk):
                raise SafetensorsError(f"{path}: {name}: short read (file changed while reading?)")
            if dtype == torch.bool:
                t = torch.frombuffer(chunk, dtype=torch.uint8).to(torch.bool)
            else:
                t = torch.frombuffer(chunk, dtype=dtype)
            out[name] = t.reshape(shape)
    if with_metadata:
        return out, dict(metadata)
    return out


def read_header(path: str) -> dict:
    """The JSON header of a safetensors file (without loading the data), checked for consistency."""
    with _open_for_reading(path) as f:
        header, start, file_size = _read_raw_header(f, path)
    _check_spans({k: v for k, v in header.items() if k != "__metadata__"}, path, file_size - start)
    return header
