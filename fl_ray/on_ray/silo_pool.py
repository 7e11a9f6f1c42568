"""Silos as Ray actors: placement on their own node, one object-store broadcast per call,
deadlines, and Ray's failures translated into :class:`SiloFailure` values."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from fl_ray.config import Recipe, SiloSpec
from fl_ray.coordinator import SiloFailure
from fl_ray.model import AdapterState
from fl_ray.on_ray.connect import SILO_LABEL
from fl_ray.silo import Silo, SiloUpdate
from fl_ray.strategies import silo_options


class _SiloActor:
    """Ray-side shell around a :class:`Silo` that stamps replies with the node they ran on."""

    def __init__(self, spec: SiloSpec, recipe: Recipe) -> None:
        self.silo = Silo(
            spec,
            recipe.base_model,
            recipe.lora,
            recipe.data,
            recipe.train,
            recipe.seed,
            **silo_options(recipe.strategy.name, recipe.strategy.params()),
        )
        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.node_id

    def train(self, round_num: int, global_state: AdapterState) -> SiloUpdate:
        update = self.silo.train(round_num, global_state)
        update.node_id = self.node_id
        return update

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        return self.silo.evaluate(state)

    def train_alone(self, initial_state: AdapterState, steps: int) -> AdapterState:
        return self.silo.train_alone(initial_state, steps)


def _silo_options(spec: SiloSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_cpus": spec.num_cpus,
        "num_gpus": spec.gpus,
        # A dead silo comes back (on its own node: the label selector still applies) and
        # rebuilds its state from its own files; a half-done round is never retried.
        "max_restarts": 3,
        "max_task_retries": 0,
        "name": None,
    }
    if spec.node_label:
        options["label_selector"] = {SILO_LABEL: spec.node_label}
    return options


def _failure(name: str, err: BaseException) -> SiloFailure:
    if isinstance(err, RayActorError):
        return SiloFailure(name, "silo actor died")
    if isinstance(err, RayTaskError):
        cause = err.cause if getattr(err, "cause", None) is not None else err
        return SiloFailure(name, f"{type(cause).__name__}: {cause}".splitlines()[0][:300])
    return SiloFailure(name, f"{type(err).__name__}: {err}".splitlines()[0][:300])


class RaySiloPool:
    """One Ray actor per silo; the global adapter goes to the object store once per call."""

    def __init__(self, recipe: Recipe, ready_timeout_s: float = 600.0) -> None:
        self.names = sorted(s.name for s in recipe.silos)
        remote_cls = ray.remote(_SiloActor)
        self.actors = {
            spec.name: remote_cls.options(**_silo_options(spec)).remote(spec, recipe)
            for spec in recipe.silos
        }
        self.node_ids = self._gather(
            {n: a.ready.remote() for n, a in self.actors.items()}, ready_timeout_s
        )
        failed = {n: r for n, r in self.node_ids.items() if isinstance(r, SiloFailure)}
        if failed:
            name, why = next(iter(sorted(failed.items())))
            raise RuntimeError(f"silo {name} could not start: {why.reason}")

    def _gather(self, refs: dict[str, ray.ObjectRef], timeout_s: float | None) -> dict[str, Any]:
        """Wait for all replies until the deadline; what is missing then is a failure."""
        by_ref = {ref: name for name, ref in refs.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s)
        replies: dict[str, Any] = {}
        for ref, name in by_ref.items():
            if ref not in ready:
                replies[name] = SiloFailure(name, f"missed the {timeout_s:g} s deadline")
                continue
            try:
                replies[name] = ray.get(ref, timeout=0)
            except (RayError, GetTimeoutError) as err:
                replies[name] = _failure(name, err)
        return replies

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str], timeout_s: float | None
    ) -> dict[str, SiloUpdate | SiloFailure]:
        ref = ray.put(global_state)  # one broadcast copy per round, shared by every silo
        return self._gather(
            {n: self.actors[n].train.remote(round_num, ref) for n in names}, timeout_s
        )

    def evaluate(self, state: AdapterState, names: list[str]):
        ref = ray.put(state)
        return self._gather({n: self.actors[n].evaluate.remote(ref) for n in names}, None)

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]:
        ref = ray.put(initial_state)
        replies = self._gather(
            {n: a.train_alone.remote(ref, steps) for n, a in self.actors.items()}, None
        )
        return {n: r for n, r in replies.items() if not isinstance(r, SiloFailure)}

    def kill(self, name: str, restart: bool = True) -> None:
        ray.kill(self.actors[name], no_restart=not restart)

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
