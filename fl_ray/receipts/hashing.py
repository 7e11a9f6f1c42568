"""Canonical hashes: adapter tensors, base-model files, JSON, and the run directory's files.

Every hash is SHA-256 (FIPS 180-4) written as ``0x`` + 64 lowercase hex digits, the form
EIP-712's ``bytes32`` takes. Keccak appears only inside EIP-712 signing (see ``typed_data``).

Tensor hash (``state_hash``), format ``fl_ray.state.v1``: SHA-256 over

    b"fl_ray.state.v1\\0" || u64(count)
    for each name in sorted(names) (Python str order = Unicode code point order):
        frame(name utf-8) || frame(dtype name, e.g. b"float32") || u64(ndim) || u64(dim)...
        || frame(raw element bytes, little-endian, C order)

where ``u64`` is an unsigned 64-bit little-endian integer and ``frame(b) = u64(len(b)) || b``.
Length prefixes make the encoding unambiguous: no two different states share a byte stream.
The hash depends only on names, dtypes, shapes and values, not on the file format holding them.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ZERO_HASH = "0x" + "00" * 32
STATE_HASH_MAGIC = b"fl_ray.state.v1\0"
BASE_HASH_MAGIC = b"fl_ray.base.v1\0"
# Weight files the base fingerprint covers, beside config.json (top level of the model dir).
WEIGHT_SUFFIXES = (".safetensors", ".bin")

if sys.byteorder != "little":  # raw tensor bytes are hashed as stored in memory
    raise ImportError("fl_ray.receipts hashes raw tensor bytes and needs a little-endian host")


def _u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def _frame(blob: bytes) -> bytes:
    return _u64(len(blob)) + blob


def hex32(digest: bytes) -> str:
    """A 32-byte digest as ``0x`` + lowercase hex."""
    return "0x" + digest.hex()


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as ``0x``-prefixed lowercase hex."""
    return hex32(hashlib.sha256(data).digest())


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # a uint8 view reads any dtype (bfloat16 included, which numpy lacks) without a copy
    return memoryview(flat.view(torch.uint8).numpy())


def _entry_header(name: str, dtype: str, shape: list[int] | tuple[int, ...], nbytes: int) -> bytes:
    """frame(name) || frame(dtype) || u64(ndim) || u64(dim)... || u64(nbytes), in one pack."""
    n, d = name.encode("utf-8"), dtype.encode("ascii")
    fmt = f"<Q{len(n)}sQ{len(d)}sQ{len(shape)}QQ"
    return struct.pack(fmt, len(n), n, len(d), d, len(shape), *shape, nbytes)


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """Canonical hash of an adapter state (format ``fl_ray.state.v1``, see module docstring)."""
    h = hashlib.sha256(STATE_HASH_MAGIC + _u64(len(state)))
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_hash: {name} is {type(tensor).__name__}, not a tensor")
        data = _tensor_bytes(tensor)
        dtype = str(tensor.dtype).removeprefix("torch.")
        h.update(_entry_header(name, dtype, [int(x) for x in tensor.shape], data.nbytes))
        h.update(data)
    return hex32(h.digest())


# safetensors dtype codes -> torch dtype names (what state_hash writes), with element sizes
_SAFETENSORS_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}


def safetensors_state_hash(blob: bytes) -> str:
    """``state_hash`` of the tensors in a safetensors file, read straight from its bytes.

    Equal to ``state_hash(safetensors.torch.load(blob))`` (a test pins this) but builds no
    tensors, which is most of the verifier's time on a long run. Raises ValueError on a file
    that is not well-formed safetensors (safetensors' own format rules, checked here).
    """
    if len(blob) < 8:
        raise ValueError("header too small")
    size = int.from_bytes(blob[:8], "little")
    if size > len(blob) - 8:
        raise ValueError("header length beyond the end of the file")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    data = memoryview(blob)[8 + size :]
    spans = []
    h = hashlib.sha256(STATE_HASH_MAGIC + _u64(len(header)))
    for name in sorted(header):
        info = header[name]
        try:
            dtype, itemsize = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name}: bad dtype, shape or offsets") from None
        count = 1
        for d in shape:
            count *= d
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(data):
            raise ValueError(f"tensor {name}: offsets out of range")
        if end - start != count * itemsize:
            raise ValueError(f"tensor {name}: byte length does not match its shape")
        spans.append((start, end))
        h.update(_entry_header(name, dtype, shape, end - start))
        h.update(data[start:end])
    # safetensors requires the data buffer to be covered exactly, without overlaps or holes
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise ValueError("tensor data overlaps or leaves a hole")
        position = end
    if position != len(data):
        raise ValueError("trailing bytes after the tensor data")
    return hex32(h.digest())


EMPTY_STATE_HASH = state_hash({})


def _hash_file_into(h: Any, path: Path) -> None:
    h.update(_frame(path.name.encode("utf-8")))
    h.update(_u64(path.stat().st_size))
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)


def base_model_files(model_dir: str | Path) -> list[Path]:
    """config.json and the top-level weight files, in name order: what the fingerprint covers."""
    root = Path(model_dir)
    weights = [p for p in root.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return [root / "config.json", *sorted(weights, key=lambda p: p.name)]


def base_model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over config.json + weight files (``*.safetensors``, ``*.bin``) sorted by name.

    Format ``fl_ray.base.v1``: magic || u64(count) || per file: frame(name) || u64(size) || bytes.
    Tokenizer files are not covered (they do not change what the adapter was trained on top of).
    """
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"no model config at {root / 'config.json'}")
    files = base_model_files(root)
    h = hashlib.sha256(BASE_HASH_MAGIC)
    h.update(_u64(len(files)))
    for path in files:
        _hash_file_into(h, path)
    return hex32(h.digest())


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII only (non-ASCII as \\u escapes), no NaN.

    Python's float repr round-trips exactly, so parse → re-encode reproduces the same bytes.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def params_hash(params: Mapping[str, Any]) -> str:
    """Hash of strategy parameters: SHA-256 of their canonical JSON."""
    return sha256_hex(canonical_json(dict(params)))


def metrics_file_bytes(metrics: Mapping[str, Any]) -> bytes:
    """The exact bytes ``RunDir.write_round`` writes as ``metrics.json`` (a test pins this)."""
    text = json.dumps(metrics, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8")


def metrics_hash(metrics: Mapping[str, Any]) -> str:
    """Hash of a round's metrics: SHA-256 of its ``metrics.json`` file bytes."""
    return sha256_hex(metrics_file_bytes(metrics))
