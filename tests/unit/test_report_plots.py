"""Plots from hand-written round metrics: exact plotted values, gaps for missing values, the
privacy plot only when ε is reported, and the roster table's inputs."""

from __future__ import annotations

import math

from fl_ray.report.page import RosterEntry, _ranges, roster_entries
from fl_ray.report.plots import build_figures, human_bytes
from fl_ray.report.series import series_from_metrics


def _round(r, status, eps=None, **silos):
    return {
        "round": r,
        "status": status,
        "eval_loss": 3.0 - r,
        "train_loss": None if status == "initial" else 2.9 - r,
        "sampled": sorted(silos),
        "contributed": sorted(n for n, m in silos.items() if "dropped" not in m)
        if status == "ok"
        else [],
        "dropped": {n: m["dropped"] for n, m in silos.items() if "dropped" in m},
        "bytes_down": 100 * r,
        "bytes_up": 10 * r,
        "merge_info": {} if eps is None else {"epsilon": eps, "order": 8},
        "silos": silos,
    }


METRICS = [
    _round(0, "initial", a={"eval_loss": 3.5}, b={"eval_loss": 2.5}),
    _round(1, "ok", 0.5, a={"train_loss": 1.0, "contribution_cosine": 0.9}, b={"dropped": "x"}),
    _round(2, "aborted", a={"train_loss": 0.5}, b={"dropped": "y"}),
    _round(3, "ok", 1.5, a={"train_loss": 0.25, "contribution_cosine": -0.2}, b={"train_loss": 2}),
]


def _xy(fig, label):
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_series_counts_and_epsilon():
    s = series_from_metrics(list(reversed(METRICS)))  # any order in, round order out
    assert s.rounds == (0, 1, 2, 3)
    assert s.contributed == (0, 1, 0, 2)
    assert s.dropped == (0, 1, 1, 0)
    assert s.aborted == (0, 0, 1, 0)  # a replied in round 2, which missed its quorum
    assert s.epsilon == (None, 0.5, None, 1.5)
    assert s.silo_contribution["a"] == (None, 0.9, None, -0.2)
    assert s.silo_contribution["b"] == (None, None, None, None)


def test_plots_show_exact_values_with_gaps():
    figs = build_figures(series_from_metrics(METRICS))
    assert set(figs) == {"eval_loss", "train_loss", "participation", "bytes", "epsilon",
                         "contribution"}  # fmt: skip
    assert _xy(figs["eval_loss"], "global") == ([0, 1, 2, 3], [3.0, 2.0, 1.0, 0.0])
    x, y = _xy(figs["eval_loss"], "a")  # a was evaluated only in round 0: the rest are gaps
    assert x == [0, 1, 2, 3] and y[0] == 3.5 and all(math.isnan(v) for v in y[1:])
    x, y = _xy(figs["train_loss"], "b")
    assert x == [0, 1, 2, 3] and math.isnan(y[1]) and math.isnan(y[2]) and y[3] == 2.0
    x, y = _xy(figs["epsilon"], "epsilon")
    assert [(r, e) for r, e in zip(x, y, strict=True) if not math.isnan(e)] == [(1, 0.5), (3, 1.5)]
    # b never contributed: no empty line for it in the contribution plot
    labels = {ln.get_label() for ln in figs["contribution"].axes[0].get_lines()}
    assert "b" not in labels and "a" in labels
    assert figs["contribution"].axes[0].get_ylim()[0] < -0.2  # the negative score is in view
    heights = [p.get_height() for p in figs["bytes"].axes[0].containers[0].patches]
    assert heights == [100, 200, 300]  # round 0 (initial) moves nothing and is not a bar


def test_no_epsilon_no_privacy_plot_and_no_eval_no_loss_plot():
    plain = [{**m, "merge_info": {}, "eval_loss": None, "silos": {}} for m in METRICS]
    figs = build_figures(series_from_metrics(plain))
    assert "epsilon" not in figs and "eval_loss" not in figs and "contribution" not in figs


def test_roster_entries_and_ranges():
    roster = {"federation": "f", "coordinator": "0xC", "silos": {"a": "0xA", "z": "0xZ"}}
    assert roster_entries(roster, ("a", "b")) == [
        RosterEntry("a", "0xA"),
        RosterEntry("b", None),  # in the metrics, not in the roster: flagged in the page
        RosterEntry("z", "0xZ"),
    ]
    assert _ranges([5, 1, 2, 3, 7, 8]) == "1–3, 5, 7–8"
    assert _ranges([]) == ""
    assert human_bytes(512) == "512 B" and human_bytes(3 * 1024**2) == "3.0 MiB"
