"""The report's receipt status comes from running the real verifier over a signed run (real
keys, real EIP-712 signatures, real merges; no training): verified, tampered, wrong roster."""

from __future__ import annotations

import sys

import pytest
import torch

from fl_ray.report import render_report
from fl_ray.report.verification import FAILED, UNCHECKED, VERIFIED

SILOS = ["housing", "revenue", "transport"]


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory):
    synthetic = pytest.importorskip("fl_ray.receipts.synthetic")
    gen = torch.Generator().manual_seed(0)
    initial = {
        "layer.q_proj.lora_A.weight": torch.randn(4, 16, generator=gen),
        "layer.q_proj.lora_B.weight": torch.zeros(16, 4),
    }
    return synthetic.synthesise_run(
        tmp_path_factory.mktemp("signed"),
        initial,
        SILOS,
        rounds=3,
        dropped={2: {"revenue": "no reply"}},
    )


def _copy(run, tmp_path):
    import shutil

    return shutil.copytree(run.run_dir, tmp_path / "run")


def test_signed_run_verifies_round_by_round(signed_run, tmp_path):
    from fl_ray.receipts.verify import verify_run

    report = render_report(signed_run.run_dir, out_dir=tmp_path / "rep")
    v = report.verification
    assert v.state == "verified" and v.failure is None
    assert v.round_state == {0: VERIFIED, 1: VERIFIED, 2: VERIFIED, 3: VERIFIED}
    assert v.receipt_hashes == verify_run(signed_run.run_dir).receipt_hashes
    html = report.html_path.read_text("utf-8")
    assert '<div class="banner verified">Receipts: all 4 receipts verified' in html
    assert f"verifier: roster: {signed_run.run_dir / 'roster.json'}" in html  # which roster
    for r in range(4):
        assert v.receipt_hashes[r][:18] in html
    # the roster: every department's address, and the federation
    roster = signed_run.roster_path.read_text("utf-8")
    import json

    for silo, address in json.loads(roster)["silos"].items():
        assert f"<td>{silo}</td><td><code>{address}</code></td>" in html
    assert "federation <b>fl-ray-demo</b>" in html


def test_tampered_adapter_fails_at_its_round(signed_run, tmp_path):
    run_dir = _copy(signed_run, tmp_path)
    target = run_dir / "rounds" / "00002" / "global.safetensors"
    blob = bytearray(target.read_bytes())
    blob[-1] ^= 0x01  # one bit of the stored adapter's last weight
    target.write_bytes(bytes(blob))
    report = render_report(run_dir, out_dir=tmp_path / "rep")
    v = report.verification
    assert v.state == "failed" and v.failure_round == 2
    assert v.round_state == {0: VERIFIED, 1: VERIFIED, 2: FAILED, 3: UNCHECKED}
    assert "rounds/00002/global.safetensors" in v.failure
    html = report.html_path.read_text("utf-8")
    assert '<div class="banner failed">Receipts: verification FAILED: round 2' in html


def test_roster_of_another_federation_is_not_verified(signed_run, tmp_path):
    import json

    other = json.loads(signed_run.roster_path.read_text("utf-8"))
    other["federation"] = "someone-else"
    roster = tmp_path / "other.json"
    roster.write_text(json.dumps(other))
    report = render_report(signed_run.run_dir, roster_path=roster, out_dir=tmp_path / "rep")
    v = report.verification
    assert v.state == "failed"
    assert set(v.round_state.values()) == {UNCHECKED}
    assert "someone-else" in v.failure
    assert f"Roster: <code>{roster}</code>" in report.html_path.read_text("utf-8")


def test_receipts_without_a_runnable_verifier_are_not_shown_verified(
    signed_run, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "fl_ray.receipts.verify", None)  # as if not importable
    report = render_report(signed_run.run_dir, out_dir=tmp_path / "rep")
    v = report.verification
    assert v.state == "unavailable"
    assert set(v.round_state.values()) == {UNCHECKED}
    html = report.html_path.read_text("utf-8")
    assert '<div class="banner unavailable">Receipts: receipts present but NOT verified' in html
    assert '"ok">verified' not in html
