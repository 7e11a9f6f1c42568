"""The coordinator never merges a reply it should not: past-round, impostor, non-finite,
wrong tensors -- checked with a scripted pool and no Ray."""

from __future__ import annotations

import torch

from fl_ray.config import parse_recipe
from fl_ray.coordinator import Coordinator, SiloFailure, check_update, sample_silos
from fl_ray.rundir import RunDir
from fl_ray.silo import SiloUpdate
from tests.conftest import SILOS, recipe_tree


class ScriptedPool:
    """Returns whatever the test scripts for each round (what a misbehaving network could)."""

    def __init__(self, names, script):
        self.names, self.script = sorted(names), script

    def train(self, round_num, global_state, names, timeout_s):
        return self.script(round_num, global_state)

    def evaluate(self, state, names, timeout_s=None):
        return {n: {"eval_loss": 1.0} for n in names}

    def train_alone(self, initial_state, steps):
        return {}

    def close(self):
        pass


def _upd(silo, round_num, state, n=10):
    return SiloUpdate(silo, round_num, {k: v + 1.0 for k, v in state.items()}, n, {})


def test_bad_replies_are_dropped_and_only_good_ones_merged(tiny_base, demo_data, tmp_path):
    recipe = parse_recipe(recipe_tree(tiny_base, demo_data, tmp_path, silos=SILOS, rounds=1))

    def script(r, g):
        poisoned = _upd("revenue", r, g)
        first = sorted(poisoned.state)[0]
        poisoned.state[first][0, 0] = float("inf")
        return {
            "transport": _upd("transport", r, g),  # the only good reply
            "housing": _upd("housing", r - 1, g),  # a late reply from a past round
            "revenue": poisoned,  # non-finite
            "health": _upd("transport", r, g),  # an impostor claiming another silo's name
        }

    run = RunDir.create(recipe, {})
    coordinator = Coordinator(recipe, run, ScriptedPool(SILOS, script))
    coordinator.start()
    m = coordinator.run_round(1)
    assert m["contributed"] == ["transport"]
    assert m["dropped"]["housing"] == "reply is for round 0, not 1"
    assert m["dropped"]["revenue"].startswith("non-finite values in ")
    assert m["dropped"]["health"] == "reply claims to be from 'transport'"
    g0, g1 = run.load_global(0), run.load_global(1)
    assert all(torch.equal(g1[k], g0[k] + 1.0) for k in g0)


def test_missing_replies_and_failures_are_recorded(tiny_base, demo_data, tmp_path):
    recipe = parse_recipe(
        recipe_tree(tiny_base, demo_data, tmp_path, rounds=1, round={"min_silos": 2})
    )
    pool = ScriptedPool(SILOS[:2], lambda r, g: {"transport": SiloFailure("transport", "boom")})
    coordinator = Coordinator(recipe, RunDir.create(recipe, {}), pool)
    coordinator.start()
    m = coordinator.run_round(1)
    assert m["status"] == "aborted"
    assert m["dropped"] == {"housing": "no reply", "transport": "boom"}


def test_check_update_rejects_wrong_tensor_names_and_shapes():
    g = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.zeros(3, 2)}
    keys = sorted(g)
    ok = SiloUpdate("s", 1, dict(g), 5)
    assert check_update(ok, 1, "s", g, keys, same_shapes=True) is None
    extra = SiloUpdate("s", 1, {**g, "x": torch.zeros(1)}, 5)
    assert "tensor names" in check_update(extra, 1, "s", g, keys, same_shapes=True)
    wide = SiloUpdate("s", 1, {**g, "a.lora_A.weight": torch.zeros(4, 3)}, 5)
    assert "shape (4, 3)" in check_update(wide, 1, "s", g, keys, same_shapes=True)
    assert check_update(wide, 1, "s", g, keys, same_shapes=False) is None
    none = SiloUpdate("s", 1, dict(g), 0)
    assert "example count" in check_update(none, 1, "s", g, keys, same_shapes=True)


def test_sampler_is_seeded_per_round_and_respects_quorum():
    names = [f"s{i}" for i in range(10)]
    a = [sample_silos(names, 0.3, 2, seed=7, round_num=r) for r in range(1, 6)]
    b = [sample_silos(names, 0.3, 2, seed=7, round_num=r) for r in range(1, 6)]
    assert a == b and all(len(x) == 3 for x in a) and len({tuple(x) for x in a}) > 1
    assert len(sample_silos(names, 0.05, 4, seed=7, round_num=1)) == 4
    assert sample_silos(names, 1.0, 1, seed=7, round_num=1) == sorted(names)
