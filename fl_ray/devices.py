"""Where and how a silo loads its base model: CPU, one GPU, or several (accelerate device_map)."""

from __future__ import annotations

from typing import Any

import torch

from fl_ray.config import BaseModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_load_kwargs(spec: BaseModelSpec, gpus: int) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for a base on ``gpus`` GPUs (0: CPU)."""
    dtype: Any = "auto" if spec.dtype == "auto" else DTYPES[spec.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype}
    if gpus > 0:
        kwargs["device_map"] = "auto"
    return kwargs
