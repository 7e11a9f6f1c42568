"""Shared fixtures: tiny locally-built base models, demo data, recipes, and a local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SILOS = ("transport", "housing", "revenue", "health")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A deterministic tiny Llama + BPE tokenizer built offline (small enough for fast tests)."""
    from fl_ray.demo_base import build_demo_base

    out = tmp_path_factory.mktemp("base") / "llama"
    return build_demo_base(
        out, arch="llama", seed=0, hidden=64, layers=2, heads=4, intermediate=128, vocab_size=1024
    )


@pytest.fixture(scope="session")
def demo_size_base(tmp_path_factory) -> Path:
    """The demo's own base size (hidden 128, vocab 2048), for the learning check."""
    from fl_ray.demo_base import build_demo_base

    return build_demo_base(tmp_path_factory.mktemp("base") / "demo", arch="llama", seed=0)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from fl_ray.demo_data import generate_demo_data

    out = tmp_path_factory.mktemp("data")
    generate_demo_data(out, seed=0, train_per_silo=64, eval_per_silo=16)
    return out


def recipe_tree(base: Path, data: Path, out: Path, silos=SILOS[:2], **top) -> dict:
    """A small recipe dict; tests override what they need."""
    tree = {
        "run_name": "t",
        "output_dir": str(out),
        "seed": 0,
        "rounds": 2,
        "base_model": {"path": str(base)},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "silos": [{"name": s, "data_dir": str(data / s), "num_cpus": 0.5} for s in silos],
        "train": {"local_steps": 2, "batch_size": 4, "seq_len": 64, "lr": 0.003},
        "output": {"save_merged": True},
        "federation": {"id": "test-federation", "demo_keys": True},
    }
    tree.update(top)
    return tree


def write_recipe(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture
def local_ray():
    """A private local Ray for one test (never attaches to another cluster on this machine)."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
