"""Metric sinks: the scalars logged per round, the one-line notice when a package is missing,
and (where the package is installed) the values read back from TensorBoard / MLflow."""

from __future__ import annotations

import sys

import pytest

from fl_ray.config import Recipe
from fl_ray.metric_sinks import open_sinks, round_scalars

ROUND_1 = {
    "round": 1,
    "status": "ok",
    "eval_loss": 2.5,
    "train_loss": 2.75,
    "bytes_down": 4096,
    "bytes_up": 2048,
    "seconds": 0.5,
    "contributed": ["housing", "transport"],
    "dropped": {"revenue": "no reply"},
    "merge_info": {"epsilon": 1.25},
    "sampled": ["housing", "revenue", "transport"],
    "silos": {
        "housing": {"train_loss": 3.0, "eval_loss": 2.0, "contribution_cosine": 0.5},
        "revenue": {"dropped": "no reply", "eval_loss": 3.0},
        "transport": {"train_loss": 2.5, "eval_loss": 2.5, "node_id": "abc"},
    },
}
EXPECTED_1 = {
    "eval_loss": 2.5,
    "train_loss": 2.75,
    "bytes_down": 4096.0,
    "bytes_up": 2048.0,
    "seconds": 0.5,
    "contributed": 2.0,
    "dropped": 1.0,
    "epsilon": 1.25,
    "silo/housing/contribution_cosine": 0.5,
    "silo/housing/eval_loss": 2.0,
    "silo/housing/train_loss": 3.0,
    "silo/revenue/eval_loss": 3.0,
    "silo/transport/eval_loss": 2.5,
    "silo/transport/train_loss": 2.5,
}


def _recipe(tmp_path, **logging):
    # the schema alone: no model or data is needed to open a sink
    return Recipe.model_validate(
        {
            "run_name": "sinks",
            "output_dir": str(tmp_path),
            "base_model": {"path": str(tmp_path)},
            "silos": [{"name": "housing", "data_dir": str(tmp_path)}],
            "logging": logging,
        }
    )


def test_round_scalars_are_the_numeric_metrics():
    assert round_scalars(ROUND_1) == EXPECTED_1
    initial = {"round": 0, "status": "initial", "eval_loss": 4.0, "silos": {"a": {"eval_loss": 4}}}
    assert round_scalars(initial) == {"eval_loss": 4.0, "silo/a/eval_loss": 4.0}


def test_nothing_asked_nothing_opened(tmp_path):
    notices = []
    assert open_sinks(_recipe(tmp_path), tmp_path, notices.append) == []
    assert notices == []


def test_missing_packages_give_one_line_notices(tmp_path, monkeypatch):
    # None in sys.modules makes the import fail exactly as if the package were not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    notices = []
    recipe = _recipe(tmp_path, tensorboard=True, mlflow=True)
    assert open_sinks(recipe, tmp_path, notices.append) == []
    assert notices == [
        "logging.tensorboard: round metrics not logged (torch.utils.tensorboard is not installed)",
        "logging.mlflow: round metrics not logged (mlflow.tracking is not installed)",
    ]
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (sink,) = open_sinks(_recipe(tmp_path, tensorboard=True), tmp_path)
    sink.log_round({"round": 0, "status": "initial", "eval_loss": 4.0, "silos": {}})
    sink.log_round(ROUND_1)
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(EXPECTED_1)
    assert [(e.step, e.value) for e in events.Scalars("eval_loss")] == [(0, 4.0), (1, 2.5)]
    for key, value in EXPECTED_1.items():
        (event,) = [e for e in events.Scalars(key) if e.step == 1]
        assert event.value == pytest.approx(value, rel=1e-6), key  # stored as float32


def test_mlflow_metrics_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # the SQLite tracking store (full mlflow ships it)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (sink,) = open_sinks(_recipe(tmp_path, mlflow=True), tmp_path)
    sink.log_round(ROUND_1)
    sink.close()
    run = sink.client.get_run(sink.run_id)
    assert run.info.run_name == "sinks" and run.info.status == "FINISHED"
    assert run.data.metrics == EXPECTED_1
    assert (tmp_path / "mlflow.db").is_file()  # nothing left the run directory
