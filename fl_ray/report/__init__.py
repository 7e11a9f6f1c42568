"""Run report: PNG plots and one self-contained HTML page for an engineer and an auditor (issue 9).

``write_report(run_dir)`` reads only the run directory (format: :mod:`fl_ray.rundir`), runs the
receipt verifier, and writes ``<run_dir>/report/report.html`` plus one PNG per plot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fl_ray.report.page import PageInputs, render_page
from fl_ray.report.plots import build_figures, save_png
from fl_ray.report.series import RunSeries, series_from_metrics
from fl_ray.report.verification import Verification, verify_for_report
from fl_ray.rundir import RunDir

__all__ = ["Report", "render_report", "write_report"]

REPORT_DIR = "report"
REPORT_HTML = "report.html"
ROSTER_FILE = "roster.json"


@dataclass(frozen=True)
class Report:
    """A rendered report: where it is, and the objects it was drawn from (for checks)."""

    html_path: Path
    png_paths: dict[str, Path]
    figures: dict[str, Figure]
    series: RunSeries
    verification: Verification


def _find_roster(run: RunDir, roster_path: str | Path | None) -> Path | None:
    if roster_path is not None:
        path = Path(roster_path)
        if not path.is_file():
            raise FileNotFoundError(f"roster {path} does not exist")
        return path
    in_run = run.root / ROSTER_FILE
    return in_run if in_run.is_file() else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err.msg} (line {err.lineno})") from err


def render_report(
    run_dir: str | Path, roster_path: str | Path | None = None, out_dir: str | Path | None = None
) -> Report:
    """Verify the run's receipts, draw the plots and write the page; nothing is written when the
    inputs are bad (missing run directory or roster: FileNotFoundError; bad JSON: ValueError)."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory {run.root} does not exist")
    if not (run.root / "recipe.yaml").is_file() or not run.complete_rounds():
        raise FileNotFoundError(f"{run.root} is not a run directory (no recipe.yaml or no rounds)")
    roster_file = _find_roster(run, roster_path)
    roster = _read_json(roster_file, "roster") if roster_file else None
    if roster is not None and not isinstance(roster, dict):
        raise ValueError(f"roster {roster_file} is not a JSON object")
    metrics = run.all_metrics()
    run_info_path = run.root / "run.json"
    run_info = _read_json(run_info_path, "run info") if run_info_path.is_file() else {}
    baseline_path = run.root / "baseline.json"
    baseline = _read_json(baseline_path, "baseline") if baseline_path.is_file() else None
    recipe_yaml = (run.root / "recipe.yaml").read_text("utf-8")

    verification = verify_for_report(run.root, roster_file)
    series = series_from_metrics(metrics)
    figures = build_figures(series)

    out = Path(out_dir) if out_dir is not None else run.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    pngs = {stem: save_png(fig, out / f"{stem}.png") for stem, fig in figures.items()}
    html = render_page(
        PageInputs(
            run_name=str(run_info.get("run_name") or run.root.name),
            run_info=run_info,
            recipe=run.recipe_dict(),
            recipe_yaml=recipe_yaml,
            metrics=metrics,
            series=series,
            verification=verification,
            pngs={stem: path.read_bytes() for stem, path in pngs.items()},
            roster=roster,
            roster_source=str(roster_file) if roster_file else None,
            baseline=baseline,
        )
    )
    html_path = out / REPORT_HTML
    tmp = html_path.with_name(REPORT_HTML + ".tmp")
    tmp.write_text(html, "utf-8")
    os.replace(tmp, html_path)  # a reader never sees half a page
    return Report(html_path, pngs, figures, series, verification)


def write_report(
    run_dir: str | Path, roster_path: str | Path | None = None, out_dir: str | Path | None = None
) -> Path:
    """Write ``report.html`` and the PNG plots (default ``<run_dir>/report/``); returns the page."""
    return render_report(run_dir, roster_path, out_dir).html_path
