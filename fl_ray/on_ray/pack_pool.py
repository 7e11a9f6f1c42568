"""Packed simulation placement (``placement.mode: pack``): many virtual silos on few workers.

On one machine, one process per silo oversubscribes the cores and holds a base model per
process. Here a few worker actors (about one per core, torch threads set to match) each host
many virtual silos: one frozen base model + LoRA per worker (per distinct LoRA rank) is shared
by all of that worker's silos, which train one after another. Sharing is safe because every
silo round starts by loading the global adapter into the model and building a fresh optimiser
(:class:`fl_ray.silo.Silo`), so no silo state lives in the shared model between calls.

A silo is assigned to one worker for the whole run and its data is created and kept there; only
LoRA tensors, example counts and scalar metrics cross process boundaries. The global adapter is
put in the object store once per round (the put is reused by the evaluation of the same
adapter), and each worker receives it once for all its silos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from fl_ray.config import Recipe, SiloSpec
from fl_ray.coordinator import SiloFailure, state_nbytes
from fl_ray.model import AdapterState, attach_lora, load_base
from fl_ray.receipts.session import RunIdentity, SiloSigner
from fl_ray.silo import Silo, SiloUpdate
from fl_ray.strategies import silo_options


@dataclass(frozen=True)
class Traffic:
    """LoRA tensor bytes that crossed process boundaries in one training call."""

    adapter_bytes: int  # the global adapter, in the object store once for the whole round
    bytes_to_workers: int  # that object as delivered: one copy per busy worker, not per silo
    bytes_returned: int  # the silos' returned LoRA tensors (adapter size × silos that replied)


class _PackWorker:
    """One process hosting several virtual silos around shared base models."""

    def __init__(
        self,
        recipe: Recipe,
        members: list[tuple[int, SiloSpec]],
        threads: int,
        identity: RunIdentity | None = None,
    ) -> None:
        # simulation: this process holds the keys of the virtual silos it hosts
        self.signers = {
            spec.name: SiloSigner(identity, spec.name) for _, spec in members if identity
        }
        models: dict[int | None, torch.nn.Module] = {}
        options = silo_options(recipe.strategy.name, recipe.strategy.params())
        self.silos: dict[str, Silo] = {}
        for index, spec in members:
            if spec.lora_r not in models:  # silos of another rank need their own LoRA modules
                base = load_base(recipe.base_model, gpus=spec.gpus)
                models[spec.lora_r] = attach_lora(base, recipe.lora, r=spec.lora_r)
            self.silos[spec.name] = Silo(
                spec,
                recipe.base_model,
                recipe.lora,
                recipe.data,
                recipe.train,
                recipe.seed,
                model=models[spec.lora_r],
                silo_index=index,
                **options,
            )
        torch.set_num_threads(threads)  # after the silos: each Silo sets its own thread count
        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.node_id

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str]
    ) -> dict[str, SiloUpdate | SiloFailure]:
        replies: dict[str, SiloUpdate | SiloFailure] = {}
        for name in names:
            try:
                update = self.silos[name].train(round_num, global_state)
            except Exception as err:  # one silo's crash is that silo's drop, not its worker's
                replies[name] = SiloFailure(name, f"{type(err).__name__}: {err}"[:300])
                continue
            update.node_id = self.node_id
            if name in self.signers:
                update.signature = self.signers[name].sign(
                    round_num, update.state, update.num_examples, global_state
                )
            replies[name] = update
        return replies

    def evaluate(self, state: AdapterState, names: list[str]) -> dict[str, Any]:
        replies: dict[str, Any] = {}
        for name in names:
            try:
                replies[name] = self.silos[name].evaluate(state)
            except Exception as err:
                replies[name] = SiloFailure(name, f"{type(err).__name__}: {err}"[:300])
        return replies

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]:
        return {n: s.train_alone(initial_state, steps) for n, s in self.silos.items()}


def pack_layout(recipe: Recipe, cpus: int) -> tuple[int, int, list[list[tuple[int, SiloSpec]]]]:
    """(workers, threads per worker, members of each worker as (recipe index, spec)).

    Threads per worker come from ``train.threads_per_silo``; workers default to one per
    ``threads`` cores (``placement.pack_workers`` overrides), never more than there are silos.
    Silo *i* of the recipe goes to worker *i mod workers*, so equal silos balance evenly.
    """
    threads = recipe.train.threads_per_silo
    wanted = recipe.placement.pack_workers or max(1, cpus // threads)
    workers = max(1, min(wanted, len(recipe.silos)))
    members: list[list[tuple[int, SiloSpec]]] = [[] for _ in range(workers)]
    for index, spec in enumerate(recipe.silos):
        members[index % workers].append((index, spec))
    return workers, threads, members


class PackedRaySiloPool:
    """The :class:`fl_ray.coordinator.SiloPool` of ``placement.mode: pack``."""

    def __init__(
        self, recipe: Recipe, cpus: int | None = None, identity: RunIdentity | None = None
    ) -> None:
        """``cpus``: cores to fill (default: this machine's); ``placement.pack_workers`` wins."""
        pinned = [s.name for s in recipe.silos if s.node_label]
        if pinned:
            raise ValueError(
                f"placement.mode=pack simulates silos on one machine; silo {pinned[0]} is "
                "pinned to a node (node_label): use placement.mode=per_node"
            )
        self.names = sorted(s.name for s in recipe.silos)
        workers, self.threads, members = pack_layout(recipe, cpus or os.cpu_count() or 1)
        remote_cls = ray.remote(_PackWorker).options(
            num_cpus=self.threads,
            num_gpus=max(s.gpus for s in recipe.silos),
            # a dead worker comes back and rebuilds its silos' data; a round is never retried
            max_restarts=3,
            max_task_retries=0,
        )
        self.members = [[spec.name for _, spec in group] for group in members]
        self.workers = [
            remote_cls.remote(recipe, group, self.threads, identity) for group in members
        ]
        self.worker_of = {n: w for w, group in enumerate(self.members) for n in group}
        self._put_state: AdapterState | None = None
        self._put_ref: ray.ObjectRef | None = None
        self.puts = 0  # object-store puts so far: one per adapter (i.e. per round)
        self.last_traffic: Traffic | None = None
        timeout = recipe.placement.placement_timeout_s
        ready, _ = ray.wait(
            [w.ready.remote() for w in self.workers], num_returns=len(self.workers), timeout=timeout
        )
        if len(ready) < len(self.workers):
            self.close()
            raise RuntimeError(f"pack workers not ready within {timeout:g} s")
        try:
            ray.get(ready)
        except RayError as err:
            self.close()
            raise RuntimeError(f"a pack worker could not start: {_why(err)}") from None

    def _put(self, state: AdapterState) -> ray.ObjectRef:
        """The object-store copy of ``state``: put once, reused while the same dict comes back
        (the coordinator evaluates the merged adapter, then trains the next round from it)."""
        if state is not self._put_state or self._put_ref is None:
            self._put_ref, self._put_state = ray.put(state), state
            self.puts += 1
        return self._put_ref

    def _call(
        self, method: str, names: list[str], timeout_s: float | None, *args: Any
    ) -> dict[str, Any]:
        """Send each worker one task for its share of ``names``; gather until the deadline."""
        wanted = set(names)
        refs = {}
        for w, group in enumerate(self.members):
            mine = [n for n in group if n in wanted]
            if mine:
                refs[getattr(self.workers[w], method).remote(*args, mine)] = mine
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        ready_set = set(ready)
        replies: dict[str, Any] = {}
        for ref, mine in refs.items():
            if ref not in ready_set:  # never fetched later: a late reply can't leak into a round
                replies.update(
                    {n: SiloFailure(n, f"missed the {timeout_s:g} s deadline") for n in mine}
                )
                continue
            try:
                replies.update(ray.get(ref, timeout=0))
            except (RayError, GetTimeoutError) as err:
                replies.update({n: SiloFailure(n, _why(err)) for n in mine})
        return replies

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str], timeout_s: float | None
    ) -> dict[str, SiloUpdate | SiloFailure]:
        replies = self._call("train", names, timeout_s, round_num, self._put(global_state))
        returned = sum(state_nbytes(r.state) for r in replies.values() if isinstance(r, SiloUpdate))
        size = state_nbytes(global_state)
        busy = sum(1 for group in self.members if set(group) & set(names))
        self.last_traffic = Traffic(size, size * busy, returned)
        return replies

    def evaluate(self, state: AdapterState, names: list[str], timeout_s: float | None = None):
        return self._call("evaluate", names, timeout_s, self._put(state))

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]:
        ref = ray.put(initial_state)
        states: dict[str, AdapterState] = {}
        for reply in ray.get([w.train_alone.remote(ref, steps) for w in self.workers]):
            states.update(reply)
        return states

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        self._put_ref = self._put_state = None


def _why(err: BaseException) -> str:
    if isinstance(err, RayActorError):
        return "pack worker died"
    if isinstance(err, RayTaskError) and getattr(err, "cause", None) is not None:
        err = err.cause
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]
