"""Where and how a silo loads its base model: CPU, one GPU, or several (accelerate device_map).

A silo actor asks Ray for ``silos[*].gpus`` GPUs; Ray then sets ``CUDA_VISIBLE_DEVICES`` to
exactly those, so ``device_map="auto"`` (accelerate's big-model inference placement, which
fills the visible GPUs in order) spreads the base's layers over the actor's own GPUs and no
others. Then:

* ``dtype: auto`` means bfloat16 on a GPU that supports it (float16 otherwise) and float32 on
  CPU; an explicit dtype is always honoured.
* ``base_model.quantization: 4bit | 8bit`` loads the frozen base through bitsandbytes (QLoRA,
  Dettmers et al., 2023: NF4 weights, double quantisation, bf16 compute), for bases larger than
  the node's GPU memory. It needs GPUs and the ``bitsandbytes`` package, checked up front.
* A base that does not fit on the actor's GPUs is an error, not a silent offload of layers to CPU
  or disk (which would make each local step orders of magnitude slower, or fail in backward).

With ``gpus: 0`` the same code path runs on CPU: float32, no device map, no quantisation.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from fl_ray.config import BaseModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("4bit", "8bit")


def quantization_of(spec: BaseModelSpec) -> str | None:
    """The recipe's ``base_model.quantization`` (None until the key exists in the schema)."""
    kind = getattr(spec, "quantization", None)
    if kind is not None and kind not in QUANTIZATIONS:
        raise ValueError(f"base_model.quantization must be one of {QUANTIZATIONS} or null")
    return kind


def resolve_dtype(name: str, gpus: int, bf16_supported: bool | None = None) -> torch.dtype:
    """The torch dtype for the base: ``auto`` is bf16 on GPU (fp16 where bf16 is unsupported,
    e.g. V100/T4) and float32 on CPU, where bf16 matmuls are slow and fp16 ones missing."""
    if name != "auto":
        return DTYPES[name]
    if gpus == 0:
        return torch.float32
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def quantization_config(kind: str, compute_dtype: torch.dtype) -> Any:
    """A ``BitsAndBytesConfig`` for 4-bit (NF4, double-quantised, as in QLoRA) or 8-bit loading.

    bitsandbytes is imported here, lazily, so CPU installs never need it.
    """
    if kind not in QUANTIZATIONS:
        raise ValueError(f"base_model.quantization must be one of {QUANTIZATIONS} or null")
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        raise ImportError(
            f"base_model.quantization: {kind} needs the bitsandbytes package on every GPU node "
            "(pip install 'bitsandbytes>=0.45'); it is not installed in this environment"
        ) from None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def check_gpus_visible(gpus: int) -> None:
    """A silo that asked for GPUs must see them: a CPU torch build or a node without CUDA
    would otherwise load the base on CPU without a word."""
    if gpus == 0:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"silo asks for {gpus} GPU(s) but CUDA is not available in this process "
            "(CPU-only torch build, or no GPU on this node)"
        )
    seen = torch.cuda.device_count()
    if seen < gpus:
        raise RuntimeError(f"silo asks for {gpus} GPU(s) but only {seen} are visible to it")


def base_load_kwargs(spec: BaseModelSpec, gpus: int) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a base on ``gpus`` GPUs (0: CPU)."""
    kind = quantization_of(spec)
    if kind is not None and gpus == 0:
        raise ValueError(
            f"base_model.quantization: {kind} needs GPUs (bitsandbytes kernels): give the "
            "silos gpus >= 1 or set base_model.quantization: null"
        )
    check_gpus_visible(gpus)
    dtype = resolve_dtype(spec.dtype, gpus)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if gpus > 0:
        # Ray has narrowed CUDA_VISIBLE_DEVICES to this actor's GPUs: "auto" spreads over them.
        kwargs["device_map"] = "auto"
    if kind is not None:
        kwargs["quantization_config"] = quantization_config(kind, compute_dtype=dtype)
    return kwargs


def check_placement(model: torch.nn.Module, gpus: int) -> None:
    """Refuse a base that accelerate had to offload: every module must sit on a GPU."""
    if gpus == 0:
        return
    device_map = getattr(model, "hf_device_map", None) or {}
    offloaded = sorted(name for name, where in device_map.items() if where in ("cpu", "disk"))
    if offloaded:
        raise RuntimeError(
            f"the base model does not fit on this silo's {gpus} GPU(s): {len(offloaded)} "
            f"module(s) offloaded (first: {offloaded[0]!r}); raise silos[*].gpus or set "
            "base_model.quantization: 4bit"
        )


def finish_loading(model: torch.nn.Module, spec: BaseModelSpec, gpus: int) -> torch.nn.Module:
    """After ``from_pretrained``: check the placement; prepare a quantised base for LoRA
    training (peft's ``prepare_model_for_kbit_training``: norms in fp32, input gradients on,
    gradient checkpointing, as the QLoRA recipe does)."""
    check_placement(model, gpus)
    if quantization_of(spec) is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model
