"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean (Yin et al., 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML) and Krum /
Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS).

All four ignore the example weights, as in the papers: a weight is something a silo reports, and
a Byzantine silo could inflate it. Each needs updates of one shape (same LoRA rank). ``info``
reports which updates (indices into the silo-name-ordered list) were kept or rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import MergeResult, weighted_mean


def _check_same(updates: Sequence[AdapterState]) -> list[str]:
    # weighted_mean's checks give the clear errors (names, shapes, "mixed LoRA ranks ...")
    weighted_mean(updates, [1.0] * len(updates))
    return sorted(updates[0])


def median(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
) -> MergeResult:
    """Coordinate-wise median; with an even count, the mean of the two middle values."""
    keys = _check_same(updates)
    m = len(updates)
    merged = {}
    for key in keys:
        ordered = torch.stack([u[key].double() for u in updates]).sort(dim=0).values
        # torch.median returns the lower middle value; the statistical median averages both
        middle = ordered[m // 2] if m % 2 else (ordered[m // 2 - 1] + ordered[m // 2]) / 2
        merged[key] = middle.to(updates[0][key].dtype)
    return MergeResult(merged, server_state, {})


def trimmed_mean(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    beta: float = 0.1,
) -> MergeResult:
    """Coordinate-wise β-trimmed mean: drop the ⌊β·m⌋ largest and smallest values, average the
    rest (Yin et al., 2018, Definition 2)."""
    m = len(updates)
    if not 0 <= beta < 0.5:
        raise ValueError(f"strategy trimmed_mean: beta must be in [0, 0.5), got {beta}")
    cut = int(beta * m)
    keys = _check_same(updates)
    merged = {}
    for key in keys:
        stack = torch.stack([u[key].double() for u in updates]).sort(dim=0).values
        merged[key] = stack[cut : m - cut].mean(dim=0).to(updates[0][key].dtype)
    return MergeResult(merged, server_state, {"trimmed_each_side": cut})


def krum_scores(updates: Sequence[AdapterState], f: int) -> list[float]:
    """Krum score of each update: the sum of squared distances to its m − f − 2 nearest others."""
    m = len(updates)
    keys = _check_same(updates)
    flat = torch.stack([torch.cat([u[k].double().flatten() for k in keys]) for u in updates])
    dist = torch.cdist(flat, flat) ** 2
    neighbours = m - f - 2
    scores = []
    for i in range(m):
        others = torch.cat([dist[i, :i], dist[i, i + 1 :]]).sort().values
        scores.append(float(others[:neighbours].sum()))
    return scores


def multi_krum(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    f: int = 1,
    m: int | None = None,
) -> MergeResult:
    """Multi-Krum: the mean of the ``m`` updates with the lowest Krum scores (m = 1 is Krum).

    Needs n ≥ 2f + 3 updates (Blanchard et al.'s n > 2f + 2). Default m = n − f.
    """
    n = len(updates)
    if f < 0 or n < 2 * f + 3:
        raise ValueError(
            f"krum with f={f} Byzantine silos needs at least {2 * f + 3} updates, got {n}"
        )
    select = n - f if m is None else int(m)
    if not 1 <= select <= n:
        raise ValueError(f"multi_krum: m must be between 1 and {n}, got {m}")
    scores = krum_scores(updates, f)
    # stable tie-break by index so the choice is deterministic
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:select])
    merged = weighted_mean([updates[i] for i in chosen], [1.0] * len(chosen))
    info = {
        "krum_selected_indices": chosen,
        "krum_rejected_indices": [i for i in range(n) if i not in chosen],
        "krum_scores": scores,
    }
    return MergeResult(merged, server_state, info)


def krum(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    f: int = 1,
) -> MergeResult:
    """Krum: the single update with the lowest score (Blanchard et al., 2017)."""
    return multi_krum(global_state, updates, weights, server_state, seed=seed, f=f, m=1)


__all__ = ["krum", "krum_scores", "median", "multi_krum", "trimmed_mean"]
