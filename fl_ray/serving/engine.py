"""The served model: base + one verified round's LoRA adapter, merged, and its tokenizer.

The adapter is merged into the base (peft ``merge_and_unload``, i.e. W + (alpha/r)·B·A, Hu et al.
2021), so inference costs exactly what the base costs. A replica with a GPU loads onto it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fl_ray.config import BaseModelSpec, LoraSpec, parse_recipe
from fl_ray.model import (
    AdapterState,
    adapter_rank,
    attach_lora,
    load_base,
    load_tokenizer,
    set_adapter_state,
)
from fl_ray.rundir import RunDir
from fl_ray.serving.generation import (
    Generation,
    SamplingParams,
    chat_prompt,
    context_limit,
    encode_prompt,
    generate,
)
from fl_ray.serving.provenance import Provenance, check_adapter, check_base_model


@dataclass(frozen=True)
class ServedRound:
    """Everything a replica needs, as plain data: it may start on a node without the run dir."""

    model_id: str
    base_model: BaseModelSpec
    lora: LoraSpec
    adapter: AdapterState
    provenance: Provenance


def read_served_round(run_dir: str | Path, provenance: Provenance) -> ServedRound:
    """Read the recipe and the verified round's global adapter (call only after verifying)."""
    run = RunDir(run_dir)
    # Silo data never reaches the serving machine: only the base model path must exist here.
    recipe = parse_recipe(run.recipe_dict(), check_paths=False)
    base_path = Path(recipe.base_model.path).resolve()
    if not (base_path / "config.json").is_file():
        raise FileNotFoundError(
            f"base model of {run.root} not found at {base_path} (recipe base_model.path)"
        )
    adapter_path = run.round_dir(provenance.round) / "global.safetensors"
    adapter = run.load_global(provenance.round)
    check_adapter(provenance, adapter, str(adapter_path))
    return ServedRound(
        model_id=recipe.run_name,
        base_model=recipe.base_model.model_copy(update={"path": str(base_path)}),
        lora=recipe.lora,
        adapter=adapter,
        provenance=provenance,
    )


def load_merged(base: BaseModelSpec, lora: LoraSpec, adapter: AdapterState) -> torch.nn.Module:
    """Base with ``adapter`` folded in, in eval mode, on a GPU when this process has one."""
    gpus = 1 if torch.cuda.is_available() else 0
    model = attach_lora(load_base(base, gpus=gpus), lora, r=adapter_rank(adapter))
    set_adapter_state(model, adapter)
    merged = model.merge_and_unload()
    merged.eval()
    return merged


class PromptRejected(ValueError):
    """A prompt the model cannot take: empty, or prompt + max_tokens beyond its context;
    ``param`` names the request field to blame."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class Engine:
    """One loaded model answering completion and chat requests, one at a time."""

    def __init__(
        self, served: ServedRound, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.model_id = served.model_id
        self.provenance = served.provenance
        self.model, self.tokenizer = model, tokenizer
        self.context = context_limit(model)
        # generate() is not re-entrant with per-request seeding; a replica answers serially and
        # Serve scales out with replicas.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, served: ServedRound) -> Engine:
        """Check the base against the receipt's fingerprint on this node, then load."""
        check_base_model(served.provenance, served.base_model.path)
        model = load_merged(served.base_model, served.lora, served.adapter)
        return cls(served, model, load_tokenizer(served.base_model.path))

    def complete(self, prompt: str, params: SamplingParams) -> Generation:
        ids = encode_prompt(self.tokenizer, prompt)
        if not ids:
            raise PromptRejected("prompt is empty after tokenisation", "prompt")
        if len(ids) + params.max_tokens > self.context:
            raise PromptRejected(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"model context of {self.context} tokens",
                "max_tokens",
            )
        with self._lock:
            return generate(self.model, self.tokenizer, ids, params)

    def chat(self, messages: list[dict[str, str]], params: SamplingParams) -> Generation:
        return self.complete(chat_prompt(self.tokenizer, messages), params)
