"""A tiny, deterministic demo base model + BPE tokenizer, built offline.

The tokenizer is a byte-level BPE (Hugging Face ``tokenizers``) trained only on the public corpus
shipped in ``fl_ray/corpus`` -- never on silo data, which must not leave its silo. The model is a
randomly initialised Llama (or Qwen2) causal LM seeded from ``seed``, saved as safetensors so
recipes can name it by local path exactly like a real 7B/70B checkpoint.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

Architecture = Literal["llama", "qwen2"]

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"]
# Jinja chat template in the usual HF form; training and serving both go through it.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}\n"
    "{% elif m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% else %}<|assistant|>{{ m['content'] }}<|eos|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def public_corpus_lines() -> list[str]:
    text = resources.files("fl_ray").joinpath("corpus/public_corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def build_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the shipped public corpus (deterministic for a fixed corpus)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(public_corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    arch: Architecture,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    seed: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    init_std: float = 0.02,
):
    common = dict(
        initializer_range=init_std,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    raise ValueError(f"unknown architecture {arch!r} (llama or qwen2)")


def build_demo_base(
    out_dir: str | Path,
    arch: Architecture = "llama",
    seed: int = 0,
    vocab_size: int = 2048,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 344,
    init_std: float = 0.1,
) -> Path:
    """Write tokenizer + model to ``out_dir``; the same arguments give byte-identical weights.

    ``init_std`` is above the usual 0.02 on purpose: with a random, frozen ``lm_head`` and
    final norm, a small init caps how peaked the output distribution can get, so a LoRA on the
    attention/MLP projections could barely learn anything.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    model = build_model(
        arch,
        len(tokenizer),
        hidden,
        layers,
        heads,
        intermediate,
        seed,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        init_std,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out
