"""The round loop: sample silos, broadcast, collect, check, merge, evaluate, commit.

A plain class: it talks to silos only through a :class:`SiloPool` (Ray actors in production,
in-process objects in unit tests), so the whole loop is testable without a cluster.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fl_ray.config import Recipe
from fl_ray.crashpoints import crash_point
from fl_ray.model import AdapterState, initial_adapter_state, save_merged_model, save_peft_adapter
from fl_ray.receipts.chain import Contribution
from fl_ray.receipts.hashing import state_hash
from fl_ray.receipts.session import CoordinatorNotary
from fl_ray.rundir import RunDir
from fl_ray.silo import SiloUpdate, derive_seed
from fl_ray.strategies import MIXED_RANK_STRATEGIES, aggregate, label_indices, shared_keys


@dataclass(frozen=True)
class SiloFailure:
    """A silo that gave no usable reply this round, and why (recorded as dropped)."""

    silo: str
    reason: str


class SiloPool(Protocol):
    """How the coordinator reaches silos; every call takes and returns plain data."""

    names: list[str]

    def train(
        self, round_num: int, global_state: AdapterState, names: list[str], timeout_s: float | None
    ) -> dict[str, SiloUpdate | SiloFailure]: ...

    def evaluate(
        self, state: AdapterState, names: list[str], timeout_s: float | None = None
    ) -> dict[str, dict[str, float] | SiloFailure]: ...

    def train_alone(self, initial_state: AdapterState, steps: int) -> dict[str, AdapterState]: ...

    def close(self) -> None: ...


# strategies that add noise: their seed must stay secret (see Coordinator._merge_seed)
NOISY_STRATEGIES = frozenset({"dp"})


def state_nbytes(state: AdapterState) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def sample_silos(names: list[str], fraction: float, min_silos: int, seed: int, round_num: int):
    """Seeded per-round sample; a pure function of (seed, round) so resume needs no RNG state."""
    if fraction >= 1.0:
        return sorted(names)
    k = max(min_silos, round(fraction * len(names)))
    rng = random.Random(derive_seed(seed, "sample", round_num))
    return sorted(rng.sample(sorted(names), min(k, len(names))))


def check_update(
    update: Any,
    round_num: int,
    expected: str,
    global_state: AdapterState,
    keys: list[str],
    same_shapes: bool,
) -> str | None:
    """Why a reply must not be merged, or None if it may."""
    if not isinstance(update, SiloUpdate):
        return f"reply is {type(update).__name__}, not a SiloUpdate"
    if update.silo != expected:
        return f"reply claims to be from {update.silo!r}"
    if update.round != round_num:
        return f"reply is for round {update.round}, not {round_num}"
    if sorted(update.state) != keys:
        return "update tensor names differ from what the strategy expects"
    for key, tensor in update.state.items():
        if same_shapes and tensor.shape != global_state[key].shape:
            return f"tensor {key} has shape {tuple(tensor.shape)}"
        if not torch.isfinite(tensor).all():
            return f"non-finite values in {key}"
    if update.num_examples <= 0:
        return "example count is not positive"
    return None


def contribution_cosines(
    before: AdapterState, after: AdapterState, accepted: dict[str, SiloUpdate]
) -> dict[str, float | None]:
    """Cosine between each silo's update direction and the merged step (a contribution score).

    Compared over the tensors the silo sent, in the same shapes as the global adapter.
    """
    scores: dict[str, float | None] = {}
    for name, update in accepted.items():
        keys = [
            k
            for k in sorted(update.state)
            if update.state[k].shape == before[k].shape == after[k].shape
        ]
        if not keys:
            scores[name] = None
            continue
        mine = torch.cat([(update.state[k] - before[k]).flatten().double() for k in keys])
        merged = torch.cat([(after[k] - before[k]).flatten().double() for k in keys])
        denom = mine.norm() * merged.norm()
        scores[name] = float(mine @ merged / denom) if denom > 0 else None
    return scores


def mean_eval(evals: dict[str, Any]) -> float | None:
    losses = [e["eval_loss"] for e in evals.values() if isinstance(e, dict)]
    return sum(losses) / len(losses) if losses else None


class Coordinator:
    """Runs a recipe's rounds against a silo pool and records each one in the run directory."""

    def __init__(
        self, recipe: Recipe, run: RunDir, pool: SiloPool, notary: CoordinatorNotary | None = None
    ) -> None:
        """``notary`` (signed runs) checks silo signatures and signs each round's receipt."""
        self.recipe, self.run, self.pool, self.notary = recipe, run, pool, notary
        self.global_state: AdapterState = {}
        self.server_state: AdapterState = {}
        self.initial_state: AdapterState = {}
        self.round_num = 0

    # -- start / resume -------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Round 0 (initial adapter + its evaluation), or pick up after the last complete round."""
        self.initial_state = initial_adapter_state(
            self.recipe.base_model, self.recipe.lora, self.recipe.seed
        )
        last = self.run.last_complete_round()
        if last is not None:
            self.run.rebuild_metrics_log()
            try:
                self.global_state = self.run.load_global(last)
                self.server_state = self.run.load_server_state(last)
                metrics = self.run.round_metrics(last)
            except Exception as err:  # safetensors/JSON errors: name the file, stop cleanly
                where = self.run.round_dir(last)
                raise ValueError(f"corrupted checkpoint in {where}: {err}") from None
            if sorted(self.global_state) != sorted(self.initial_state):
                raise ValueError(f"checkpoint {self.run.round_dir(last)} is not this recipe's")
            if self.notary is not None:
                if not (self.run.round_dir(last) / "receipt.json").is_file():
                    raise ValueError(f"{self.run.round_dir(last)} has no receipt to chain from")
                self.notary.resume_after(self.run.round_dir(last))
            self.round_num = last
            return metrics
        self.global_state = self.initial_state
        evals = self.pool.evaluate(self.global_state, self.pool.names)
        metrics = {
            "round": 0,
            "status": "initial",
            "eval_loss": mean_eval(evals),
            "silos": {n: _eval_fields(e) for n, e in sorted(evals.items())},
        }
        self.run.write_round(
            0, self.global_state, metrics, extra_files=self._receipt(0, "initial", metrics)
        )
        return metrics

    # -- one round ------------------------------------------------------------------------
    def run_round(self, round_num: int) -> dict[str, Any]:
        if round_num != self.round_num + 1:
            raise ValueError(f"round {round_num} requested after round {self.round_num}")
        started = time.perf_counter()
        recipe = self.recipe
        sampled = sample_silos(
            self.pool.names, recipe.round.fraction, recipe.round.min_silos, recipe.seed, round_num
        )
        crash_point("start", round_num)
        replies = self.pool.train(round_num, self.global_state, sampled, recipe.round.timeout_s)
        crash_point("collected", round_num)
        accepted: dict[str, SiloUpdate] = {}
        dropped: dict[str, str] = {}
        contributions: dict[str, Contribution] = {}
        global_hash = state_hash(self.global_state) if self.notary is not None else ""
        for name in sampled:
            reply = replies.get(name, SiloFailure(name, "no reply"))
            if isinstance(reply, SiloFailure):
                dropped[name] = reply.reason
                continue
            problem = check_update(
                reply,
                round_num,
                name,
                self.global_state,
                shared_keys(recipe.strategy.name, self.global_state),
                same_shapes=recipe.strategy.name not in MIXED_RANK_STRATEGIES,
            )
            if problem is None and self.notary is not None:
                try:
                    contributions[name] = self.notary.check(
                        round_num, name, reply.state, reply.num_examples, reply.signature or "",
                        global_hash,
                    )  # fmt: skip
                except ValueError as err:  # SignatureError: the roster's key did not sign it
                    problem = f"bad signature: {err}"
            if problem:
                dropped[name] = problem
            else:
                accepted[name] = reply

        silo_metrics: dict[str, dict[str, Any]] = {
            n: {"dropped": reason} for n, reason in dropped.items()
        }
        for name, update in accepted.items():
            silo_metrics[name] = {**update.metrics, "num_examples": update.num_examples}
            if update.node_id:
                silo_metrics[name]["node_id"] = update.node_id

        status = "ok" if len(accepted) >= recipe.round.min_silos else "aborted"
        if status == "ok":
            names = sorted(accepted)
            weights = [self._weight(accepted[n]) for n in names]
            merged = aggregate(
                recipe.strategy.name,
                recipe.strategy.params(),
                self.global_state,
                [accepted[n].state for n in names],
                weights,
                self.server_state,
                seed=self._merge_seed(round_num),
            )
            new_global, new_server = merged.state, merged.server_state
            merge_info = label_indices(merged.info, names)  # update positions -> silo names
        else:  # quorum missed: the global adapter and server state stay as they were
            new_global, new_server, merge_info = self.global_state, self.server_state, {}

        if status == "ok":
            for name, score in contribution_cosines(
                self.global_state, new_global, accepted
            ).items():
                silo_metrics[name]["contribution_cosine"] = score
        evals = self.pool.evaluate(new_global, self.pool.names, recipe.round.timeout_s)
        for name, ev in evals.items():
            silo_metrics.setdefault(name, {}).update(_eval_fields(ev))
        bytes_down = state_nbytes(self.global_state) * len(sampled)
        metrics = {
            "round": round_num,
            "status": status,
            "strategy": {"name": recipe.strategy.name, "params": recipe.strategy.params()},
            "merge_info": merge_info,
            "sampled": sampled,
            "contributed": sorted(accepted) if status == "ok" else [],
            "dropped": dict(sorted(dropped.items())),
            "eval_loss": mean_eval(evals),
            "train_loss": _mean([u.metrics.get("train_loss") for u in accepted.values()]),
            "bytes_down": bytes_down,
            "bytes_up": sum(state_nbytes(u.state) for u in accepted.values()),
            "seconds": time.perf_counter() - started,
            "silos": dict(sorted(silo_metrics.items())),
        }
        updates = {n: u.state for n, u in accepted.items()} if recipe.output.save_updates else None
        receipt = self._receipt(
            round_num, status, metrics, new_global, new_server, list(contributions.values()),
            dict(sorted(dropped.items())),
        )  # fmt: skip
        self.run.write_round(round_num, new_global, metrics, updates, new_server, receipt)
        self.global_state, self.server_state, self.round_num = new_global, new_server, round_num
        return metrics

    def _receipt(
        self,
        round_num: int,
        status: str,
        metrics: dict[str, Any],
        after: AdapterState | None = None,
        server_after: AdapterState | None = None,
        contributions: list[Contribution] | None = None,
        dropped: dict[str, str] | None = None,
    ) -> dict[str, bytes] | None:
        """The round's signed receipt file (None for unsigned runs)."""
        if self.notary is None:
            return None
        blob = self.notary.receipt(
            round_num,
            status,
            self.global_state,
            self.global_state if after is None else after,
            self.server_state if server_after is None else server_after,
            self.recipe.strategy.name,
            self.recipe.strategy.params(),
            contributions or [],
            dropped or {},
            metrics,
        )
        return {"receipt.json": blob}

    def _merge_seed(self, round_num: int) -> int:
        """The public per-round seed -- except for noise-adding strategies in a signed run,
        whose noise must not be recomputable from the recipe (it would be subtracted)."""
        if self.recipe.strategy.name in NOISY_STRATEGIES and self.notary is not None:
            return self.notary.secret_seed("merge", round_num)
        return derive_seed(self.recipe.seed, "merge", round_num)

    def _weight(self, update: SiloUpdate) -> float:
        spec = next(s for s in self.recipe.silos if s.name == update.silo)
        return float(spec.weight) if spec.weight is not None else float(update.num_examples)

    # -- end of run -----------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Export the final adapter (PEFT dir) and merged model; run the local-only baseline."""
        summary: dict[str, Any] = {"rounds": self.round_num}
        exports = [(self.run.final_adapter_dir, save_peft_adapter, "adapter_dir")]
        if self.recipe.output.save_merged:
            exports.append((self.run.final_merged_dir, save_merged_model, "merged_dir"))
        for target, save, key in exports:
            if not target.exists():  # written whole under a temporary name, then renamed
                tmp = target.with_name(f".tmp-{target.name}")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                save(self.recipe.base_model, self.recipe.lora, self.global_state, tmp)
                os.rename(tmp, target)
            summary[key] = str(target)
        if self.recipe.baseline.local_only:
            summary["baseline"] = self.local_only_baseline()
        return summary

    def local_only_baseline(self) -> dict[str, Any]:
        """Each silo trains alone for rounds × local_steps; every silo scores every result.

        Only adapters travel (the same as in the federation); the figure is the mean held-out
        loss over all departments, the same number the federation reports as ``eval_loss``.
        """
        steps = self.recipe.rounds * self.recipe.train.local_steps
        solo_states = self.pool.train_alone(self.initial_state, steps)
        per_owner: dict[str, dict[str, Any]] = {}
        for owner, state in sorted(solo_states.items()):
            evals = self.pool.evaluate(state, self.pool.names)
            per_owner[owner] = {
                "mean_eval_loss": mean_eval(evals),
                "by_silo": {n: _eval_fields(e).get("eval_loss") for n, e in sorted(evals.items())},
            }
        result = {
            "steps": steps,
            "local_only": per_owner,
            "federated_mean_eval_loss": self.run.round_metrics(self.round_num)["eval_loss"],
        }
        self.run.write_json_file("baseline.json", result)
        return result


def _eval_fields(ev: Any) -> dict[str, Any]:
    if isinstance(ev, SiloFailure):
        return {"eval_error": ev.reason}
    return {"eval_loss": ev["eval_loss"]}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
