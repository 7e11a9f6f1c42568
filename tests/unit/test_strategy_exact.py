"""Exact LoRA merging (stack / svd), fit_rank, mixed ranks and FFA-LoRA: products checked to
1e-6 against Σ wₖ·Bₖ·Aₖ computed directly (no Ray)."""

import pytest
import torch

from fl_ray.strategies import MIXED_RANK_STRATEGIES, aggregate, fit_rank
from fl_ray.strategies.exact import exact, factor_product, lora_pairs
from fl_ray.strategies.ffa import ffa

MODULES = ("layers.0.q_proj", "layers.1.v_proj")
OUT, IN = 12, 10


def lora_state(rank, seed, modules=MODULES, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for m in modules:
        state[f"base_model.model.{m}.lora_A.weight"] = torch.randn(rank, IN, generator=gen) * scale
        state[f"base_model.model.{m}.lora_B.weight"] = torch.randn(OUT, rank, generator=gen) * scale
    return state


def products(state):
    return {a: state[b].double() @ state[a].double() for a, b in lora_pairs(state)}


def expected_products(updates, weights):
    total = sum(weights)
    per = [products(u) for u in updates]
    return {k: sum(w / total * p[k] for w, p in zip(weights, per, strict=True)) for k in per[0]}


def max_diff(p, q):
    return max(float((p[k] - q[k]).abs().max()) for k in p)


def test_fedavg_of_factors_is_not_the_average_update():
    # the reason `exact` exists: (ΣwB)(ΣwA) ≠ ΣwBA
    ups = [lora_state(4, 1), lora_state(4, 2)]
    factorwise = aggregate("fedavg", {}, lora_state(4, 0), ups, [1, 1], {}).state
    assert max_diff(products(factorwise), expected_products(ups, [1, 1])) > 1e-2


def test_stack_is_exact_and_rank_grows_to_the_sum_with_mixed_ranks():
    ups, weights = [lora_state(2, 1), lora_state(3, 2), lora_state(4, 3)], [1, 2, 3]
    res = exact(lora_state(8, 0), ups, weights, {}, mode="stack")
    assert max_diff(products(res.state), expected_products(ups, weights)) < 1e-6
    assert all(res.state[a].shape == (9, IN) for a, _ in lora_pairs(res.state))
    assert res.info == {"mode": "stack", "rank": [9]}


def test_svd_is_exact_when_summed_rank_fits_the_global_rank():
    ups, weights = [lora_state(2, 1), lora_state(3, 2)], [3, 1]
    res = exact(lora_state(8, 0), ups, weights, {}, mode="svd")
    assert max_diff(products(res.state), expected_products(ups, weights)) < 1e-6
    assert all(res.state[a].shape == (8, IN) for a, _ in lora_pairs(res.state))
    assert res.info["truncation_rel_error"] < 1e-6
    # the 3 padded slots stay trainable: nonzero A rows (B columns are zero)
    for a, _ in lora_pairs(res.state):
        assert (res.state[a].norm(dim=1) > 0).all()


def test_svd_gives_best_rank_r_approximation_when_summed_rank_exceeds_it():
    ups, weights = [lora_state(4, s) for s in (1, 2, 3)], [1, 1, 2]
    res = exact(lora_state(4, 0), ups, weights, {})  # default mode: svd
    target = expected_products(ups, weights)
    worst = 0.0
    for a, b in lora_pairs(res.state):
        u, s, vh = torch.linalg.svd(target[a])
        best = (u[:, :4] * s[:4]) @ vh[:4]  # Eckart–Young
        assert float((res.state[b].double() @ res.state[a].double() - best).abs().max()) < 1e-6
        worst = max(worst, float(s[4:].norm() / s.norm()))
        assert res.state[a].shape == (4, IN)
        # convention: A has orthonormal rows
        gram = res.state[a].double() @ res.state[a].double().T
        assert torch.allclose(gram, torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert res.info["truncation_rel_error"] == pytest.approx(worst, rel=1e-6)
    assert res.info["truncation_rel_error"] > 0.1


def test_exact_merges_non_lora_tensors_by_weighted_mean():
    ups = [{**lora_state(2, 1), "head.weight": torch.tensor([1.0])}]
    ups.append({**lora_state(2, 2), "head.weight": torch.tensor([3.0])})
    glob = {**lora_state(2, 0), "head.weight": torch.tensor([0.0])}
    res = exact(glob, ups, [1, 1], {}, mode="stack")
    assert res.state["head.weight"].item() == 2.0


def test_exact_rejects_bad_mode_and_rank_mismatch():
    with pytest.raises(ValueError, match="mode must be 'stack' or 'svd'"):
        exact(lora_state(2, 0), [lora_state(2, 1)], [1], {}, mode="cat")
    bad = lora_state(2, 1)
    key = next(k for k in bad if "lora_A" in k)
    bad[key] = torch.zeros(3, IN)
    with pytest.raises(ValueError, match="disagree on the LoRA rank"):
        exact(lora_state(2, 0), [bad], [1], {})


def test_mixed_ranks_exact_allowed_fedavg_refused():
    assert "exact" in MIXED_RANK_STRATEGIES and "fedavg" not in MIXED_RANK_STRATEGIES
    ups = [lora_state(2, 1), lora_state(4, 2)]
    with pytest.raises(ValueError, match="mixed LoRA ranks need strategy exact"):
        aggregate("fedavg", {}, lora_state(4, 0), ups, [1, 1], {})
    merged = aggregate("exact", {"mode": "svd"}, lora_state(4, 0), ups, [1, 1], {}).state
    assert all(merged[a].shape == (4, IN) for a, _ in lora_pairs(merged))


def test_fit_rank_same_rank_is_identity():
    state = lora_state(4, 1)
    fitted = fit_rank(state, 4)
    assert all(fitted[k] is state[k] for k in state)


def test_fit_rank_up_pads_exactly_and_down_truncates_optimally():
    state = lora_state(3, 1)
    up = fit_rank(state, 6, seed=7)
    assert max_diff(products(up), products(state)) < 1e-6
    for a, b in lora_pairs(up):
        assert up[a].shape == (6, IN) and up[b].shape == (OUT, 6)
        assert torch.equal(up[a][:3], state[a]) and torch.equal(up[b][:, :3], state[b])
        assert (up[a][3:].abs().sum(dim=1) > 0).all() and not up[b][:, 3:].any()
    again = fit_rank(state, 6, seed=7)
    assert all(torch.equal(up[k], again[k]) for k in up)  # deterministic

    big = lora_state(6, 2)
    down = fit_rank(big, 2)
    for a, b in lora_pairs(down):
        u, s, vh = torch.linalg.svd(big[b].double() @ big[a].double())
        best = (u[:, :2] * s[:2]) @ vh[:2]
        assert float((down[b].double() @ down[a].double() - best).abs().max()) < 1e-6
        assert down[a].shape == (2, IN) and down[a].dtype == big[a].dtype
    # a stacked global fitted back to the summed rank loses nothing
    ups = [lora_state(2, 3), lora_state(3, 4)]
    stacked = exact(lora_state(2, 0), ups, [1, 1], {}, mode="stack").state
    assert max_diff(products(fit_rank(stacked, 5)), products(stacked)) < 1e-6


def test_factor_product_handles_zero_product():
    b, a = torch.zeros(OUT, 3), torch.randn(3, IN)
    new_b, new_a, err = factor_product(b, a, 3, torch.Generator().manual_seed(0))
    assert not new_b.any() and (new_a.norm(dim=1) > 0).all() and err == 0.0


def test_ffa_merges_b_and_keeps_a_exact_under_averaging():
    glob = lora_state(4, 0)
    ups = [{k: v for k, v in lora_state(4, s).items() if "lora_B" in k} for s in (1, 2, 3)]
    weights = [1, 2, 5]
    res = aggregate("ffa", {}, glob, ups, weights, {})
    for a, b in lora_pairs(glob):
        assert torch.equal(res.state[a], glob[a])  # A copied from the global adapter
        want = sum(
            w / 8 * u[b].double() @ glob[a].double() for w, u in zip(weights, ups, strict=True)
        )
        got = res.state[b].double() @ res.state[a].double()
        assert float((got - want).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="carries A matrices"):
        ffa(glob, [lora_state(4, 1)], [1], {})


def test_merged_stacked_adapter_loads_into_peft_with_the_right_delta(tiny_base):
    """alpha/r is kept fixed across ranks, so a stacked global at rank Σrₖ loaded into peft
    gives ΔW = s·Σ wₖBₖAₖ with the same s every silo used."""
    from fl_ray.config import BaseModelSpec, LoraSpec
    from fl_ray.model import attach_lora, initial_adapter_state, load_base, set_adapter_state

    base, lora = (
        BaseModelSpec(path=str(tiny_base)),
        LoraSpec(r=4, alpha=8, target_modules=("q_proj",)),
    )
    ups = []
    for seed, rank in ((1, 2), (2, 4)):
        state = initial_adapter_state(base, lora, seed, r=rank)
        gen = torch.Generator().manual_seed(seed)
        ups.append({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in state.items()})
    merged = exact(initial_adapter_state(base, lora, 0), ups, [1, 3], {}, mode="stack").state
    model = attach_lora(load_base(base), lora, r=6)
    set_adapter_state(model, merged)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    scaling = layer.scaling["default"]
    assert scaling == pytest.approx(8 / 4)  # alpha/r = 8/4 at every rank
    key = next(k for k in merged if "layers.0.self_attn.q_proj.lora_A" in k)
    target = expected_products(ups, [1, 3])[key]
    assert (
        float((scaling * target - layer.get_delta_weight("default").detach().double()).abs().max())
        < 1e-6
    )


def test_svd_merge_is_bitwise_independent_of_thread_count():
    # a verifier or a resumed run may have another core count than the coordinator had; at
    # this size multi-threaded LAPACK differs from single-threaded in the last bits
    gen = torch.Generator().manual_seed(0)
    ups = []
    for _ in range(3):
        state = {}
        for m in range(4):
            state[f"m{m}.lora_A.weight"] = torch.randn(16, 1024, generator=gen)
            state[f"m{m}.lora_B.weight"] = torch.randn(1024, 16, generator=gen)
        ups.append(state)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(exact(ups[0], ups, [1, 2, 3], {}, seed=3).state)
            assert torch.get_num_threads() == threads  # restored after the merge
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
