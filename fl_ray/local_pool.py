"""An in-process silo pool: every silo is a plain :class:`Silo` in this process.

Used by unit tests (the coordinator without a cluster) and as the building block of packed
simulation; production runs use the Ray pool in :mod:`fl_ray.on_ray`.
"""

from __future__ import annotations

from fl_ray.config import Recipe
from fl_ray.coordinator import SiloFailure
from fl_ray.model import AdapterState
from fl_ray.silo import Silo, SiloUpdate
from fl_ray.strategies import silo_options


class LocalSiloPool:
    """Silos as in-process objects; failures are caught and reported like remote ones."""

    def __init__(self, recipe: Recipe) -> None:
        self.silos = {
            spec.name: Silo(
                spec,
                recipe.base_model,
                recipe.lora,
                recipe.data,
                recipe.train,
                recipe.seed,
                silo_index=index,
                **silo_options(recipe.strategy.name, recipe.strategy.params()),
            )
            for index, spec in enumerate(recipe.silos)
        }
        self.names = sorted(self.silos)

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str], timeout_s: float | None
    ) -> dict[str, SiloUpdate | SiloFailure]:
        replies: dict[str, SiloUpdate | SiloFailure] = {}
        for name in names:
            try:
                replies[name] = self.silos[name].train(round_num, global_state)
            except Exception as err:  # a silo's crash is that silo's drop, not the run's
                replies[name] = SiloFailure(name, f"{type(err).__name__}: {err}")
        return replies

    def evaluate(self, state: AdapterState, names: list[str], timeout_s: float | None = None):
        return {name: self.silos[name].evaluate(state) for name in names}

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]:
        return {name: silo.train_alone(initial_state, steps) for name, silo in self.silos.items()}

    def close(self) -> None:
        self.silos.clear()
