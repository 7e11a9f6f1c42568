"""Base model + LoRA: loading from a local directory, adapter state in and out, final exports.

An *adapter state* is a ``dict[str, torch.Tensor]`` keyed exactly as peft's
``get_peft_model_state_dict`` keys it; it is the only thing that travels between silos and the
coordinator, and what strategies merge.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fl_ray.config import BaseModelSpec, LoraSpec

AdapterState = dict[str, torch.Tensor]

# Nothing may come from a model hub at run time: every load below reads a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def lora_config(spec: LoraSpec, r: int | None = None) -> LoraConfig:
    rank = r or spec.r
    return LoraConfig(
        r=rank,
        lora_alpha=spec.alpha * rank / spec.r if r else spec.alpha,  # keep alpha/r fixed
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(spec: BaseModelSpec, gpus: int = 0) -> torch.nn.Module:
    """Load the base causal LM from its local directory, frozen, placed on ``gpus`` GPUs."""
    from fl_ray.devices import base_load_kwargs, finish_loading

    model = AutoModelForCausalLM.from_pretrained(
        spec.path, local_files_only=True, **base_load_kwargs(spec, gpus)
    )
    model = finish_loading(model, spec, gpus)
    model.requires_grad_(False)
    return model


def attach_lora(base: torch.nn.Module, spec: LoraSpec, r: int | None = None) -> PeftModel:
    return get_peft_model(base, lora_config(spec, r))


def get_adapter_state(model: PeftModel) -> AdapterState:
    # peft returns views of live parameters: clone so later training can't mutate what we sent.
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in get_peft_model_state_dict(model).items()
    }


def set_adapter_state(model: PeftModel, state: AdapterState) -> None:
    result = set_peft_model_state_dict(model, state)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"adapter state has keys this model lacks: {unexpected[:3]}")


def initial_adapter_state(spec: BaseModelSpec, lora: LoraSpec, seed: int, r: int | None = None):
    """The round-0 global adapter, built without loading the base weights.

    The base is instantiated on the meta device (shapes only), so this is cheap even for a 70B
    model. A follows peft's default Kaiming-uniform init, B is zero, so round 0 equals the base.
    """
    config = AutoConfig.from_pretrained(spec.path, local_files_only=True)
    with torch.device("meta"):
        shell = get_peft_model(AutoModelForCausalLM.from_config(config), lora_config(lora, r))
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(shell).items()}
    gen = torch.Generator().manual_seed(seed)
    state: AdapterState = {}
    for key in sorted(shapes):
        tensor = torch.zeros(shapes[key], dtype=torch.float32)
        if "lora_A" in key:
            bound = 1.0 / math.sqrt(shapes[key][1])  # kaiming_uniform_(a=sqrt(5)) bound
            tensor.uniform_(-bound, bound, generator=gen)
        state[key] = tensor
    return state


def save_peft_adapter(
    base_spec: BaseModelSpec, lora: LoraSpec, state: AdapterState, out_dir: Path
) -> None:
    """Write a PEFT directory that ``PeftModel.from_pretrained(base, out_dir)`` loads.

    Written from the adapter state alone: the coordinator need not load (or even fit) the base.
    """
    config = lora_config(lora, r=adapter_rank(state))
    config.base_model_name_or_path = base_spec.path
    config.inference_mode = True
    config.save_pretrained(str(out_dir))
    save_file(
        {k: v.contiguous() for k, v in sorted(state.items())},
        str(Path(out_dir) / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )


def save_merged_model(
    base_spec: BaseModelSpec, lora: LoraSpec, state: AdapterState, out_dir: Path
) -> None:
    """Fold the adapter into the base (``merge_and_unload``) and save model + tokenizer."""
    model = attach_lora(load_base(base_spec), lora, r=adapter_rank(state))
    set_adapter_state(model, state)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir))
    load_tokenizer(base_spec.path).save_pretrained(str(out_dir))


def adapter_rank(state: AdapterState) -> int:
    """The LoRA rank an adapter state carries (first A matrix's row count)."""
    for key in sorted(state):
        if "lora_A" in key:
            return int(state[key].shape[0])
    raise ValueError("adapter state has no lora_A tensors")
