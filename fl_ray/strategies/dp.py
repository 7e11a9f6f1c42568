"""DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models",
ICLR, Algorithm 1 with flat clipping), applied at the coordinator:

    δₖ = clip(xₖ − x, C) = (xₖ − x)·min(1, C/‖xₖ − x‖₂)     (norm over the whole update)
    x  ← x + (1/m)·Σₖ δₖ + N(0, σ²I),   σ = z·C/m

with m the number of updates merged this round. The mean is unweighted (the paper's fixed-
denominator estimator with equal weights): example counts are not clipped, so weighting by them
would let one silo's sensitivity exceed C/m. Noise comes only from a ``torch.Generator`` seeded
with the per-round ``seed``, so a resumed run draws the same noise. That seed must be secret from
whoever the guarantee protects against: anyone who can recompute it can regenerate and subtract
the noise, so the coordinator should derive it from a secret, not only from ``recipe.seed``.

The number of noisy rounds so far is kept in the server state (``dp_rounds``, a 0-dim tensor) and
the cumulative ε at ``delta`` from the RDP accountant in :mod:`fl_ray.privacy` is reported in
``info["epsilon"]`` every round. ``sample_rate`` (q) should be the fraction of silos sampled per
round (``round.fraction``); see :mod:`fl_ray.privacy` for what q < 1 assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl_ray.model import AdapterState
from fl_ray.privacy import epsilon
from fl_ray.strategies.clipping import clip_delta, state_norm, update_delta
from fl_ray.strategies.fedavg import MergeResult

ROUNDS_KEY = "dp_rounds"


def dp_fedavg(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int,
    clip: float,
    noise_multiplier: float,
    delta: float = 1e-5,
    sample_rate: float = 1.0,
) -> MergeResult:
    """Clip each silo's change to ‖·‖ ≤ ``clip``, average, add N(0, (z·C/m)²) per coordinate."""
    if not updates:
        raise ValueError("nothing to merge: no updates")
    if noise_multiplier < 0:
        raise ValueError(f"strategy dp: noise_multiplier must be >= 0, got {noise_multiplier}")
    m = len(updates)
    clipped, norms, was_clipped = [], [], []
    for i, update in enumerate(updates):
        d, norm, cut = clip_delta(update_delta(update, global_state), clip)
        clipped.append(d)
        norms.append(norm)
        if cut:
            was_clipped.append(i)
    std = noise_multiplier * clip / m
    gen = torch.Generator().manual_seed(seed)
    merged = dict(global_state)
    for key in sorted(clipped[0]):
        mean = sum(d[key] for d in clipped) / m
        noise = torch.randn(mean.shape, generator=gen, dtype=torch.float64) * std
        start = global_state[key]
        merged[key] = (start.double() + mean + noise).to(start.dtype)
    rounds = int(server_state.get(ROUNDS_KEY, torch.tensor(0))) + 1
    eps, order = epsilon(sample_rate, noise_multiplier, rounds, delta)
    new_server = {**server_state, ROUNDS_KEY: torch.tensor(rounds, dtype=torch.int64)}
    info = {
        "epsilon": eps,
        "delta": delta,
        "rdp_order": order,
        "dp_rounds": rounds,
        "noise_std": std,
        "clipped_indices": was_clipped,
        "update_norms": norms,
        "max_clipped_norm": max(state_norm(d) for d in clipped),
    }
    return MergeResult(merged, new_server, info)


__all__ = ["dp_fedavg"]
