"""Aggregation strategies: pure functions over adapter states.

Every strategy is a function

    merge(global_state, updates, weights, server_state, *, seed, **params) -> MergeResult

``updates`` and ``weights`` are in silo-name order; ``seed`` is derived per round by the
coordinator (strategies that draw noise must use only it, so a resumed run is bitwise identical).
Server state (e.g. FedAdam moments) is passed in and returned -- never hidden on an object -- so
the coordinator can save it with each round and resume exactly; it holds only tensors (scalars as
0-dim tensors). ``MergeResult.info`` holds what the round record should show; lists of update
positions live under keys ending in ``_indices`` (see :func:`label_indices`).

``clip_norm`` is an option of every strategy: :func:`aggregate` clips each update's change from
the global adapter to L2 norm ≤ C before the strategy sees it. The strategy table with papers and
parameters is in docs/strategies.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from fl_ray.model import AdapterState
from fl_ray.strategies.clipping import clip_update
from fl_ray.strategies.dp import dp_fedavg
from fl_ray.strategies.exact import exact, fit_rank, lora_pairs
from fl_ray.strategies.fedavg import MergeResult, fedavg, fedprox, weighted_mean
from fl_ray.strategies.ffa import ffa
from fl_ray.strategies.robust import krum, median, multi_krum, trimmed_mean
from fl_ray.strategies.server_opt import fedadagrad, fedadam, fedyogi

MergeFn = Callable[..., MergeResult]

# Strategies whose math is defined for silos with different LoRA ranks; all others refuse them.
MIXED_RANK_STRATEGIES: set[str] = {"exact"}

STRATEGIES: dict[str, MergeFn] = {
    "fedavg": fedavg,
    "fedprox": fedprox,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "exact": exact,
    "ffa": ffa,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "dp": dp_fedavg,
}

# Options aggregate() applies itself, for any strategy.
GENERIC_PARAMS = ("clip_norm",)
# Parameters every merge function takes that never come from the recipe.
_CALL_ARGS = ("global_state", "updates", "weights", "server_state", "seed")


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


def check_params(name: str, params: dict[str, Any]) -> None:
    """Raise ValueError naming what is wrong if ``params`` don't fit strategy ``name``.

    Meant for recipe validation, so a misspelt parameter fails before round 1, not after it.
    """
    signature = inspect.signature(get_strategy(name)).parameters
    accepted = [p for p in signature if p not in _CALL_ARGS]
    unknown = sorted(set(params) - set(accepted) - set(GENERIC_PARAMS))
    if unknown:
        raise ValueError(
            f"strategy {name}: unknown parameter {unknown[0]!r}; it takes "
            f"{sorted(accepted + list(GENERIC_PARAMS))}"
        )
    missing = [
        p for p in accepted if signature[p].default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ValueError(f"strategy {name}: missing required parameter {missing[0]!r}")
    clip = params.get("clip_norm")
    if clip is not None and not (isinstance(clip, int | float) and clip > 0):
        raise ValueError(f"strategy {name}: clip_norm must be a positive number, got {clip!r}")


def aggregate(
    name: str,
    params: dict,
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    seed: int = 0,
) -> MergeResult:
    """Merge silo updates with the named strategy and its recipe parameters.

    ``clip_norm`` (any strategy): each update's change from the global adapter is scaled to L2
    norm ≤ C first; ``info["clip_norm_clipped_indices"]`` lists the updates that were scaled.
    """
    check_params(name, params)
    strategy_params = {k: v for k, v in params.items() if k not in GENERIC_PARAMS}
    clip = params.get("clip_norm")
    clipped_indices: list[int] = []
    if clip is not None:
        clipped_updates = []
        for i, update in enumerate(updates):
            update, was_clipped = clip_update(update, global_state, float(clip))
            clipped_updates.append(update)
            if was_clipped:
                clipped_indices.append(i)
        updates = clipped_updates
    result = get_strategy(name)(
        global_state, updates, weights, server_state, seed=seed, **strategy_params
    )
    if clip is not None:
        result.info = {**result.info, "clip_norm_clipped_indices": clipped_indices}
    return result


def label_indices(info: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``info`` with every ``<x>_indices`` list of update positions replaced by ``<x>`` silo
    names (the coordinator knows the names; strategies only see ordered lists)."""
    labelled: dict[str, Any] = {}
    for key, value in info.items():
        if key.endswith("_indices") and isinstance(value, list):
            labelled[key.removesuffix("_indices")] = [names[i] for i in value]
        else:
            labelled[key] = value
    return labelled


__all__ = [
    "GENERIC_PARAMS",
    "MIXED_RANK_STRATEGIES",
    "STRATEGIES",
    "MergeResult",
    "aggregate",
    "check_params",
    "exact",
    "fedavg",
    "fit_rank",
    "get_strategy",
    "label_indices",
    "lora_pairs",
    "shared_keys",
    "silo_options",
    "weighted_mean",
]
