"""The run's plots as matplotlib figures, drawn headless (Agg; pyplot is never imported).

Each ``plot_*`` function takes a :class:`RunSeries` and returns a :class:`Figure` (or ``None`` when
the run has nothing to show, e.g. no privacy accounting). Lines carry the silo name (or
``"global"``) as their label and bars their series name, so tests read the plotted numbers back
from the figure objects and compare them with the run's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

from fl_ray.report.series import RunSeries, Series

FIGSIZE = (7.5, 4.2)
DPI = 110
GLOBAL_COLOR = "#111111"
# A fixed colour per silo, the same in every plot, so a department is recognisable at a glance.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
PARTICIPATION_COLORS = {"contributed": "#2ca02c", "dropped": "#d62728", "aborted": "#9e9e9e"}


def silo_color(series: RunSeries, silo: str) -> str:
    return PALETTE[series.silos.index(silo) % len(PALETTE)]


def _new_axes(title: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas attached explicitly: rendering never needs a display
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)  # grid behind bars
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _points(rounds: tuple[int, ...], values: Series) -> tuple[list[int], list[float]]:
    """x/y for a line; a missing value is NaN, which matplotlib draws as a gap, never a zero
    and never a straight segment across a round the silo sat out."""
    return list(rounds), [math.nan if v is None else v for v in values]


def _silo_lines(ax: Axes, series: RunSeries, per_silo: dict[str, Series], **style) -> int:
    """One line per silo that has data; a silo with none (never merged) gets no empty legend
    entry -- the roster table and the participation plot say why. Returns lines drawn."""
    drawn = 0
    for silo in series.silos:
        x, y = _points(series.rounds, per_silo[silo])
        if not all(math.isnan(v) for v in y):
            ax.plot(x, y, color=silo_color(series, silo), label=silo, **style)
            drawn += 1
    return drawn


def _legend(ax: Axes, count: int) -> None:
    if count > 6:  # many departments: keep the lines visible, put the key beside them
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(fontsize=8, frameon=False)


def plot_eval_loss(series: RunSeries) -> Figure | None:
    """Global (mean over silos) and per-silo held-out loss, round 0 = the initial adapter."""
    if all(v is None for v in series.eval_loss):
        return None
    fig, ax = _new_axes("Held-out loss by round", "held-out loss")
    n = _silo_lines(ax, series, series.silo_eval_loss, marker="o", ms=3, lw=1.2, alpha=0.8)
    x, y = _points(series.rounds, series.eval_loss)
    ax.plot(x, y, marker="o", ms=4, lw=2.6, color=GLOBAL_COLOR, label="global")
    _legend(ax, n + 1)
    return fig


def plot_train_loss(series: RunSeries) -> Figure | None:
    """Each silo's local training loss in the rounds it contributed to."""
    if not any(v is not None for s in series.silo_train_loss.values() for v in s):
        return None
    fig, ax = _new_axes("Local training loss by round", "training loss")
    _legend(ax, _silo_lines(ax, series, series.silo_train_loss, marker="o", ms=3, lw=1.4))
    return fig


def _training_rounds(series: RunSeries) -> list[int]:
    return [i for i, status in enumerate(series.status) if status != "initial"]


def plot_participation(series: RunSeries) -> Figure | None:
    """Silos per round, stacked: merged, dropped (no/invalid reply), replied to an aborted round."""
    idx = _training_rounds(series)
    if not idx:
        return None
    fig, ax = _new_axes("Participation per round", "silos")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    x = [series.rounds[i] for i in idx]
    bottom = [0] * len(idx)
    for name in ("contributed", "dropped", "aborted"):
        counts = [getattr(series, name)[i] for i in idx]
        ax.bar(x, counts, bottom=bottom, color=PARTICIPATION_COLORS[name], label=name, width=0.7)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_ylim(0, max(bottom) + 1)  # headroom so no bar hides under the legend
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=3)
    return fig


def human_bytes(value: float, _pos: object = None) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plot_bytes(series: RunSeries) -> Figure | None:
    """Adapter bytes sent to silos (down) and returned by them (up), per round."""
    idx = _training_rounds(series)
    if not idx:
        return None
    fig, ax = _new_axes("Bytes moved per round", "bytes")
    top = max(max(series.bytes_down), max(series.bytes_up), 1)
    # bars hold raw bytes; ticks fall on round numbers of the unit the axis is labelled in
    unit = 1024 ** min(3, int(math.log(top, 1024)))
    step = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(0, top / unit)
    ax.yaxis.set_major_locator(MultipleLocator((step[1] - step[0]) * unit))
    ax.yaxis.set_major_formatter(FuncFormatter(human_bytes))
    x = [series.rounds[i] for i in idx]
    ax.bar(
        [r - 0.2 for r in x],
        [series.bytes_down[i] for i in idx],
        0.4,
        label="down",
        color="#4c72b0",
    )
    ax.bar(
        [r + 0.2 for r in x], [series.bytes_up[i] for i in idx], 0.4, label="up", color="#dd8452"
    )
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=2)
    ax.set_ylim(0, top * 1.2)
    return fig


def plot_epsilon(series: RunSeries) -> Figure | None:
    """Privacy budget spent (ε) by round, when the strategy accounts for one."""
    if not series.has_epsilon:
        return None
    fig, ax = _new_axes("Privacy budget ε by round", "ε (cumulative)")
    x, y = _points(series.rounds, series.epsilon)
    ax.plot(x, y, marker="o", ms=4, lw=2, color="#8172b3", label="epsilon")
    return fig


def plot_contribution(series: RunSeries) -> Figure | None:
    """Each silo's contribution score: cosine of its update with the merged step (1 = aligned)."""
    if not series.has_contribution:
        return None
    fig, ax = _new_axes("Contribution score by round", "cosine(update, merged step)")
    ax.axhline(0.0, color="#999999", lw=0.8)
    lowest = min(v for s in series.silo_contribution.values() for v in s if v is not None)
    # 0 always in view: a silo pulling against the merge (negative) must stand out
    ax.set_ylim(min(-0.05, lowest - 0.1), 1.05)
    _legend(ax, _silo_lines(ax, series, series.silo_contribution, marker="o", ms=4, lw=1.4))
    return fig


# file stem -> (caption, plot function); the report shows them in this order
PLOTS: dict[str, tuple[str, Callable[[RunSeries], Figure | None]]] = {
    "eval_loss": ("Held-out loss, global and per silo", plot_eval_loss),
    "train_loss": ("Local training loss per silo", plot_train_loss),
    "participation": ("Silos contributed / dropped / in aborted rounds", plot_participation),
    "bytes": ("Adapter bytes moved", plot_bytes),
    "epsilon": ("Privacy budget ε", plot_epsilon),
    "contribution": ("Contribution score per silo", plot_contribution),
}


def build_figures(series: RunSeries) -> dict[str, Figure]:
    """Every plot that has something to show, keyed by file stem."""
    figures = {}
    for stem, (_caption, plot) in PLOTS.items():
        fig = plot(series)
        if fig is not None:
            figures[stem] = fig
    return figures


def save_png(fig: Figure, path: Path) -> Path:
    # no timestamp or version metadata: the same run renders the same bytes
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path
