"""The coordinator as a Ray actor, and the driver's handle on it."""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from fl_ray.config import Recipe
from fl_ray.coordinator import Coordinator
from fl_ray.on_ray.silo_pool import RaySiloPool
from fl_ray.rundir import RunDir


class _CoordinatorActor:
    """The coordinator as a Ray actor: owns the silo pool and the run directory."""

    def __init__(self, recipe: Recipe, run_root: str) -> None:
        self.pool = RaySiloPool(recipe)
        self.coordinator = Coordinator(recipe, RunDir(run_root), self.pool)

    def pid(self) -> int:
        return os.getpid()

    def start(self) -> dict[str, Any]:
        return self.coordinator.start()

    def run_round(self, round_num: int) -> dict[str, Any]:
        return self.coordinator.run_round(round_num)

    def finish(self) -> dict[str, Any]:
        return self.coordinator.finish()

    def close(self) -> None:
        self.pool.close()


class CoordinatorDied(RuntimeError):
    """The coordinator actor's process is gone; the run directory holds its last full round."""


class CoordinatorClient:
    """Driver-side handle on the coordinator actor; every call blocks for its result."""

    def __init__(self, recipe: Recipe, run_root: str) -> None:
        # num_cpus=0: the coordinator mostly waits; the CPUs belong to the silos.
        self.actor = ray.remote(num_cpus=0, max_restarts=0)(_CoordinatorActor).remote(
            recipe, run_root
        )

    def call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except RayActorError:
            raise CoordinatorDied("the coordinator process died") from None
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, Exception) else RuntimeError(str(err))) from None

    def close(self) -> None:
        try:
            ray.get(self.actor.close.remote(), timeout=60)
        except RayError:
            pass
        ray.kill(self.actor, no_restart=True)
