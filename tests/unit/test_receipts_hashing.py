"""Canonical hashes: the tensor hash's exact byte format, and what each hash is sensitive to."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from fl_ray.receipts.hashing import (
    EMPTY_STATE_HASH,
    base_model_fingerprint,
    canonical_json,
    metrics_file_bytes,
    metrics_hash,
    state_hash,
)
from fl_ray.rundir import RunDir


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def test_state_hash_matches_the_documented_byte_format():
    state = {"b": torch.tensor([1.0, -2.0]), "a": torch.tensor([[7]], dtype=torch.int32)}
    stream = b"fl_ray.state.v1\0" + _u64(2)
    stream += _u64(1) + b"a" + _u64(5) + b"int32" + _u64(2) + _u64(1) + _u64(1)
    stream += _u64(4) + struct.pack("<i", 7)
    stream += _u64(1) + b"b" + _u64(7) + b"float32" + _u64(1) + _u64(2)
    stream += _u64(8) + struct.pack("<ff", 1.0, -2.0)
    assert state_hash(state) == "0x" + hashlib.sha256(stream).hexdigest()
    assert EMPTY_STATE_HASH == "0x" + hashlib.sha256(b"fl_ray.state.v1\0" + _u64(0)).hexdigest()


def test_state_hash_ignores_insertion_order_and_memory_layout():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert state_hash({"p": x, "q": x.t()}) == state_hash({"q": x.t().contiguous(), "p": x})


def test_state_hash_sees_name_dtype_shape_and_every_value():
    x = torch.arange(6, dtype=torch.float32)
    base = state_hash({"w": x})
    variants = [
        {"v": x},  # name
        {"w": x.view(torch.int32)},  # same bytes, other dtype
        {"w": x.reshape(2, 3)},  # same bytes, other shape
        {"w": torch.cat([x[:5], torch.nextafter(x[5:], x[5:] + 1)])},  # last bit of one value
        {"w": x, "z": torch.zeros(0)},  # one more (empty) tensor
    ]
    hashes = {state_hash(v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)


def test_state_hash_framing_is_unambiguous_across_name_boundaries():
    # naive concatenation of name+bytes would make these two streams identical
    one = {"ab": torch.zeros(0, dtype=torch.uint8)}
    two = {"a": torch.zeros(0, dtype=torch.uint8), "b": torch.zeros(0, dtype=torch.uint8)}
    assert state_hash(one) != state_hash(two)


def test_state_hash_handles_bfloat16():
    x = torch.tensor([1.5, -0.25], dtype=torch.bfloat16)
    assert state_hash({"w": x}) != state_hash({"w": x.to(torch.float16)})


def test_base_fingerprint_covers_config_and_weights_not_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "tokenizer.json").write_text("{}")
    first = base_model_fingerprint(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"x": 2}')
    assert base_model_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    assert base_model_fingerprint(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        base_model_fingerprint(tmp_path / "missing")


def test_canonical_json_is_sorted_compact_ascii_and_refuses_nan():
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_metrics_hash_is_the_hash_of_the_file_rundir_writes(tmp_path):
    from fl_ray.config import parse_recipe

    recipe = parse_recipe(
        {
            "run_name": "m",
            "output_dir": str(tmp_path),
            "base_model": {"path": "x"},
            "silos": [{"name": "a", "data_dir": "d"}],
        },
        check_paths=False,
    )
    run = RunDir.create(recipe, {})
    metrics = {"round": 0, "status": "initial", "eval_loss": 1.25, "note": "部門"}
    run.write_round(0, {"w": torch.zeros(1)}, metrics)
    written = (run.round_dir(0) / "metrics.json").read_bytes()
    assert written == metrics_file_bytes(metrics)
    assert metrics_hash(metrics) == "0x" + hashlib.sha256(written).hexdigest()
    assert json.loads(written) == metrics


def test_hash_from_safetensors_bytes_equals_tensor_hash():
    from safetensors.torch import save

    from fl_ray.receipts.hashing import safetensors_state_hash

    state = {
        "b.lora_B": torch.randn(3, 4),
        "a.lora_A": torch.randn(5).to(torch.bfloat16),
        "count": torch.tensor(3, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False]),
    }
    blob = save(state)
    assert safetensors_state_hash(blob) == state_hash(state)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    header["b.lora_B"]["shape"] = [4, 3]  # same bytes, other shape: a different state
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert len(text) == size
    assert safetensors_state_hash(blob[:8] + text + blob[8 + size :]) != state_hash(state)
    for broken in (blob[:5], blob[:-1], blob + b"\0"):
        with pytest.raises(ValueError):
            safetensors_state_hash(broken)
