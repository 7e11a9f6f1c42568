"""Aggregation strategies: pure functions over adapter states.

Every strategy has the signature
``merge(global_state, updates, weights, server_state, **params) -> (new_global, server_state)``.
Server state (e.g. FedAdam moments) is passed in and returned -- never hidden on an object -- so
the coordinator can save it with each round and resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import fedavg, weighted_mean

MergeFn = Callable[..., tuple[AdapterState, dict]]

STRATEGIES: dict[str, MergeFn] = {"fedavg": fedavg}


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
    server_state: dict,
) -> tuple[AdapterState, dict]:
    """Merge silo updates with the named strategy and its recipe parameters."""
    return get_strategy(name)(global_state, updates, weights, server_state, **params)


__all__ = ["STRATEGIES", "aggregate", "fedavg", "get_strategy", "weighted_mean"]
