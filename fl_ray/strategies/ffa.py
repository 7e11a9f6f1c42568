"""FFA-LoRA (Sun et al., 2024, "Improving LoRA in Privacy-Preserving Federated Learning", ICLR):
every silo keeps A frozen at the shared global value and trains and sends only B.

Because A is common, the merge is exact under averaging: Σ wₖ·Bₖ·A = (Σ wₖBₖ)·A, so the merged
B is the weighted mean of the silos' B matrices and A is copied from the global adapter. Traffic
up is halved (only B travels; see ``shared_keys``).
"""

from __future__ import annotations

from collections.abc import Sequence

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import MergeResult, weighted_mean


def ffa(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
) -> MergeResult:
    """B = Σ wₖBₖ (weights normalised); A and any other untrained tensor from the global."""
    for i, update in enumerate(updates):
        sent_a = sorted(k for k in update if "lora_A" in k)
        if sent_a:
            raise ValueError(f"strategy ffa: update {i} carries A matrices ({sent_a[0]}, ...)")
    merged = dict(global_state)
    merged.update(weighted_mean(updates, weights))
    return MergeResult(merged, server_state, {})


__all__ = ["ffa"]
