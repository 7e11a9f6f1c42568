"""Exact LoRA merging and rank fitting.

Averaging A and B separately (FedAvg) gives (Σ wₖBₖ)(Σ wₖAₖ), which is not Σ wₖ·BₖAₖ, the
average of the silos' weight updates. ``exact`` merges the products instead, per LoRA module
(peft's ΔW = s·B·A with s = alpha/r; fl_ray keeps alpha/r fixed across ranks, see
``fl_ray.model.lora_config``, so s is common to all silos and products compare directly):

* ``mode: stack`` -- B = [√w₁B₁ … √w_KB_K], A = [√w₁A₁; …; √w_KA_K], so B·A = Σ wₖBₖAₖ
  exactly and the rank grows to Σ rₖ (FLoRA, Wang et al., 2024, "FLoRA: Federated Fine-Tuning
  Large Language Models with Heterogeneous Low-Rank Adaptations").
* ``mode: svd`` (default) -- the truncated SVD of Σ wₖBₖAₖ at the global adapter's rank r:
  exact when the product's rank is ≤ r (always when Σ rₖ ≤ r), otherwise the best rank-r
  approximation in Frobenius norm (Eckart–Young); ``info["truncation_rel_error"]`` records the
  largest ‖ΔW − ΔW_r‖_F/‖ΔW‖_F over modules.

Silos may have different ranks (mixed-rank federations): a silo of rank r loads the global
through :func:`fit_rank`, which keeps B·A as close as possible at rank r.

Factorisation convention for SVD outputs: A has orthonormal rows (Vᵀ) and B = U·S carries the
magnitudes, so no rank slot collapses to a zero pair of factors (which would receive no gradient).
Slots beyond the product's rank get a random A row (peft's Kaiming-uniform range) and a zero B
column: B·A is unchanged and the slot stays trainable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from fl_ray.model import AdapterState
from fl_ray.strategies.fedavg import MergeResult, normalised_weights, weighted_mean


def lora_pairs(state: AdapterState) -> list[tuple[str, str]]:
    """(A key, B key) for every LoRA module in ``state``, sorted."""
    pairs = []
    for a_key in sorted(k for k in state if ".lora_A." in k):
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        if b_key not in state:
            raise ValueError(f"LoRA module {a_key} has no matching {b_key}")
        pairs.append((a_key, b_key))
    return pairs


def _pad_rows(gen: torch.Generator, rows: int, in_features: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(in_features)  # peft's kaiming_uniform_(a=√5) range for lora_A
    return torch.empty(rows, in_features, dtype=torch.float64).uniform_(
        -bound, bound, generator=gen
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    # QR/SVD results change in the last bits with the BLAS/LAPACK thread count; one thread makes
    # the merge reproducible bitwise by a verifier or resume with another core count (same
    # torch build and CPU kind; other builds can still differ in the last bits).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def factor_product(
    b: torch.Tensor, a: torch.Tensor, rank: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-``rank`` factors (B', A') of the product b·a (float64), and the relative error.

    Computed without forming b·a: with b = Q_b·R_b and aᵀ = Q_a·R_a, b·a = Q_b·(R_b·R_aᵀ)·Q_aᵀ,
    so only the small core R_b·R_aᵀ needs an SVD.
    """
    b, a = b.double(), a.double()
    with _one_thread():
        q_b, r_b = torch.linalg.qr(b)
        q_a, r_a = torch.linalg.qr(a.T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        left, right = q_b @ u, q_a @ vh.T  # b·a = left · diag(s) · rightᵀ
    keep = min(rank, s.numel())
    new_b = left[:, :keep] * s[:keep]
    new_a = right[:, :keep].T
    if keep < rank:
        new_b = torch.cat([new_b, torch.zeros(b.shape[0], rank - keep, dtype=torch.float64)], 1)
        new_a = torch.cat([new_a, _pad_rows(gen, rank - keep, a.shape[1])], 0)
    total = float((s**2).sum())
    error = math.sqrt(float((s[keep:] ** 2).sum()) / total) if total > 0 else 0.0
    return new_b, new_a, error


def fit_rank(state: AdapterState, rank: int, seed: int = 0) -> AdapterState:
    """The adapter at LoRA rank ``rank``, with every module's B·A kept as close as possible.

    Same rank: returned unchanged (the same tensors). Lower original rank: A gains random rows
    and B zero columns, so B·A is exactly preserved. Higher: truncated SVD of B·A (the best
    rank-``rank`` approximation). Non-LoRA tensors pass through. Deterministic given ``seed``.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for a_key, b_key in lora_pairs(state):
        a, b = state[a_key], state[b_key]
        have = a.shape[0]
        if have == rank:
            continue
        if have < rank:
            new_a = torch.cat([a.double(), _pad_rows(gen, rank - have, a.shape[1])], 0)
            new_b = torch.cat([b.double(), torch.zeros(b.shape[0], rank - have).double()], 1)
        else:
            new_b, new_a, _ = factor_product(b, a, rank, gen)
        out[a_key], out[b_key] = new_a.to(a.dtype), new_b.to(b.dtype)
    return out


def exact(
    global_state: AdapterState,
    updates: Sequence[AdapterState],
    weights: Sequence[float],
    server_state: AdapterState,
    *,
    seed: int = 0,
    mode: str = "svd",
) -> MergeResult:
    """Merge so that each module's B·A equals Σ wₖ·BₖAₖ (w normalised); see the module doc."""
    if mode not in ("stack", "svd"):
        raise ValueError(f"strategy exact: mode must be 'stack' or 'svd', got {mode!r}")
    if not updates:
        raise ValueError("nothing to merge: no updates")
    norm = normalised_weights(weights)
    gen = torch.Generator().manual_seed(seed)
    pairs = lora_pairs(global_state)
    lora_keys = {k for pair in pairs for k in pair}
    merged: AdapterState = {}
    worst_error, ranks = 0.0, set()
    for a_key, b_key in pairs:
        bs, as_ = [], []
        for i, (w, update) in enumerate(zip(norm, updates, strict=True)):
            a, b = update[a_key], update[b_key]
            if a.shape[0] != b.shape[1]:
                raise ValueError(f"update {i}: {a_key} and {b_key} disagree on the LoRA rank")
            bs.append(math.sqrt(w) * b.double())
            as_.append(math.sqrt(w) * a.double())
        b_cat, a_cat = torch.cat(bs, 1), torch.cat(as_, 0)
        if mode == "svd":
            b_cat, a_cat, error = factor_product(b_cat, a_cat, global_state[a_key].shape[0], gen)
            worst_error = max(worst_error, error)
        merged[a_key] = a_cat.to(global_state[a_key].dtype)
        merged[b_key] = b_cat.to(global_state[b_key].dtype)
        ranks.add(int(a_cat.shape[0]))
    rest = sorted(set(global_state) - lora_keys)
    if rest:  # e.g. modules_to_save: plain weighted mean
        merged.update(weighted_mean([{k: u[k] for k in rest} for u in updates], weights))
    info = {"mode": mode, "rank": sorted(ranks)}
    if mode == "svd":
        info["truncation_rel_error"] = worst_error
    return MergeResult(merged, server_state, info)


__all__ = ["exact", "factor_product", "fit_rank", "lora_pairs"]
