"""Packed placement: virtual silos on two Ray workers train exactly like in-process silos."""

from __future__ import annotations

import pytest
import torch

from fl_ray.config import parse_recipe
from fl_ray.coordinator import Coordinator, state_nbytes
from fl_ray.local_pool import LocalSiloPool
from fl_ray.rundir import RunDir
from tests.conftest import SILOS, recipe_tree


def _run(recipe, pool, out):
    recipe = recipe.model_copy(update={"output_dir": str(out)})
    run = RunDir.create(recipe, {"run_name": recipe.run_name})
    coordinator = Coordinator(recipe, run, pool)
    try:
        coordinator.start()
        metrics = [coordinator.run_round(r) for r in range(1, recipe.rounds + 1)]
    finally:
        pool.close()
    return run, metrics


def test_pack_pool_equals_in_process_silos_bitwise(tiny_base, demo_data, tmp_path, local_ray):
    from fl_ray.on_ray.pack_pool import PackedRaySiloPool

    tree = recipe_tree(tiny_base, demo_data, tmp_path, silos=SILOS, rounds=2)
    tree["placement"] = {"mode": "pack", "pack_workers": 2}
    recipe = parse_recipe(tree)

    pool = PackedRaySiloPool(recipe)
    assert pool.members == [["transport", "revenue"], ["housing", "health"]]
    packed_run, packed = _run(recipe, pool, tmp_path / "packed")
    local_run, local = _run(recipe, LocalSiloPool(recipe), tmp_path / "local")

    for r in (1, 2):
        ours, theirs = packed_run.load_global(r), local_run.load_global(r)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        ours, theirs = packed_run.load_updates(r), local_run.load_updates(r)
        assert sorted(ours) == sorted(SILOS)
        for silo in SILOS:
            assert all(torch.equal(ours[silo][k], theirs[silo][k]) for k in theirs[silo])
    assert [m["eval_loss"] for m in packed] == [m["eval_loss"] for m in local]
    assert packed[-1]["contributed"] == sorted(SILOS)

    # Traffic: only LoRA tensors move; one object-store put per adapter (round 0 + 2 rounds).
    size = state_nbytes(packed_run.load_global(0))
    for m in packed:
        assert m["bytes_down"] == m["bytes_up"] == size * len(SILOS)
    assert pool.last_traffic.adapter_bytes == size
    assert pool.last_traffic.bytes_returned == size * len(SILOS)
    assert pool.last_traffic.bytes_to_workers == size * 2  # once per worker, not per silo
    assert pool.puts == 3


def test_pack_refuses_silos_pinned_to_nodes(tiny_base, demo_data, tmp_path):
    from fl_ray.on_ray.pack_pool import PackedRaySiloPool

    tree = recipe_tree(tiny_base, demo_data, tmp_path)
    tree["placement"] = {"mode": "pack"}
    tree["silos"][1]["node_label"] = "housing"
    with pytest.raises(ValueError, match="silo housing is pinned"):
        PackedRaySiloPool(parse_recipe(tree))


def test_pack_layout_defaults_to_one_worker_per_core(tiny_base, demo_data, tmp_path):
    from fl_ray.on_ray.pack_pool import pack_layout

    tree = recipe_tree(tiny_base, demo_data, tmp_path, silos=SILOS)
    workers, threads, members = pack_layout(parse_recipe(tree), cpus=3)
    assert (workers, threads) == (3, 1)
    assert [[i for i, _ in group] for group in members] == [[0, 3], [1], [2]]
    tree["train"]["threads_per_silo"] = 2
    workers, threads, _ = pack_layout(parse_recipe(tree), cpus=4)
    assert (workers, threads) == (2, 2)
    workers, _, _ = pack_layout(parse_recipe(tree), cpus=64)
    assert workers == len(SILOS)  # never an idle worker
