"""Aggregation strategies: pure functions over adapter states.

Every strategy is a function

    merge(global_state, updates, weights, server_state, *, seed, **params) -> MergeResult

``updates`` and ``weights`` are in silo-name order; ``seed`` is derived per round by the
coordinator (strategies that draw noise must use only it, so a resumed run is bitwise identical).
Server state (e.g. FedAdam moments) is passed in and returned -- never hidden on an object -- so
the coordinator can save it with each round and resume exactly. ``MergeResult.info`` holds what
the round record should show (e.g. silos Krum rejected, ε spent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import MergeResult, fedavg, weighted_mean

MergeFn = Callable[..., MergeResult]

# Strategies whose math is defined for silos with different LoRA ranks; all others refuse them.
MIXED_RANK_STRATEGIES: set[str] = set()

STRATEGIES: dict[str, MergeFn] = {"fedavg": fedavg}


def shared_keys(name: str, global_state: AdapterState) -> list[str]:
    """The tensor names a silo sends back under this strategy (FFA-LoRA: only the B matrices)."""
    if name == "ffa":
        return sorted(k for k in global_state if "lora_A" not in k)
    return sorted(global_state)


def silo_options(name: str, params: dict) -> dict:
    """What a strategy asks of local training: FedProx's μ, FFA-LoRA's frozen A."""
    return {
        "prox_mu": float(params.get("mu", 0.0)) if name == "fedprox" else 0.0,
        "train_a": name != "ffa",
    }


def get_strategy(name: str) -> MergeFn:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


def aggregate(
    name: str,
    params: dict,
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    seed: int = 0,
) -> MergeResult:
    """Merge silo updates with the named strategy and its recipe parameters."""
    return get_strategy(name)(global_state, updates, weights, server_state, seed=seed, **params)


__all__ = [
    "MIXED_RANK_STRATEGIES",
    "STRATEGIES",
    "MergeResult",
    "aggregate",
    "fedavg",
    "get_strategy",
    "shared_keys",
    "silo_options",
    "weighted_mean",
]
