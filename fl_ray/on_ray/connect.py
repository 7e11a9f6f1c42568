"""Joining or starting Ray: RAY_ADDRESS when set, else an embedded local Ray owned by this run."""

from __future__ import annotations

import logging
import math
import os

import ray

from fl_ray.config import Recipe
from fl_ray.crashpoints import CRASH_ENV

SILO_LABEL = "fl-silo"  # node label key that names the department a node belongs to
_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _worker_env() -> dict[str, str]:
    env = dict(_ENV)
    if os.environ.get(CRASH_ENV):  # fault-injection tests reach the coordinator actor this way
        env[CRASH_ENV] = os.environ[CRASH_ENV]
    return env


def connect(recipe: Recipe) -> bool:
    """Join the cluster in RAY_ADDRESS, or start an embedded local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": _worker_env()}, log_to_driver=True)
        return False
    # Logical CPUs: every silo actor holds its CPUs for life, so ask for at least their sum.
    packed = recipe.placement.mode == "pack"  # packed workers take the cores, not the silos
    wanted = 0 if packed else sum(s.num_cpus for s in recipe.silos)
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,  # the run's own output is the interface, not Ray's
        runtime_env={"env_vars": _worker_env()},
    )
    return True


def disconnect(owned: bool) -> None:
    if owned and ray.is_initialized():
        ray.shutdown()
