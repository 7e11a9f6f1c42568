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
from peft.utils import set_peft_model_state_dict
from transformers import AutoConfig

from fl_ray.attacks import apply_attack
from fl_ray.config import BaseModelSpec, DataSpec, LoraSpec, SiloSpec, TrainSpec
from fl_ray.data import (
    IGNORE_INDEX,
    TokenizedSplit,
    batch_indices,
    load_silo_split,
    random_token_splits,
    sequential_batch,
)
from fl_ray.model import (
    AdapterState,
    adapter_rank,
    attach_lora,
    get_adapter_state,
    load_base,
    load_tokenizer,
    lora_config,
    set_adapter_state,
)
from fl_ray.strategies import fit_rank


@dataclass
class SiloUpdate:
    """What a silo sends back after a round: LoRA tensors, example count, metrics."""

    silo: str
    round: int
    state: AdapterState
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    node_id: str | None = None
    signature: str | None = None  # the silo's EIP-712 signature over this update (receipts)


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
        silo_index: int | None = None,
    ) -> None:
        """``prox_mu`` > 0 adds FedProx's μ/2‖w − w_global‖² to the local loss (Li et al., 2020);
        ``train_a=False`` freezes every LoRA A matrix (FFA-LoRA, Sun et al., 2024).
        ``silo_index`` (the silo's position in ``recipe.silos``) seeds ``random_tokens`` data
        with ``data.random_seed_base + silo_index``; file-backed silos ignore it."""
        torch.set_num_threads(train.threads_per_silo)
        # per-load progress bars from every silo would bury the run's own progress display
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.spec, self.train_spec, self.seed = spec, train, seed
        # random_tokens: no padding anywhere, so no attention mask is passed (as the peers do),
        # which also keeps attention on the unmasked causal fast path
        self.unpadded = data.source == "random_tokens"
        if self.unpadded:
            if silo_index is None:
                raise ValueError(f"silo {spec.name}: data.source=random_tokens needs silo_index")
            # random ids need no tokenizer, only the vocabulary size
            vocab = AutoConfig.from_pretrained(base.path, local_files_only=True).vocab_size
            self.train_split, self.eval_split = random_token_splits(
                data.random_seqs, train.seq_len, vocab, data.random_seed_base + silo_index
            )
        else:
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
        # this silo's LoRA rank; a global adapter of another rank (exact merging, mixed ranks)
        # is fitted to it with fit_rank before training
        self.lora, self.rank = lora, spec.lora_r or lora.r

    @property
    def name(self) -> str:
        return self.spec.name

    def _train_steps(
        self, state: AdapterState, steps: int, seed: int, first_step: int = 0
    ) -> tuple[AdapterState, dict]:
        """``first_step``: how many local steps this silo took before (sequential batches)."""
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
        sequential = self.train_spec.batch_order == "sequential"
        for step in range(first_step, first_step + steps):
            if sequential:
                idx = sequential_batch(len(self.train_split), self.train_spec.batch_size, step)
            else:
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
        batch = {
            "input_ids": split.input_ids[idx].to(self.device),
            "labels": split.labels[idx].to(self.device),
        }
        if not self.unpadded:
            batch["attention_mask"] = split.attention_mask[idx].to(self.device)
        return batch

    def train(self, round_num: int, global_state: AdapterState) -> SiloUpdate:
        """Train ``local_steps`` steps from the global adapter; return the new LoRA tensors."""
        started = time.perf_counter()
        seed = derive_seed(self.seed, self.name, round_num)
        steps = self.train_spec.local_steps
        global_state = fit_rank(global_state, self.rank)  # the same tensors when ranks agree
        state, metrics = self._train_steps(global_state, steps, seed, (round_num - 1) * steps)
        if not self.train_a:  # FFA-LoRA: A is frozen, so only B travels
            state = {k: v for k, v in state.items() if "lora_A" not in k}
        if self.spec.attack is not None:
            sent_from = {k: global_state[k] for k in state}
            state = apply_attack(self.spec.attack, state, sent_from, seed)
        metrics["train_seconds"] = time.perf_counter() - started
        return SiloUpdate(self.name, round_num, state, len(self.train_split), metrics)

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """Token-weighted loss of ``state`` on this silo's held-out split; only numbers leave."""
        rank = adapter_rank(state)
        if rank == self.rank:
            with torch.no_grad():
                set_adapter_state(self.model, state)
            return self._eval_active()
        # A global of another rank (exact merging: stacked, or mixed ranks) is scored as itself,
        # in a temporary adapter of its rank, not through a rank-r approximation.
        self.model.add_adapter("fl_ray_eval", lora_config(self.lora, rank))
        try:
            with torch.no_grad():
                set_peft_model_state_dict(self.model, state, adapter_name="fl_ray_eval")
            self.model.set_adapter("fl_ray_eval")
            return self._eval_active()
        finally:
            self.model.set_adapter("default")
            self.model.delete_adapter("fl_ray_eval")

    def _eval_active(self) -> dict[str, float]:
        self.model.eval()
        with torch.inference_mode():  # no autograd bookkeeping at all (cheaper than no_grad)
            return self._eval_loss()

    def _eval_loss(self) -> dict[str, float]:
        total, count = 0.0, 0
        bs = self.train_spec.batch_size
        for start in range(0, len(self.eval_split), bs):
            idx = torch.arange(start, min(start + bs, len(self.eval_split)))
            batch = self._batch(self.eval_split, idx)
            labels = batch.pop("labels")
            logits = self.model(**batch).logits
            # next-token loss, summed so the split's loss is weighted by answer tokens
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
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
            fit_rank(initial_state, self.rank), steps, derive_seed(self.seed, self.name, "solo")
        )
        return state
