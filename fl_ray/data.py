"""Per-silo data: read with ``datasets`` from the silo's own files, tokenise, batch.

Runs only inside a silo. The Arrow cache goes under the silo's own data directory
(``<data_dir>/.cache``) rather than ``$HF_HOME``: cached tokens are data too, and must stay put.

``data.source: random_tokens`` replaces the files with the fedbench-tiny workload (DESIGN.md,
"fedbench-tiny"; ../shared/bench/): uniform random token ids drawn exactly as the peer scripts
draw them, loss on every token, consecutive batch windows -- for benchmarks, not for learning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import PreTrainedTokenizerBase

from fl_ray.config import DataSpec

IGNORE_INDEX = -100  # label value cross-entropy skips: prompt tokens carry no loss


@dataclass(frozen=True)
class TokenizedSplit:
    """Right-padded token ids with answer-only labels; never leaves the silo."""

    input_ids: torch.Tensor  # [n, seq]
    labels: torch.Tensor  # [n, seq], IGNORE_INDEX outside the answer
    attention_mask: torch.Tensor  # [n, seq]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def answer_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def read_split(data_dir: str | Path, spec: DataSpec, split_file: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from one split file, loaded with ``datasets``."""
    data_dir = Path(data_dir)
    builder = "json" if spec.format == "jsonl" else "parquet"
    ds = load_dataset(
        builder,
        data_files=str(data_dir / split_file),
        split="train",
        cache_dir=str(data_dir / ".cache"),
    )
    for field in (spec.prompt_field, spec.answer_field):
        if field not in ds.column_names:
            raise ValueError(f"{data_dir / split_file}: no field {field!r} ({ds.column_names})")
    return list(zip(ds[spec.prompt_field], ds[spec.answer_field], strict=True))


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The instruction as the model sees it: the chat template where the tokenizer has one."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{prompt}\n"


def tokenize_pairs(
    pairs: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> TokenizedSplit:
    """Prompt + answer + EOS, truncated/padded to ``seq_len``; loss on answer tokens only."""
    n = len(pairs)
    ids = torch.full((n, seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.long)
    for i, (prompt, answer) in enumerate(pairs):
        p_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        a_ids = a_ids + [tokenizer.eos_token_id]
        seq = (p_ids + a_ids)[:seq_len]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        start = min(len(p_ids), seq_len)
        labels[i, start : len(seq)] = ids[i, start : len(seq)]
    return TokenizedSplit(ids, labels, mask)


def load_silo_split(
    data_dir: str | Path,
    spec: DataSpec,
    split_file: str,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
) -> TokenizedSplit:
    return tokenize_pairs(read_split(data_dir, spec, split_file), tokenizer, seq_len)


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One batch of example indices, sampled without replacement from a seeded generator."""
    size = min(batch_size, n)
    return torch.randperm(n, generator=generator)[:size]


# Held-out sequences per silo in random_tokens mode: random ids carry nothing to learn, so the
# held-out loss only proves the evaluation path runs. The peers evaluate nothing; one sequence
# keeps fl_ray's per-round evaluation (~1/20 of a training step per silo) out of the comparison.
RANDOM_EVAL_SEQS = 1


def random_token_splits(
    seqs: int, seq_len: int, vocab_size: int, seed: int
) -> tuple[TokenizedSplit, TokenizedSplit]:
    """fedbench-tiny's data for one silo: (train, eval) splits of uniform random token ids.

    The train ids are exactly the peers' ``torch.randint(0, vocab, (seqs, seq_len),
    generator=torch.Generator().manual_seed(seed))``; the eval ids are the same generator's next
    draw, so adding them changes nothing the peers see. Labels are the ids themselves (the
    peers' ``labels=b``: loss on every token) and there is no padding.
    """
    gen = torch.Generator().manual_seed(seed)
    train_ids = torch.randint(0, vocab_size, (seqs, seq_len), generator=gen)
    eval_ids = torch.randint(0, vocab_size, (RANDOM_EVAL_SEQS, seq_len), generator=gen)
    return _unpadded(train_ids), _unpadded(eval_ids)


def _unpadded(ids: torch.Tensor) -> TokenizedSplit:
    # labels may alias the ids: nothing writes to either after creation
    return TokenizedSplit(ids, ids, torch.ones_like(ids))


def sequential_batch(n: int, batch_size: int, step: int) -> torch.Tensor:
    """Indices of the ``step``-th consecutive window, wrapping like the peers'
    ``off = step * batch % n; x[off:off + batch]`` (a window past the end is cut short)."""
    off = step * batch_size % n
    return torch.arange(off, min(off + batch_size, n))
