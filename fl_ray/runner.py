"""``fl-ray run``: validate, create the run directory, start Ray and the coordinator, loop rounds.

The driver only orchestrates: the coordinator actor does the work and writes the run directory,
so ``ray job submit -- fl-ray run ...`` behaves exactly like a local run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from fl_ray import __version__
from fl_ray.config import Recipe, load_recipe
from fl_ray.display import RunDisplay, baseline_table, result_table
from fl_ray.metric_sinks import open_sinks
from fl_ray.receipts.keys import prepare_run_keys
from fl_ray.receipts.session import RunIdentity
from fl_ray.report import render_report
from fl_ray.rundir import RunDir


def absolutize(recipe: Recipe) -> Recipe:
    """Resolve relative paths against the driver's working directory before they travel:
    actors may start in another directory."""
    silos = tuple(
        s.model_copy(update={"data_dir": str(Path(s.data_dir).resolve())}) for s in recipe.silos
    )
    base = recipe.base_model.model_copy(
        update={"path": str(Path(recipe.base_model.path).resolve())}
    )
    return recipe.model_copy(update={"silos": silos, "base_model": base})


def signing_identity(recipe: Recipe, run: RunDir) -> RunIdentity | None:
    """Resolve (or create, for demo keys) the run's keys; checks the coordinator key opens."""
    if not recipe.federation.sign:
        return None
    fed = recipe.federation
    keys = prepare_run_keys(
        fed.id,
        {s.name: s.keystore for s in recipe.silos},
        run.root,
        demo_keys=fed.demo_keys,
        keys_dir=fed.keys_dir,
        roster=fed.roster,
        password_env=fed.password_env,
        password_file=fed.password_file,
    )
    info = run.run_info()
    return RunIdentity(keys, info["run_name"], info["recipe_sha256"])


def run_federation(
    recipe: Recipe, resume: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Run (or resume) a recipe to its last round; returns a summary with the run directory."""
    from fl_ray import on_ray  # Ray is imported only when a run really starts

    console = console or Console()
    started = time.perf_counter()
    if resume:
        run = RunDir(recipe.run_dir)
    else:
        run = RunDir.create(
            recipe,
            {
                "run_name": recipe.run_name,
                "recipe_sha256": recipe.fingerprint(),
                "fl_ray_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    console.print(f"run directory: [bold]{run.root}[/bold]")
    try:
        identity = signing_identity(recipe, run)
    except ValueError:
        if not resume:  # a bad key or roster: nothing started, nothing left behind
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    try:
        owned = on_ray.connect(recipe)
    except BaseException:
        if not resume:  # nothing ran: leave no empty run directory behind
            shutil.rmtree(run.root, ignore_errors=True)
        raise
    client = None
    sinks = open_sinks(recipe, run.root, notice=console.print)
    try:
        client = on_ray.CoordinatorClient(absolutize(recipe), str(run.root.resolve()), identity)
        try:
            first = client.call("start")
        except BaseException:
            if not resume and run.last_complete_round() is None:
                shutil.rmtree(run.root, ignore_errors=True)  # nothing ran: nothing to keep
            raise
        done = int(first["round"])
        with RunDisplay(recipe.rounds) as display:
            display.progress.update(display.task, completed=done)
            display.round_done(first)
            for round_num in range(done + 1, recipe.rounds + 1):
                metrics = client.call("run_round", round_num)
                display.round_done(metrics)
                for sink in sinks:
                    sink.log_round(metrics)
        summary = client.call("finish")
    except on_ray.CoordinatorDied as err:
        last = run.last_complete_round()
        raise RunInterrupted(
            f"{err}; the run directory holds {last if last is not None else 'no'} complete "
            f"round(s) -- continue with: fl-ray resume {run.root}"
        ) from None
    finally:
        for sink in sinks:
            sink.close()
        if client is not None:
            client.close()
        on_ray.disconnect(owned)
    metrics = run.all_metrics()
    console.print(result_table(metrics[0], metrics[-1]))
    if "baseline" in summary:
        console.print(baseline_table(summary["baseline"]))
    summary.update(run_dir=str(run.root), wall_s=time.perf_counter() - started)
    console.print(f"final adapter: {summary['adapter_dir']}")
    if "merged_dir" in summary:
        console.print(f"merged model:  {summary['merged_dir']}")
    console.print(f"metrics:       {run.root / 'metrics.jsonl'}")
    if identity is not None:
        console.print(
            f"receipts:      {run.root}/rounds/*/receipt.json -- audit offline with: "
            f"fl-ray verify {run.root} --roster {run.root / 'roster.json'}"
        )
    report = render_report(run.root)
    summary["report"] = str(report.html_path)
    console.print(f"verification:  {report.verification.headline}")
    console.print(f"report:        {report.html_path}")
    console.print(f"wall time:     {summary['wall_s']:.1f} s")
    return summary


class RunInterrupted(RuntimeError):
    """The run stopped before its last round; ``fl-ray resume`` continues it."""


def resume_run(
    run_dir: str | Path, expected: Recipe | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Continue a run from its last complete round, with the recipe it was started with.

    ``expected`` (``fl-ray run RECIPE --resume``) must be that same recipe.
    """
    run = RunDir(run_dir)
    if not (run.root / "recipe.yaml").is_file() or not (run.root / "run.json").is_file():
        raise FileNotFoundError(f"{run.root} is not a run directory (no recipe.yaml/run.json)")
    recipe = load_recipe(run.root / "recipe.yaml")
    started_with = run.run_info().get("recipe_sha256")
    if started_with != recipe.fingerprint():
        raise ValueError(f"{run.root}/recipe.yaml was changed after the run started")
    if expected is not None and expected.fingerprint() != started_with:
        changed = _changed_keys(expected.to_dict(), recipe.to_dict())
        raise ValueError(
            f"recipe differs from the one {run.root} was started with ({', '.join(changed[:5])})"
        )
    # the run directory may have moved since it was created: point the recipe at it
    recipe = recipe.model_copy(
        update={"output_dir": str(run.root.parent), "run_name": run.root.name}
    )
    return run_federation(recipe, resume=True, console=console)


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [k for key in keys for k in _changed_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
