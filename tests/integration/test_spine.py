"""The spine on real Ray: actors per silo, coordinator actor, run directory that peft and
transformers load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fl_ray.config import parse_recipe
from fl_ray.rundir import RunDir
from fl_ray.strategies import weighted_mean
from tests.conftest import recipe_tree, write_recipe


@pytest.fixture(scope="module")
def spine_run(tiny_base, demo_data, tmp_path_factory):
    """2 silos × 2 rounds through the real CLI on an embedded local Ray."""
    out = tmp_path_factory.mktemp("runs")
    path = write_recipe(out / "recipe.yaml", recipe_tree(tiny_base, demo_data, out))
    proc = subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", "run", str(path), "run_name=spine"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "spine", proc.stdout


def test_run_directory_layout(spine_run):
    run_dir, stdout = spine_run
    run = RunDir(run_dir)
    assert run.complete_rounds() == [0, 1, 2]
    assert (run_dir / "recipe.yaml").is_file() and (run_dir / "run.json").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]
    for r in (1, 2):
        m = run.round_metrics(r)
        assert m["status"] == "ok" and m["contributed"] == ["housing", "transport"]
        assert sorted(p.name for p in (run.round_dir(r) / "updates").iterdir()) == [
            "housing.safetensors",
            "transport.safetensors",
        ]
        for silo in ("housing", "transport"):
            assert m["silos"][silo]["node_id"]  # the silo ran in an actor and said where
            assert m["silos"][silo]["num_examples"] == 64
    assert "run directory:" in stdout and "held-out loss per silo" in stdout


def test_round_global_is_fedavg_of_stored_updates(spine_run):
    run = RunDir(spine_run[0])
    m = run.round_metrics(2)
    updates = run.load_updates(2)
    names = sorted(updates)
    expected = weighted_mean(
        [updates[n] for n in names], [m["silos"][n]["num_examples"] for n in names]
    )
    stored = run.load_global(2)
    assert all(torch.equal(stored[k], expected[k]) for k in expected)


def test_receipts_verify_offline_and_name_every_contribution(spine_run):
    from fl_ray.receipts import verify_run

    run_dir, stdout = spine_run
    result = verify_run(run_dir, roster_path=run_dir / "roster.json")
    assert result.ok, str(result.failure)
    assert result.rounds == [0, 1, 2]
    receipt = json.loads((run_dir / "rounds" / "00002" / "receipt.json").read_text())
    assert [c["silo"] for c in receipt["message"]["contributions"]] == ["housing", "transport"]
    assert "fl-ray verify" in stdout
    proc = subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", "verify", str(run_dir)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("round ") >= 3


def test_updates_carry_only_lora_tensors(spine_run):
    run = RunDir(spine_run[0])
    for state in run.load_updates(1).values():
        assert state and all(("lora_A" in k or "lora_B" in k) for k in state)


def test_final_adapter_and_merged_model_load(spine_run, tiny_base):
    run = RunDir(spine_run[0])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    peft_model = PeftModel.from_pretrained(base, str(run.final_adapter_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(run.final_merged_dir))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = peft_model(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    # and the adapter is not a no-op: training moved the model away from the base
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    with torch.no_grad():
        assert not torch.allclose(fresh(input_ids=ids).logits, b, atol=1e-4)


def test_rerun_into_existing_run_dir_is_refused(spine_run, tmp_path):
    run_dir = spine_run[0]
    recipe = parse_recipe(json.loads(json.dumps(RunDir(run_dir).recipe_dict())))
    path = write_recipe(tmp_path / "again.yaml", recipe.to_dict())
    proc = subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", "run", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "already exists" in proc.stderr
