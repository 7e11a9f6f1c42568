"""`fl-ray report` on a real tiny run: files exist, the page is self-contained, the plotted
numbers are the run's metrics, and the receipt status comes from running the verifier."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from fl_ray.cli import main
from fl_ray.config import parse_recipe
from fl_ray.coordinator import Coordinator
from fl_ray.local_pool import LocalSiloPool
from fl_ray.report import render_report
from fl_ray.rundir import RunDir
from tests.conftest import SILOS, recipe_tree

SIGNED = Path(__file__).resolve().parents[2] / "fl_ray" / "receipts" / "verify.py"


@pytest.fixture(scope="module")
def tiny_run(tiny_base, demo_data, tmp_path_factory) -> Path:
    """3 silos × 3 rounds: revenue always sends NaNs (dropped), housing crashes in round 2, so
    round 2 misses its quorum of 2 and is aborted; rounds 1 and 3 merge transport + housing."""
    tree = recipe_tree(tiny_base, demo_data, tmp_path_factory.mktemp("runs"), silos=SILOS[:3])
    tree.update(rounds=3, round={"min_silos": 2}, output={"save_merged": False})
    tree["silos"][2]["attack"] = {"kind": "nan"}
    recipe = parse_recipe(tree)
    pool = LocalSiloPool(recipe)
    housing = pool.silos["housing"]
    honest_train = housing.train

    def crash_in_round_2(round_num, global_state):
        if round_num == 2:
            raise RuntimeError("housing node lost power")
        return honest_train(round_num, global_state)

    housing.train = crash_in_round_2
    coordinator = Coordinator(recipe, RunDir.create(recipe, {"run_name": "t"}), pool)
    coordinator.start()
    for r in range(1, recipe.rounds + 1):
        coordinator.run_round(r)
    return recipe.run_dir


def _metrics_jsonl(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _line(fig, label):
    (ax,) = fig.axes
    matches = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(matches) == 1, label
    # missing values are drawn as NaN gaps; the plotted points are the rest
    points = zip(matches[0].get_xdata(), matches[0].get_ydata(), strict=True)
    present = [(x, y) for x, y in points if not math.isnan(y)]
    return [x for x, _ in present], [y for _, y in present]


def _bars(fig, label):
    (ax,) = fig.axes
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return [p.get_x() + p.get_width() / 2 for p in container.patches], [
        p.get_height() for p in container.patches
    ]


def test_report_files_are_self_contained(tiny_run, tmp_path):
    report = render_report(tiny_run, out_dir=tmp_path / "rep")
    assert report.html_path == tmp_path / "rep" / "report.html"
    expected = {"eval_loss", "train_loss", "participation", "bytes", "contribution"}
    assert set(report.png_paths) == expected  # no epsilon: FedAvg spends no privacy budget
    for stem, path in report.png_paths.items():
        assert path == tmp_path / "rep" / f"{stem}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = report.html_path.read_text("utf-8")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert len(refs) == len(expected)  # the five plots and nothing else
    assert all(ref.startswith("data:image/png;base64,") for ref in refs)
    assert not re.search(r"https?://", html)
    assert "<link" not in html and "<script" not in html
    # every department is named, the dropped reasons are shown, round 2 is marked aborted
    for silo in SILOS[:3]:
        assert silo in html
    assert "housing node lost power" in html
    assert "non-finite values" in html
    assert ">aborted<" in html


def test_plotted_numbers_are_the_runs_metrics(tiny_run, tmp_path):
    report = render_report(tiny_run, out_dir=tmp_path / "rep")
    metrics = _metrics_jsonl(tiny_run)
    assert [m["round"] for m in metrics] == [0, 1, 2, 3]
    assert [m["status"] for m in metrics] == ["initial", "ok", "aborted", "ok"]
    figs = report.figures

    x, y = _line(figs["eval_loss"], "global")
    assert x == [0, 1, 2, 3] and y == [m["eval_loss"] for m in metrics]
    for silo in SILOS[:3]:
        x, y = _line(figs["eval_loss"], silo)
        assert y == [m["silos"][silo]["eval_loss"] for m in metrics], silo

    # training loss exists only where the silo's update was accepted (revenue never)
    x, y = _line(figs["train_loss"], "transport")
    assert x == [1, 2, 3]
    assert y == [metrics[r]["silos"]["transport"]["train_loss"] for r in (1, 2, 3)]
    x, y = _line(figs["train_loss"], "housing")
    assert x == [1, 3]
    assert y == [metrics[r]["silos"]["housing"]["train_loss"] for r in (1, 3)]
    labels = {ln.get_label() for ln in figs["train_loss"].axes[0].get_lines()}
    assert labels == {"transport", "housing"}  # revenue's NaN updates were never accepted

    # participation: contributed / dropped / replied-to-an-aborted-round, stacked per round
    assert _bars(figs["participation"], "contributed") == ([1, 2, 3], [2, 0, 2])
    assert _bars(figs["participation"], "dropped") == ([1, 2, 3], [1, 2, 1])
    assert _bars(figs["participation"], "aborted") == ([1, 2, 3], [0, 1, 0])
    for r in (1, 3):
        assert len(metrics[r]["contributed"]) == 2 and len(metrics[r]["dropped"]) == 1

    _, down = _bars(figs["bytes"], "down")
    _, up = _bars(figs["bytes"], "up")
    assert down == [m["bytes_down"] for m in metrics[1:]]
    assert up == [m["bytes_up"] for m in metrics[1:]]
    # round 2: transport's update did travel, though the aborted round merged nothing
    assert up[1] * 2 == up[0] > 0 and all(d > 0 for d in down)

    x, y = _line(figs["contribution"], "transport")
    assert x == [1, 3]
    assert y == [metrics[r]["silos"]["transport"]["contribution_cosine"] for r in (1, 3)]
    assert all(-1.0 <= v <= 1.0 and math.isfinite(v) for v in y)
    lines = figs["contribution"].axes[0].get_lines()
    labels = {ln.get_label() for ln in lines if not ln.get_label().startswith("_")}
    assert labels == {"transport", "housing"}


def test_unsigned_run_is_reported_as_unsigned(tiny_run, tmp_path):
    assert not list(tiny_run.glob("rounds/*/receipt.json"))
    report = render_report(tiny_run, out_dir=tmp_path / "rep")
    assert report.verification.state == "unsigned"
    html = report.html_path.read_text("utf-8")
    assert '<div class="banner unsigned">Receipts: unsigned run' in html
    assert html.count(">unsigned</span>") == 4  # each round's receipt cell, rounds 0-3
    assert '"ok">verified' not in html


def test_cli_report_writes_into_the_run_dir_and_prints_the_path(tiny_run, capsys, tmp_path):
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(tiny_run, copy)
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"report: {copy / 'report' / 'report.html'}" in out
    assert (copy / "report" / "report.html").is_file()
    assert (copy / "report" / "eval_loss.png").is_file()


def test_cli_report_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fl-ray report: error: run directory {missing} does not exist"]
    assert not missing.exists()

    out = tmp_path / "rep"
    assert main(["report", str(tiny_run), "--roster", str(tmp_path / "r.json"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "roster" in err[0] and "does not exist" in err[0]
    assert not out.exists()  # nothing half-written
