"""FedAvg: example-weighted mean of each tensor (McMahan et al., 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", Algorithm 1).

Applied to LoRA factors this averages A and B *separately*, which is what most frameworks do and
is **not** the average of the silos' weight updates B·A (see ``exact`` for that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_ray.model import AdapterState


@dataclass
class MergeResult:
    """A strategy's output: the new global adapter, its server state, and what to record."""

    state: AdapterState
    server_state: AdapterState = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def normalised_weights(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"merge weights must be non-negative with a positive sum, got {weights}")
    return [float(w) / total for w in weights]


def weighted_mean(updates: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
    """Σ wₖ·xₖ / Σ wₖ per tensor, accumulated in float64 and cast back to each tensor's dtype."""
    if not updates:
        raise ValueError("nothing to merge: no updates")
    keys = sorted(updates[0])
    for i, update in enumerate(updates[1:], start=1):
        if sorted(update) != keys:
            raise ValueError(f"update {i} has different tensor names from update 0")
        for key in keys:
            if update[key].shape != updates[0][key].shape:
                raise ValueError(
                    f"update {i} tensor {key} has shape {tuple(update[key].shape)}, "
                    f"update 0 has {tuple(updates[0][key].shape)} (mixed LoRA ranks need "
                    "strategy exact)"
                )
    norm = normalised_weights(weights)
    merged: AdapterState = {}
    for key in keys:
        acc = torch.zeros(updates[0][key].shape, dtype=torch.float64)
        for w, update in zip(norm, updates, strict=True):
            acc += w * update[key].to(torch.float64)
        merged[key] = acc.to(updates[0][key].dtype)
    return merged


def fedavg(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
) -> MergeResult:
    """Example-weighted, factor-wise average; keeps no server state."""
    return MergeResult(weighted_mean(updates, weights), server_state)


def fedprox(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    mu: float = 0.0,
) -> MergeResult:
    """FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks"): the merge
    is FedAvg's; ``mu`` acts silo-side as μ/2‖w − w_global‖² in the local loss."""
    if mu < 0:
        raise ValueError(f"strategy fedprox: mu must be >= 0, got {mu}")
    return fedavg(global_state, updates, weights, server_state, seed=seed)
