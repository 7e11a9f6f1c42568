"""Adaptive server optimisers: FedAdagrad, FedYogi, FedAdam (Reddi et al., 2021, "Adaptive
Federated Optimization", ICLR, Algorithm 2).

Each round, with x the global adapter, xₖ silo k's returned adapter and wₖ its normalised weight:

    Δ  = Σₖ wₖ·xₖ − x                          (pseudo-gradient: weighted mean of silo deltas)
    m  = β₁·m + (1 − β₁)·Δ
    v  = v + Δ²                                 (FedAdagrad)
    v  = v − (1 − β₂)·Δ²·sign(v − Δ²)           (FedYogi)
    v  = β₂·v + (1 − β₂)·Δ²                     (FedAdam)
    x  ← x + η·m / (√v + τ)

All operations are element-wise per tensor. As in the paper there is no bias correction, m starts
at 0 and v at τ² (the paper's "v₋₁ ≥ τ²"). Parameters: ``server_lr`` (η), ``beta1`` (β₁),
``beta2`` (β₂, unused by FedAdagrad), ``tau`` (τ, the adaptivity / numerical floor).

The moments live in the server state under ``m/<key>`` and ``v/<key>`` (float32) with the step
count in the 0-dim tensor ``fedopt_step``; they are passed in and returned, never kept on an
object, so a resumed run continues from exactly the saved moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import MergeResult, weighted_mean

Variant = Literal["adagrad", "yogi", "adam"]
STEP_KEY = "fedopt_step"


def _second_moment(variant: Variant, v: torch.Tensor, sq: torch.Tensor, beta2: float):
    if variant == "adagrad":
        return v + sq
    if variant == "yogi":
        return v - (1.0 - beta2) * sq * torch.sign(v - sq)
    return beta2 * v + (1.0 - beta2) * sq


def server_opt_step(
    variant: Variant,
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> MergeResult:
    """One adaptive server step (the equations in the module docstring), in float64."""
    if not (server_lr > 0 and tau > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(
            f"fed{variant} needs server_lr > 0, tau > 0 and 0 <= beta1, beta2 < 1; got "
            f"server_lr={server_lr}, tau={tau}, beta1={beta1}, beta2={beta2}"
        )
    mean = weighted_mean(updates, weights)
    new_global: AdapterState = {}
    new_server: AdapterState = {}
    for key in sorted(mean):
        x = global_state[key].double()
        delta = mean[key].double() - x
        m = server_state.get(f"m/{key}", torch.zeros_like(x)).double()
        v = server_state.get(f"v/{key}", torch.full_like(x, tau * tau)).double()
        m = beta1 * m + (1.0 - beta1) * delta
        v = _second_moment(variant, v, delta * delta, beta2)
        new_global[key] = (x + server_lr * m / (v.sqrt() + tau)).to(global_state[key].dtype)
        new_server[f"m/{key}"] = m.float()
        new_server[f"v/{key}"] = v.float()
    step = int(server_state.get(STEP_KEY, torch.tensor(0))) + 1
    new_server[STEP_KEY] = torch.tensor(step, dtype=torch.int64)
    return MergeResult(new_global, new_server, {"server_step": step})


def fedadam(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    server_lr: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> MergeResult:
    """FedAdam: v = β₂·v + (1 − β₂)·Δ² (Reddi et al., 2021)."""
    return server_opt_step(
        "adam", global_state, updates, weights, server_state,
        server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau,
    )  # fmt: skip


def fedyogi(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    server_lr: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> MergeResult:
    """FedYogi: v = v − (1 − β₂)·Δ²·sign(v − Δ²) (Reddi et al., 2021)."""
    return server_opt_step(
        "yogi", global_state, updates, weights, server_state,
        server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau,
    )  # fmt: skip


def fedadagrad(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    server_lr: float = 1e-2,
    beta1: float = 0.0,
    beta2: float = 0.0,
    tau: float = 1e-3,
) -> MergeResult:
    """FedAdagrad: v = v + Δ² (Reddi et al., 2021). β₁ defaults to 0 (plain Adagrad, as Flower
    does); Algorithm 2 allows momentum, so set ``beta1`` for it. β₂ is accepted but unused."""
    return server_opt_step(
        "adagrad", global_state, updates, weights, server_state,
        server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau,
    )  # fmt: skip


__all__ = ["fedadagrad", "fedadam", "fedyogi", "server_opt_step"]
