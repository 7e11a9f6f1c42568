"""``verify_run`` / ``fl-ray verify`` against a real signed run directory and its mutations.

The run is synthesised with real keys, real signatures and the real fedavg merge (no training);
every mutation must be rejected, naming the round, field and file that broke.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from eth_account import Account
from safetensors.torch import load_file

from fl_ray.cli import main
from fl_ray.receipts.chain import encode_receipt
from fl_ray.receipts.hashing import state_hash
from fl_ray.receipts.keys import load_account
from fl_ray.receipts.synthetic import synthesise_run
from fl_ray.receipts.typed_data import SECP256K1_N, sign_typed
from fl_ray.receipts.verify import verify_run
from fl_ray.rundir import save_state

SILOS = ["transport", "housing", "revenue", "health"]
ROUNDS = 4


def initial_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.layers.{layer}.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(4, 16, generator=gen)
            state[f"{prefix}.lora_B.weight"] = torch.zeros(16, 4)
    return state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return synthesise_run(
        tmp_path_factory.mktemp("signed"),
        initial_state(),
        SILOS,
        ROUNDS,
        dropped={2: {"health": "no reply before the 30 s deadline"}},
        aborted_rounds=frozenset({3}),
    )


@pytest.fixture
def run(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine.run_dir, tmp_path / "run"))


def coordinator(pristine):
    return load_account(
        pristine.keys_dir / "coordinator.json", password_file=pristine.keys_dir / "password.txt"
    )


def rd(r: int) -> str:
    return f"rounds/{r:05d}"


def assert_fails(run: Path, round_num, field, file, upto=None, match=None, **kwargs):
    result = verify_run(run, upto_round=upto, **kwargs)
    assert not result.ok and result.failure is not None, "mutation was not detected"
    f = result.failure
    assert (f.round, f.field, f.file) == (round_num, field, file), str(f)
    if match:
        assert match in f.message, str(f)
    assert "\n" not in str(f)
    return f


def resign(run: Path, r: int, account, edit=lambda data: None) -> None:
    """Rewrite round r's receipt after ``edit(data)``, signed (validly) by ``account``."""
    path = run / rd(r) / "receipt.json"
    data = json.loads(path.read_bytes())
    edit(data)
    data["signature"] = sign_typed(
        account, data["message"]["federation"], "RoundReceipt", data["message"]
    )
    path.write_bytes(encode_receipt(data))


def high_s_twin(signature: str) -> str:
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64], "big")
    return "0x" + (raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()


def test_pristine_run_verifies_with_one_line_per_round(pristine):
    lines: list[str] = []
    result = verify_run(pristine.run_dir, echo=lines.append)
    assert result.ok and result.failure is None
    assert result.rounds == list(range(ROUNDS + 1))
    assert len(set(result.receipt_hashes.values())) == ROUNDS + 1
    round_lines = [line for line in lines if line.startswith("round ")]
    assert len(round_lines) == ROUNDS + 1
    assert "recomputed bitwise (fedavg)" in round_lines[1]
    assert "dropped 1" in round_lines[2] and "aborted" in round_lines[3]
    assert any("own copy" in line for line in lines)  # says which roster it trusted
    assert any("fingerprint" in line and "computed" in line for line in lines)


def test_every_single_byte_change_of_a_receipt_is_rejected(run):
    path = run / rd(1) / "receipt.json"
    original = path.read_bytes()
    fields = set()
    for i in range(len(original)):
        mutated = bytearray(original)
        mutated[i] ^= 0x01
        path.write_bytes(bytes(mutated))
        result = verify_run(run, upto_round=1, recompute=False)
        assert not result.ok, f"byte {i} ({chr(original[i])!r}) changed without detection"
        assert (result.failure.round, result.failure.file) == (1, f"{rd(1)}/receipt.json"), i
        fields.add(result.failure.field)
    path.write_bytes(original)
    assert verify_run(run).ok
    # the failures name specific fields, not one catch-all
    assert {"signature", "signer", "prev_receipt", "federation", "round"} <= fields


@pytest.mark.parametrize("where", ["header", "data"])
def test_a_changed_byte_of_an_update_is_rejected(run, where):
    path = run / rd(2) / "updates" / "revenue.safetensors"
    blob = bytearray(path.read_bytes())
    blob[10 if where == "header" else len(blob) - 3] ^= 0x01
    path.write_bytes(bytes(blob))
    assert_fails(
        run, 2, "contributions[revenue].update_hash", f"{rd(2)}/updates/revenue.safetensors"
    )


def test_a_changed_byte_of_a_global_adapter_is_rejected(run):
    path = run / rd(1) / "global.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x80
    path.write_bytes(bytes(blob))
    assert_fails(run, 1, "global_after", f"{rd(1)}/global.safetensors", match="does not hash")


def test_a_changed_metrics_file_is_rejected(run):
    path = run / rd(4) / "metrics.json"
    path.write_text(path.read_text().replace('"ok"', '"OK"'))
    assert_fails(run, 4, "metrics_hash", f"{rd(4)}/metrics.json")


def test_deleted_duplicated_and_swapped_receipts_are_rejected(run):
    first, second = run / rd(1) / "receipt.json", run / rd(2) / "receipt.json"
    one, two = first.read_bytes(), second.read_bytes()
    second.unlink()
    assert_fails(run, 2, "receipt", f"{rd(2)}/receipt.json", match="missing")
    second.write_bytes(one)  # duplicate of round 1
    assert_fails(run, 2, "round", f"{rd(2)}/receipt.json", match="for round 1")
    first.write_bytes(two)  # swapped
    second.write_bytes(one)
    assert_fails(run, 1, "round", f"{rd(1)}/receipt.json", match="for round 2")


def test_a_missing_round_directory_is_a_gap(run):
    shutil.rmtree(run / rd(2))
    assert_fails(run, 2, "rounds", rd(2), match="missing")


def test_a_receipt_resigned_by_a_key_not_in_the_roster_is_rejected(run, pristine):
    stranger = Account.from_key("0x" + "77" * 32)
    resign(run, 2, stranger)  # claims to be the coordinator
    assert_fails(run, 2, "signature", f"{rd(2)}/receipt.json", match=stranger.address)

    def claim(data):
        data["signer"] = stranger.address

    resign(run, 2, stranger, claim)  # names itself as signer
    assert_fails(run, 2, "signer", f"{rd(2)}/receipt.json")


def test_a_high_s_twin_of_a_valid_signature_is_rejected(run, pristine):
    path = run / rd(1) / "receipt.json"
    data = json.loads(path.read_bytes())
    data["signature"] = high_s_twin(data["signature"])
    path.write_bytes(encode_receipt(data))
    assert_fails(run, 1, "signature", f"{rd(1)}/receipt.json", match="high-s")


def test_a_high_s_twin_of_a_silo_signature_is_rejected(run, pristine):
    def twin(data):
        first = data["message"]["contributions"][0]
        first["signature"] = high_s_twin(first["signature"])

    resign(run, 1, coordinator(pristine), twin)  # even inside a validly signed receipt
    silo = json.loads((run / rd(1) / "receipt.json").read_bytes())["message"]["contributions"][0]
    assert_fails(
        run, 1, f"contributions[{silo['silo']}].signature", f"{rd(1)}/receipt.json", match="high-s"
    )


def test_a_receipt_copied_from_another_federation_is_rejected(run, tmp_path):
    other = synthesise_run(
        tmp_path / "other", initial_state(), SILOS, 2, federation_id="another-fed"
    )
    shutil.copyfile(other.run_dir / rd(1) / "receipt.json", run / rd(1) / "receipt.json")
    assert_fails(run, 1, "federation", f"{rd(1)}/receipt.json", match="another-fed")


def test_a_roster_for_another_federation_is_rejected(run, tmp_path):
    other = synthesise_run(tmp_path / "other", initial_state(), SILOS, 1, federation_id="x-fed")
    f = assert_fails(run, None, "federation", str(other.roster_path), roster_path=other.roster_path)
    assert "x-fed" in f.message


def test_a_signed_but_wrong_merge_is_caught_by_recomputation(run, pristine):
    """A coordinator that signs a global adapter that is not the merge of the signed updates."""
    gpath = run / rd(4) / "global.safetensors"
    state = {k: v.clone() for k, v in load_file(gpath).items()}
    key = sorted(state)[0]
    state[key][0, 0] += 1e-3
    gpath.unlink()
    save_state(gpath, state)

    def point_at_new_global(data):
        data["message"]["global_after"] = state_hash(state)

    resign(run, 4, coordinator(pristine), point_at_new_global)
    f = assert_fails(run, 4, "merge", f"{rd(4)}/global.safetensors", match="max |Δ| = 0.001")
    assert "fedavg" in f.message
    assert verify_run(run, recompute=False).ok  # hashes and signatures alone cannot see it


def test_final_adapter_must_be_the_last_global(run):
    final = run / "final" / "adapter"
    final.mkdir(parents=True)
    last = load_file(run / rd(ROUNDS) / "global.safetensors")
    save_state(final / "adapter_model.safetensors", last)
    lines: list[str] = []
    assert verify_run(run, echo=lines.append).ok
    assert lines[-1].startswith("final/adapter/adapter_model.safetensors is round 4")
    earlier = load_file(run / rd(1) / "global.safetensors")
    save_state(final / "adapter_model.safetensors", earlier)
    assert_fails(run, ROUNDS, "final adapter", "final/adapter/adapter_model.safetensors")


def test_server_state_is_hashed_and_recomputed(tmp_path):
    signed = synthesise_run(
        tmp_path, initial_state(), SILOS[:2], 2, strategy={"name": "fedadam", "server_lr": 0.01}
    )
    lines: list[str] = []
    assert verify_run(signed.run_dir, echo=lines.append).ok
    assert any("recomputed bitwise (fedadam)" in line for line in lines)
    path = signed.run_dir / rd(1) / "server_state.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-2] ^= 0x01
    path.write_bytes(bytes(blob))
    assert_fails(signed.run_dir, 1, "server_state_after", f"{rd(1)}/server_state.safetensors")


def test_ffa_updates_hold_only_b_and_recompute(tmp_path):
    signed = synthesise_run(tmp_path, initial_state(), SILOS[:3], 2, strategy={"name": "ffa"})
    update = load_file(signed.run_dir / rd(1) / "updates" / "housing.safetensors")
    assert update and all("lora_B" in k for k in update)
    lines: list[str] = []
    assert verify_run(signed.run_dir, echo=lines.append).ok
    assert any("recomputed bitwise (ffa)" in line for line in lines)


def test_dp_merge_is_reported_not_recomputable_and_unsaved_updates_not_recomputed(tmp_path):
    dp = synthesise_run(
        tmp_path / "dp",
        initial_state(),
        SILOS[:2],
        1,
        strategy={"name": "dp", "clip": 1.0, "noise_multiplier": 0.5},
    )
    lines: list[str] = []
    assert verify_run(dp.run_dir, echo=lines.append).ok
    assert any("not recomputable: noise" in line for line in lines)
    bare = synthesise_run(tmp_path / "bare", initial_state(), SILOS[:2], 1, save_updates=False)
    lines = []
    assert verify_run(bare.run_dir, echo=lines.append).ok
    assert any("not recomputed: updates not stored" in line for line in lines)


def test_verify_cli_exit_codes(run, capsys):
    assert main(["verify", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("round ") for line in out) == ROUNDS + 1
    assert out[-1].startswith(f"verified rounds 0..{ROUNDS}: chain head 0x")
    (run / rd(3) / "receipt.json").unlink()
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == (
        f"verify FAILED: round 3: field receipt in {rd(3)}/receipt.json: file missing"
    )
    assert main(["verify", str(run), "--round", "2"]) == 0
    capsys.readouterr()
    assert main(["verify", str(run / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_an_edited_recipe_is_rejected(run):
    path = run / "recipe.yaml"
    text = path.read_text()
    assert "\nseed: 0\n" in text
    path.write_text(text.replace("\nseed: 0\n", "\nseed: 1\n"))
    assert_fails(run, 0, "recipe_hash", "recipe.yaml")
