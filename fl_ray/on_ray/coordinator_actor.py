"""The coordinator as a Ray actor, and the driver's handle on it."""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fl_ray.config import Recipe
from fl_ray.coordinator import Coordinator
from fl_ray.on_ray.pack_pool import PackedRaySiloPool
from fl_ray.on_ray.silo_pool import RaySiloPool
from fl_ray.receipts.session import CoordinatorNotary, RunIdentity
from fl_ray.rundir import RunDir


class _CoordinatorActor:
    """The coordinator as a Ray actor: owns the silo pool and the run directory."""

    def __init__(self, recipe: Recipe, run_root: str, identity: RunIdentity | None) -> None:
        # A constructor that raises kills the actor and hides the reason behind ActorDiedError;
        # keep the error and raise it from start(), where it reaches the driver as itself.
        self.startup_error: Exception | None = None
        try:
            notary = None
            if identity is not None:  # the coordinator's key is opened here, in its process
                notary = CoordinatorNotary(identity, recipe.base_model.path)
            if recipe.placement.mode == "pack":  # simulation: few workers, many silos
                self.pool = PackedRaySiloPool(recipe, identity=identity)
            else:
                self.pool = RaySiloPool(recipe, identity)
            self.coordinator = Coordinator(recipe, RunDir(run_root), self.pool, notary)
        except Exception as err:
            self.startup_error = err

    def start(self) -> dict[str, Any]:
        if self.startup_error is not None:
            raise self.startup_error
        return self.coordinator.start()

    def run_round(self, round_num: int) -> dict[str, Any]:
        return self.coordinator.run_round(round_num)

    def finish(self) -> dict[str, Any]:
        return self.coordinator.finish()

    def close(self) -> None:
        if self.startup_error is None:
            self.pool.close()


class CoordinatorDied(RuntimeError):
    """The coordinator actor's process is gone; the run directory holds its last full round."""


class CoordinatorClient:
    """Driver-side handle on the coordinator actor; every call blocks for its result."""

    def __init__(self, recipe: Recipe, run_root: str, identity: RunIdentity | None) -> None:
        # num_cpus=0: the coordinator mostly waits; the CPUs belong to the silos. Pinned to the
        # driver's node: the run directory and the coordinator's key live there, not on a
        # department's node.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = (
            ray.remote(num_cpus=0, max_restarts=0)(_CoordinatorActor)
            .options(scheduling_strategy=here)
            .remote(recipe, run_root, identity)
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
