"""Silos as Ray actors: placement on their own node, one object-store broadcast per call,
deadlines, and Ray's failures translated into :class:`SiloFailure` values."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
)

from fl_ray.config import FaultSpec, Recipe, SiloSpec
from fl_ray.coordinator import SiloFailure
from fl_ray.crashpoints import crash_point
from fl_ray.model import AdapterState
from fl_ray.on_ray.connect import SILO_LABEL
from fl_ray.receipts.session import RunIdentity, SiloSigner
from fl_ray.silo import Silo, SiloUpdate
from fl_ray.strategies import silo_options


class _SiloActor:
    """Ray-side shell around a :class:`Silo` that stamps replies with the node they ran on."""

    def __init__(self, spec: SiloSpec, recipe: Recipe, identity: RunIdentity | None) -> None:
        # the silo's key is decrypted here, inside its own process, and never leaves it
        self.signer = SiloSigner(identity, spec.name) if identity is not None else None
        self.silo = Silo(
            spec,
            recipe.base_model,
            recipe.lora,
            recipe.data,
            recipe.train,
            recipe.seed,
            silo_index=recipe.silos.index(spec),
            **silo_options(recipe.strategy.name, recipe.strategy.params()),
        )
        self.node_id = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.node_id

    def train(self, round_num: int, global_state: AdapterState) -> SiloUpdate:
        fault = self.silo.spec.fault
        if fault is not None and round_num in fault.rounds:
            _inject(fault, round_num)
        update = self.silo.train(round_num, global_state)
        update.node_id = self.node_id
        if self.signer is not None:  # signed last: it covers exactly what leaves the silo
            update.signature = self.signer.sign(
                round_num, update.state, update.num_examples, global_state
            )
        return update

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        return self.silo.evaluate(state)

    def train_alone(self, initial_state: AdapterState, steps: int) -> AdapterState:
        return self.silo.train_alone(initial_state, steps)


def _inject(fault: FaultSpec, round_num: int) -> None:
    """Fault injection for resilience tests: the process really exits or really stalls."""
    if fault.kind == "exit":
        # die `after_s` into this round's training, before any reply can leave the process
        threading.Timer(fault.after_s, os._exit, args=(1,)).start()
        time.sleep(fault.after_s + 3600)
    elif fault.kind == "sleep":
        time.sleep(fault.sleep_s)


def _silo_options(spec: SiloSpec, max_restarts: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "num_cpus": spec.num_cpus,
        "num_gpus": spec.gpus,
        # A dead silo comes back (on its own node: the label selector still applies) and
        # rebuilds its state from its own files; a half-done round is never retried.
        "max_restarts": max_restarts,
        "max_task_retries": 0,
    }
    if spec.node_label:
        options["label_selector"] = {SILO_LABEL: spec.node_label}
    return options


RESTARTING = "silo actor is restarting"


def _failure(name: str, err: BaseException) -> SiloFailure:
    if isinstance(err, ActorUnavailableError):
        return SiloFailure(name, RESTARTING)
    if isinstance(err, RayActorError):
        return SiloFailure(name, "silo actor died")
    if isinstance(err, RayTaskError):
        cause = err.cause if getattr(err, "cause", None) is not None else err
        return SiloFailure(name, f"{type(cause).__name__}: {cause}".splitlines()[0][:300])
    return SiloFailure(name, f"{type(err).__name__}: {err}".splitlines()[0][:300])


class RaySiloPool:
    """One Ray actor per silo; the global adapter goes to the object store once per call.

    A silo whose labelled node never appears within ``placement.placement_timeout_s`` makes the
    start fail, or (``on_unplaceable: drop``) is recorded as dropped in every round -- its work
    is never moved to another node.
    """

    def __init__(self, recipe: Recipe, identity: RunIdentity | None = None) -> None:
        self.names = sorted(s.name for s in recipe.silos)
        placement = recipe.placement
        self.unplaceable: dict[str, str] = {}
        # A pinned actor never errors when its node is absent -- it just waits -- so look at the
        # live nodes' labels first and settle those silos now.
        present = {
            (node.get("Labels") or {}).get(SILO_LABEL) for node in ray.nodes() if node.get("Alive")
        }
        for spec in recipe.silos:
            if spec.node_label and spec.node_label not in present:
                why = f"unplaceable: no node labelled {SILO_LABEL}={spec.node_label}"
                if placement.on_unplaceable == "fail":
                    raise RuntimeError(f"silo {spec.name} {why}")
                self.unplaceable[spec.name] = why
        remote_cls = ray.remote(_SiloActor)
        self.actors = {
            spec.name: remote_cls.options(**_silo_options(spec, placement.max_restarts)).remote(
                spec, recipe, identity
            )
            for spec in recipe.silos
            if spec.name not in self.unplaceable
        }
        self.restart_wait_s = placement.placement_timeout_s
        ready = self._gather(
            {n: a.ready.remote() for n, a in self.actors.items()}, placement.placement_timeout_s
        )
        labels = {s.name: s.node_label for s in recipe.silos}
        for name, reply in sorted(ready.items()):
            if not isinstance(reply, SiloFailure):
                continue
            if labels[name] and reply.reason.startswith("missed"):
                why = f"unplaceable: no node labelled {SILO_LABEL}={labels[name]}"
            else:
                why = f"could not start: {reply.reason}"
            if placement.on_unplaceable == "fail" or not why.startswith("unplaceable"):
                self.close()
                raise RuntimeError(f"silo {name} {why}")
            ray.kill(self.actors.pop(name), no_restart=True)
            self.unplaceable[name] = why
        # the node each silo runs on, as Ray placed it (tests and operators check pinning)
        self.node_ids = {n: r for n, r in ready.items() if n in self.actors}

    def _gather(self, refs: dict[str, ray.ObjectRef], timeout_s: float | None) -> dict[str, Any]:
        """Wait for all replies until the deadline; what is missing then is a failure."""
        by_ref = {ref: name for name, ref in refs.items()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s)
        replies: dict[str, Any] = {}
        ready_set = set(ready)
        for ref, name in by_ref.items():
            if ref not in ready_set:
                # never fetched later either: a late reply cannot leak into another round
                replies[name] = SiloFailure(name, f"missed the {timeout_s:g} s deadline")
                continue
            try:
                replies[name] = ray.get(ref, timeout=0)
            except (RayError, GetTimeoutError) as err:
                replies[name] = _failure(name, err)
        return replies

    def _call(
        self,
        method: str,
        names: list[str],
        timeout_s: float | None,
        *args: Any,
        round_num: int | None = None,
    ) -> dict[str, Any]:
        replies = {n: SiloFailure(n, self.unplaceable[n]) for n in names if n in self.unplaceable}
        live = [n for n in names if n in self.actors]
        down = self._await_alive(live, self.restart_wait_s)
        replies.update(down)
        live = [n for n in live if n not in down]
        refs = {n: getattr(self.actors[n], method).remote(*args) for n in live}
        if round_num is not None:
            crash_point("dispatch", round_num)  # tests: the coordinator dies mid-training
        for name, reply in self._gather(refs, timeout_s).items():
            if isinstance(reply, SiloFailure) and reply.reason == RESTARTING:
                reply = SiloFailure(name, "silo actor died")  # it died while doing this call
            replies[name] = reply
        return replies

    def _await_alive(self, names: list[str], wait_s: float) -> dict[str, SiloFailure]:
        """Give silos that Ray is restarting (after a crash) time to come back before a call.

        A call made while an actor restarts fails at once with ActorUnavailableError; a silo
        that rebuilds itself from its own files within ``wait_s`` rejoins this round.
        """
        deadline = time.monotonic() + wait_s
        pending, down = list(names), {}
        while pending:
            refs = {n: self.actors[n].ready.remote() for n in pending}
            replies = self._gather(refs, max(deadline - time.monotonic(), 0.0))
            pending = []
            for name, reply in replies.items():
                if not isinstance(reply, SiloFailure):
                    continue
                if reply.reason == RESTARTING and time.monotonic() < deadline:
                    pending.append(name)
                else:
                    down[name] = SiloFailure(name, "silo actor died")
            if pending:
                time.sleep(0.25)
        return down

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str], timeout_s: float | None
    ) -> dict[str, SiloUpdate | SiloFailure]:
        ref = ray.put(global_state)  # one broadcast copy per round, shared by every silo
        return self._call("train", names, timeout_s, round_num, ref, round_num=round_num)

    def evaluate(self, state: AdapterState, names: list[str], timeout_s: float | None = None):
        return self._call("evaluate", names, timeout_s, ray.put(state))

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]:
        replies = self._call("train_alone", self.names, None, ray.put(initial_state), steps)
        return {n: r for n, r in replies.items() if not isinstance(r, SiloFailure)}

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
