"""Optional live logging of round metrics to TensorBoard and/or MLflow (recipe ``logging.*``).

Neither package is a dependency of fl_ray: a sink the recipe asks for whose package is not
installed is skipped with a one-line notice, and the run goes on (the run directory's
metrics.jsonl is the record; these are views of it).

Scalars per round (step = round number): ``eval_loss``, ``train_loss``, ``bytes_down``,
``bytes_up``, ``seconds``, ``contributed`` and ``dropped`` (counts), ``epsilon`` when the strategy
reports one, and ``silo/<name>/<field>`` for each silo's numeric fields (train/eval loss,
contribution_cosine, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fl_ray.config import Recipe

TOP_LEVEL_SCALARS = ("eval_loss", "train_loss", "bytes_down", "bytes_up", "seconds")


class MetricSink(Protocol):
    def log_round(self, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def round_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric view of one round's metrics dict (format: :mod:`fl_ray.coordinator`)."""
    out = {k: float(metrics[k]) for k in TOP_LEVEL_SCALARS if _is_number(metrics.get(k))}
    if metrics.get("status") != "initial":
        out["contributed"] = float(len(metrics.get("contributed", [])))
        out["dropped"] = float(len(metrics.get("dropped", {})))
    epsilon = (metrics.get("merge_info") or {}).get("epsilon")
    if _is_number(epsilon):
        out["epsilon"] = float(epsilon)
    for silo, fields in sorted((metrics.get("silos") or {}).items()):
        for field, value in sorted(fields.items()):
            if _is_number(value):
                out[f"silo/{silo}/{field}"] = float(value)
    return out


class TensorBoardSink:
    """Scalars into ``<run_dir>/tensorboard`` (``tensorboard --logdir RUN_DIR/tensorboard``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_round(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["round"])
        for key, value in round_scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a crashed run still shows every round it finished

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    """One MLflow run per fl_ray run, through ``MlflowClient`` (no global active-run state).

    Tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else an SQLite store
    ``<run_dir>/mlflow.db`` (MLflow 3 refuses its old ``./mlruns`` file store by default), so
    nothing leaves the machine unless the operator points it somewhere.
    """

    def __init__(self, run_name: str, run_dir: Path, experiment: str = "fl_ray") -> None:
        from mlflow.tracking import MlflowClient

        uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        )
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_round(self, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(metrics["round"]), int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in round_scalars(metrics).items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _missing(err: ImportError) -> str:
    return f"{err.name} is not installed" if err.name else str(err).splitlines()[0]


def open_sinks(
    recipe: Recipe, run_dir: str | Path, notice: Callable[[str], None] = print
) -> list[MetricSink]:
    """The sinks ``recipe.logging`` asks for whose package is installed; a one-line ``notice``
    for each one that is not."""
    run_dir = Path(run_dir)
    sinks: list[MetricSink] = []
    if recipe.logging.tensorboard:
        try:
            sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        except ImportError as err:
            notice(f"logging.tensorboard: round metrics not logged ({_missing(err)})")
    if recipe.logging.mlflow:
        try:
            sinks.append(MLflowSink(recipe.run_name, run_dir))
        except ImportError as err:  # mlflow-skinny lacks sqlalchemy for the SQLite store
            notice(f"logging.mlflow: round metrics not logged ({_missing(err)})")
    return sinks
