"""One department's local trainer: a plain class (Ray wraps it elsewhere).

It loads the base model and its own data once; per round it loads the global adapter, trains
``local_steps`` steps and returns *only* LoRA tensors, its example count and scalar metrics.
Raw text and token ids never appear in anything it returns.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import datasets
import torch
import transformers

from fl_ray.attacks import apply_attack
from fl_ray.config import BaseModelSpec, DataSpec, LoraSpec, SiloSpec, TrainSpec
from fl_ray.data import IGNORE_INDEX, TokenizedSplit, batch_indices, load_silo_split
from fl_ray.model import (
    AdapterState,
    attach_lora,
    get_adapter_state,
    load_base,
    load_tokenizer,
    set_adapter_state,
)


@dataclass
class SiloUpdate:
    """What a silo sends back after a round: LoRA tensors, example count, metrics."""

    silo: str
    round: int
    state: AdapterState
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    node_id: str | None = None


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (``hash()`` of str varies per process)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Silo:
    """Local LoRA training and evaluation on one silo's private data."""

    def __init__(
        self,
        spec: SiloSpec,
        base: BaseModelSpec,
        lora: LoraSpec,
        data: DataSpec,
        train: TrainSpec,
        seed: int,
        prox_mu: float = 0.0,
        train_a: bool = True,
        model: torch.nn.Module | None = None,
    ) -> None:
        """``prox_mu`` > 0 adds FedProx's μ/2‖w − w_global‖² to the local loss (Li et al., 2020);
        ``train_a=False`` freezes every LoRA A matrix (FFA-LoRA, Sun et al., 2024)."""
        torch.set_num_threads(train.threads_per_silo)
        # per-load progress bars from every silo would bury the run's own progress display
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.spec, self.train_spec, self.seed = spec, train, seed
        tokenizer = load_tokenizer(base.path)
        self.train_split = load_silo_split(
            spec.data_dir, data, data.train_file, tokenizer, train.seq_len
        )
        self.eval_split = load_silo_split(
            spec.data_dir, data, data.eval_file, tokenizer, train.seq_len
        )
        # Several virtual silos of one process may share a model (packed simulation): every
        # round starts by loading the global adapter and a fresh optimiser, so sharing is safe.
        self.model = (
            model
            if model is not None
            else attach_lora(load_base(base, gpus=spec.gpus), lora, r=spec.lora_r)
        )
        self.device = next(self.model.parameters()).device
        self.prox_mu = float(prox_mu)
        self.train_a = train_a

    @property
    def name(self) -> str:
        return self.spec.name

    def _train_steps(self, state: AdapterState, steps: int, seed: int) -> tuple[AdapterState, dict]:
        set_adapter_state(self.model, state)
        self.model.train()
        for name, param in self.model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(self.train_a or "lora_A" not in name)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        anchors = [p.detach().clone() for p in params] if self.prox_mu > 0 else []
        # A fresh optimiser each round: the silo carries no hidden state between rounds, which
        # is what makes a resumed run bitwise identical to an uninterrupted one.
        opt = torch.optim.AdamW(
            params, lr=self.train_spec.lr, weight_decay=self.train_spec.weight_decay
        )
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # LoRA dropout
        losses, tokens = [], 0
        for _ in range(steps):
            idx = batch_indices(len(self.train_split), self.train_spec.batch_size, gen)
            out = self.model(**self._batch(self.train_split, idx))
            loss = out.loss
            if anchors:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
                loss = loss + 0.5 * self.prox_mu * prox
            loss.backward()
            if self.train_spec.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, self.train_spec.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(out.loss.detach().item())
            tokens += int((self.train_split.labels[idx] != IGNORE_INDEX).sum())
        metrics = {
            "train_loss": sum(losses) / len(losses),
            "train_loss_last": losses[-1],
            "steps": float(steps),
            "answer_tokens": float(tokens),
        }
        return get_adapter_state(self.model), metrics

    def _batch(self, split: TokenizedSplit, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "input_ids": split.input_ids[idx].to(self.device),
            "attention_mask": split.attention_mask[idx].to(self.device),
            "labels": split.labels[idx].to(self.device),
        }

    def train(self, round_num: int, global_state: AdapterState) -> SiloUpdate:
        """Train ``local_steps`` steps from the global adapter; return the new LoRA tensors."""
        started = time.perf_counter()
        seed = derive_seed(self.seed, self.name, round_num)
        state, metrics = self._train_steps(global_state, self.train_spec.local_steps, seed)
        if not self.train_a:  # FFA-LoRA: A is frozen, so only B travels
            state = {k: v for k, v in state.items() if "lora_A" not in k}
        if self.spec.attack is not None:
            sent_from = {k: global_state[k] for k in state}
            state = apply_attack(self.spec.attack, state, sent_from, seed)
        metrics["train_seconds"] = time.perf_counter() - started
        return SiloUpdate(self.name, round_num, state, len(self.train_split), metrics)

    @torch.no_grad()
    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """Token-weighted loss of ``state`` on this silo's held-out split; only numbers leave."""
        set_adapter_state(self.model, state)
        self.model.eval()
        total, count = 0.0, 0
        bs = self.train_spec.batch_size
        for start in range(0, len(self.eval_split), bs):
            idx = torch.arange(start, min(start + bs, len(self.eval_split)))
            batch = self._batch(self.eval_split, idx)
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            # next-token loss, summed so the split's loss is weighted by answer tokens
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = batch["labels"][:, 1:].reshape(-1)
            total += float(
                torch.nn.functional.cross_entropy(
                    shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((shift_labels != IGNORE_INDEX).sum())
        return {"eval_loss": total / max(count, 1), "eval_tokens": float(count)}

    def train_alone(self, initial_state: AdapterState, steps: int) -> AdapterState:
        """The local-only baseline: the same number of steps, with no federation."""
        state, _ = self._train_steps(
            initial_state, steps, derive_seed(self.seed, self.name, "solo")
        )
        return state
