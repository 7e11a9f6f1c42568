"""Simulated adversarial silos, for testing robust aggregation (never enabled by default).

Each attack rewrites a silo's honest update relative to the global adapter it started from:
``sign_flip`` sends global − Δ, ``scale`` sends global + k·Δ (model replacement / boosting,
Bagdasaryan et al., 2020), ``gaussian`` adds N(0, σ²) noise, ``nan`` poisons one tensor.
"""

from __future__ import annotations

import torch

from fl_ray.config import AttackSpec
from fl_ray.model import AdapterState


def apply_attack(
    attack: AttackSpec, state: AdapterState, global_state: AdapterState, seed: int
) -> AdapterState:
    gen = torch.Generator().manual_seed(seed)
    out: AdapterState = {}
    for i, key in enumerate(sorted(state)):
        honest, start = state[key], global_state[key]
        delta = honest - start
        if attack.kind == "sign_flip":
            out[key] = start - delta
        elif attack.kind == "scale":
            out[key] = start + attack.factor * delta
        elif attack.kind == "gaussian":
            noise = torch.randn(honest.shape, generator=gen, dtype=torch.float32)
            out[key] = honest + attack.sigma * noise.to(honest.dtype)
        elif attack.kind == "nan":
            out[key] = honest.clone()
            if i == 0:
                out[key].view(-1)[0] = float("nan")
        else:  # pragma: no cover - the recipe schema admits only the kinds above
            raise ValueError(f"unknown attack {attack.kind!r}")
    return out
