"""L2 norm clipping of an update's change from the global adapter.

Used by the generic ``clip_norm`` option of every strategy and by DP-FedAvg. The norm is taken
over the whole update (all tensors concatenated, "flat clipping" in McMahan et al., 2018), so a
clipped silo keeps its direction and only its length shrinks.
"""

from __future__ import annotations

from fl_ray.model import AdapterState


def update_delta(update: AdapterState, global_state: AdapterState) -> AdapterState:
    """update − global per tensor, in float64 (only the tensors the update carries)."""
    delta: AdapterState = {}
    for key in sorted(update):
        start = global_state[key]
        if update[key].shape != start.shape:
            raise ValueError(
                f"norm clipping needs updates shaped like the global adapter; {key} has shape "
                f"{tuple(update[key].shape)}, global has {tuple(start.shape)}"
            )
        delta[key] = update[key].double() - start.double()
    return delta


def state_norm(state: AdapterState) -> float:
    """L2 norm of all tensors concatenated."""
    return float(sum(float((t.double() ** 2).sum()) for t in state.values())) ** 0.5


def clip_delta(delta: AdapterState, max_norm: float) -> tuple[AdapterState, float, bool]:
    """delta·min(1, C/‖delta‖); also its original norm and whether it was clipped."""
    if not max_norm > 0:
        raise ValueError(f"clip norm must be positive, got {max_norm}")
    norm = state_norm(delta)
    if norm <= max_norm:
        return delta, norm, False
    factor = max_norm / norm
    return {k: t * factor for k, t in delta.items()}, norm, True


def clip_update(
    update: AdapterState, global_state: AdapterState, max_norm: float
) -> tuple[AdapterState, bool]:
    """global + (update − global)·min(1, C/‖update − global‖); and whether it was clipped."""
    delta, _, clipped = clip_delta(update_delta(update, global_state), max_norm)
    if not clipped:
        return update, False
    return {
        k: (global_state[k].double() + delta[k]).to(update[k].dtype) for k in sorted(update)
    }, True


__all__ = ["clip_delta", "clip_update", "state_norm", "update_delta"]
