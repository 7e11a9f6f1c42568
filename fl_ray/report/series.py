"""Per-round series pulled out of a run's round metrics: the numbers every plot and table shows.

One pure function over the list of ``rounds/NNNNN/metrics.json`` dicts (the format written by
:mod:`fl_ray.coordinator`), so plots and the HTML page never re-interpret raw metrics themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Series = tuple[float | None, ...]


@dataclass(frozen=True)
class RunSeries:
    """Everything plotted, indexed like ``rounds`` (round 0, the initial adapter, included).

    Per-round values that do not exist for a round (training figures of round 0, a silo that was
    not sampled, a score of an aborted round) are ``None`` and are left out of the plots.
    """

    rounds: tuple[int, ...]
    status: tuple[str, ...]
    eval_loss: Series  # mean held-out loss over silos
    train_loss: Series  # mean local training loss over contributing silos
    silos: tuple[str, ...]
    silo_eval_loss: dict[str, Series]
    silo_train_loss: dict[str, Series]
    silo_contribution: dict[str, Series]  # cosine of the silo's update with the merged step
    contributed: tuple[int, ...]  # silos merged into the round
    dropped: tuple[int, ...]  # sampled silos whose reply was missing or rejected
    aborted: tuple[int, ...]  # silos that replied in a round that missed its quorum
    bytes_down: tuple[int, ...]
    bytes_up: tuple[int, ...]
    seconds: Series
    epsilon: Series  # cumulative privacy ε from the strategy's merge_info, when it reports one

    @property
    def has_epsilon(self) -> bool:
        return any(e is not None for e in self.epsilon)

    @property
    def has_contribution(self) -> bool:
        return any(v is not None for s in self.silo_contribution.values() for v in s)


def _number(value: Any) -> float | None:
    # bool is an int in Python; a flag is not a measurement
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def series_from_metrics(metrics: list[dict[str, Any]]) -> RunSeries:
    """Build the plotted series from round metrics in round order."""
    metrics = sorted(metrics, key=lambda m: int(m["round"]))
    silos = tuple(sorted({name for m in metrics for name in m.get("silos", {})}))

    def per_silo(field: str) -> dict[str, Series]:
        return {
            name: tuple(_number(m.get("silos", {}).get(name, {}).get(field)) for m in metrics)
            for name in silos
        }

    aborted = []
    for m in metrics:
        replied = len(m.get("sampled", [])) - len(m.get("dropped", {}))
        aborted.append(replied if m.get("status") == "aborted" else 0)
    return RunSeries(
        rounds=tuple(int(m["round"]) for m in metrics),
        status=tuple(str(m.get("status", "")) for m in metrics),
        eval_loss=tuple(_number(m.get("eval_loss")) for m in metrics),
        train_loss=tuple(_number(m.get("train_loss")) for m in metrics),
        silos=silos,
        silo_eval_loss=per_silo("eval_loss"),
        silo_train_loss=per_silo("train_loss"),
        silo_contribution=per_silo("contribution_cosine"),
        contributed=tuple(len(m.get("contributed", [])) for m in metrics),
        dropped=tuple(len(m.get("dropped", {})) for m in metrics),
        aborted=tuple(aborted),
        bytes_down=tuple(int(m.get("bytes_down", 0)) for m in metrics),
        bytes_up=tuple(int(m.get("bytes_up", 0)) for m in metrics),
        seconds=tuple(_number(m.get("seconds")) for m in metrics),
        epsilon=tuple(_number((m.get("merge_info") or {}).get("epsilon")) for m in metrics),
    )
