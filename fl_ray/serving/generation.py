"""Text generation with transformers: the sampling controls of the OpenAI completions API.

``temperature`` 0 is greedy decoding (deterministic); above 0 it samples, nucleus-filtered by
``top_p`` (Holtzman et al., 2020). ``stop`` strings end generation and, as in the OpenAI API,
are not part of the returned text. ``max_tokens`` counts generated tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def context_limit(model: torch.nn.Module) -> int:
    """Tokens the model can attend over (prompt + completion)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    # No special tokens: training formats prompts the same way (fl_ray.data.tokenize_pairs).
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The conversation as the model was trained to read it: the chat template when the
    tokenizer has one, else ``role: content`` lines ending with ``assistant:``."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    params: SamplingParams,
) -> Generation:
    """Continue ``prompt_ids``; the caller has checked prompt + max_tokens fits the context."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.seed is not None:
            torch.manual_seed(params.seed)  # callers serialise requests, so this is per request
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if params.stop:
        # Early exit once a stop string appears; the text is cut at it below.
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
        )
    new_ids = output[0, len(prompt_ids) :].tolist()
    ended = tokenizer.eos_token_id is not None and tokenizer.eos_token_id in new_ids
    if ended:
        new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id)]
    text, stopped = cut_at_stop(tokenizer.decode(new_ids, skip_special_tokens=True), params.stop)
    return Generation(
        text=text,
        finish_reason="stop" if ended or stopped else "length",
        prompt_tokens=len(prompt_ids),
        completion_tokens=len(new_ids) + int(ended),
    )
