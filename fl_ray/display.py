"""Terminal output of a run: a live progress bar, one line per round, and the result tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _change(before: float | None, after: float | None) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before and after is not None else "-"


class RunDisplay:
    """Live per-round progress with per-silo losses (rich; plain text when not a terminal)."""

    def __init__(self, total_rounds: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]round"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("", total=total_rounds)

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def round_done(self, metrics: dict[str, Any]) -> None:
        silos = metrics.get("silos", {})
        parts = []
        for name, m in silos.items():
            if "dropped" in m:
                parts.append(f"{name} [red]dropped[/red]")
            else:
                parts.append(f"{name} {_fmt(m.get('train_loss'))}/{_fmt(m.get('eval_loss'))}")
        status = metrics.get("status", "")
        tag = "" if status in ("ok", "initial") else f" [red]{status}[/red]"
        self.console.print(
            f"round {metrics['round']:>3}{tag}  eval {_fmt(metrics.get('eval_loss'))}  "
            f"(train/eval) " + "  ".join(parts)
        )
        if metrics["round"] > 0:
            self.progress.update(
                self.task, advance=1, description=f"eval {_fmt(metrics.get('eval_loss'))}"
            )


def result_table(first: dict[str, Any], last: dict[str, Any]) -> Table:
    """Held-out loss per silo at round 0 and at the last round."""
    table = Table(title="held-out loss per silo")
    table.add_column("silo")
    table.add_column("round 0", justify="right")
    table.add_column(f"round {last['round']}", justify="right")
    table.add_column("change", justify="right")
    for name in sorted(first.get("silos", {})):
        a = first["silos"][name].get("eval_loss")
        b = last.get("silos", {}).get(name, {}).get("eval_loss")
        table.add_row(name, _fmt(a), _fmt(b), _change(a, b))
    a, b = first.get("eval_loss"), last.get("eval_loss")
    table.add_row("[bold]mean[/bold]", _fmt(a), _fmt(b), _change(a, b))
    return table


def baseline_table(baseline: dict[str, Any]) -> Table:
    """Federated global model vs each department training alone, on all held-out data."""
    table = Table(title=f"mean held-out loss over all silos after {baseline['steps']} steps")
    table.add_column("model")
    table.add_column("mean held-out loss", justify="right")
    table.add_row("[bold]federated[/bold]", _fmt(baseline["federated_mean_eval_loss"]))
    for owner, row in sorted(baseline["local_only"].items()):
        table.add_row(f"{owner} alone", _fmt(row["mean_eval_loss"]))
    return table
