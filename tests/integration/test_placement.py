"""A silo pinned to a department node that is absent is never run elsewhere: the start fails,
or (on_unplaceable: drop) the silo is recorded as dropped in every round."""

from __future__ import annotations

import subprocess
import sys

from fl_ray.config import parse_recipe
from fl_ray.rundir import RunDir
from fl_ray.runner import run_federation
from tests.conftest import recipe_tree, write_recipe


def _tree(tiny_base, demo_data, tmp_path, **placement):
    tree = recipe_tree(tiny_base, demo_data, tmp_path, rounds=1, placement=placement)
    tree["silos"][1]["node_label"] = "housing-dept-node"  # no node carries this label here
    tree["output"] = {"save_merged": False}
    return tree


def test_unplaceable_silo_is_dropped_not_moved(tiny_base, demo_data, tmp_path):
    run_federation(parse_recipe(_tree(tiny_base, demo_data, tmp_path, on_unplaceable="drop")))
    m = RunDir(tmp_path / "t").round_metrics(1)
    assert m["contributed"] == ["transport"]
    assert m["dropped"] == {"housing": "unplaceable: no node labelled fl-silo=housing-dept-node"}
    assert "node_id" not in m["silos"]["housing"]


def test_unplaceable_silo_fails_the_start_by_default(tiny_base, demo_data, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", _tree(tiny_base, demo_data, tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "fl_ray.cli", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "silo housing unplaceable: no node labelled fl-silo=housing-dept-node" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "t").exists()  # a run that never started leaves nothing behind
