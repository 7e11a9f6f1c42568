"""Strategies end to end on real Ray through the CLI: exact (SVD), FedAdam (server moments saved
per round), and a mixed-rank federation merged exactly (stacked, rank Σrₖ)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from fl_ray.rundir import RunDir
from fl_ray.strategies import lora_pairs
from fl_ray.strategies.server_opt import STEP_KEY
from tests.conftest import recipe_tree, write_recipe


def run_cli(tiny_base, demo_data, out, run_name, *overrides, tree_changes=None):
    tree = recipe_tree(tiny_base, demo_data, out)
    tree["output"] = {"save_merged": False}
    for change in tree_changes or []:
        change(tree)
    path = write_recipe(out / f"{run_name}.yaml", tree)
    proc = subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", "run", str(path), f"run_name={run_name}", *overrides],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return RunDir(out / run_name)


def products(state):
    return {a: state[b].double() @ state[a].double() for a, b in lora_pairs(state)}


def test_exact_svd_run(tiny_base, demo_data, tmp_path):
    run = run_cli(tiny_base, demo_data, tmp_path, "exact", "strategy.name=exact")
    assert run.complete_rounds() == [0, 1, 2]
    for r in (1, 2):
        m = run.round_metrics(r)
        assert m["status"] == "ok" and m["contributed"] == ["housing", "transport"]
        assert m["strategy"] == {"name": "exact", "params": {}}
        assert m["merge_info"]["mode"] == "svd" and m["merge_info"]["rank"] == [4]
    # the stored global is the best rank-4 approximation of the mean of the silos' B·A
    updates, stored = run.load_updates(2), run.load_global(2)
    weights = [run.round_metrics(2)["silos"][n]["num_examples"] for n in sorted(updates)]
    per = [products(updates[n]) for n in sorted(updates)]
    for key, got in products(stored).items():
        target = sum(w / sum(weights) * p[key] for w, p in zip(weights, per, strict=True))
        u, s, vh = torch.linalg.svd(target)
        assert float((got - (u[:, :4] * s[:4]) @ vh[:4]).abs().max()) < 1e-6
    assert (run.final_adapter_dir / "adapter_config.json").is_file()


def test_fedadam_run_saves_server_state(tiny_base, demo_data, tmp_path):
    run = run_cli(
        tiny_base,
        demo_data,
        tmp_path,
        "adam",
        "strategy.name=fedadam",
        "strategy.server_lr=0.01",
        "strategy.beta1=0.9",
        "strategy.beta2=0.99",
        "strategy.tau=0.001",
    )
    assert run.complete_rounds() == [0, 1, 2]
    params = {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}
    for r in (1, 2):
        m = run.round_metrics(r)
        assert m["status"] == "ok"
        assert m["strategy"] == {"name": "fedadam", "params": params}
        assert m["merge_info"] == {"server_step": r}
        assert (run.round_dir(r) / "server_state.safetensors").is_file()
    server = run.load_server_state(2)
    assert int(server[STEP_KEY]) == 2
    glob = run.load_global(2)
    assert all(server[f"m/{k}"].shape == glob[k].shape for k in glob)


@pytest.mark.slow
def test_mixed_rank_exact_stack_run(tiny_base, demo_data, tmp_path):
    """housing trains at rank 2, transport at rank 4; the stacked global has rank 6 and each
    silo loads it through fit_rank (needs the Silo.train/evaluate integration)."""

    def ranks(tree):
        tree["silos"][0]["lora_r"] = 4  # transport
        tree["silos"][1]["lora_r"] = 2  # housing

    run = run_cli(
        tiny_base, demo_data, tmp_path, "mixed", "strategy.name=exact", "strategy.mode=stack",
        tree_changes=[ranks],
    )  # fmt: skip
    assert run.complete_rounds() == [0, 1, 2]
    for r in (1, 2):
        m = run.round_metrics(r)
        assert m["status"] == "ok" and m["contributed"] == ["housing", "transport"], m["dropped"]
        assert m["merge_info"]["rank"] == [6]
    updates, stored = run.load_updates(2), run.load_global(2)
    assert {n: u[next(iter(sorted(u)))].shape[0] for n, u in updates.items()} == {
        "housing": 2,
        "transport": 4,
    }
    weights = [run.round_metrics(2)["silos"][n]["num_examples"] for n in sorted(updates)]
    per = [products(updates[n]) for n in sorted(updates)]
    for key, got in products(stored).items():
        target = sum(w / sum(weights) * p[key] for w, p in zip(weights, per, strict=True))
        assert float((got - target).abs().max()) < 1e-6
    # the exported PEFT adapter carries the stacked rank and loads
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    model = PeftModel.from_pretrained(base, str(run.final_adapter_dir))
    assert model.peft_config["default"].r == 6
