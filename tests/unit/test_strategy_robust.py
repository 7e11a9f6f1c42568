"""Robust aggregation, generic clip_norm, parameter checks, and the attack scenario: one of five
silos scales its update ×100 (no Ray)."""

import pytest
import torch

from fl_ray.attacks import apply_attack
from fl_ray.config import AttackSpec
from fl_ray.coordinator import check_update
from fl_ray.silo import SiloUpdate
from fl_ray.strategies import aggregate, check_params, label_indices, weighted_mean
from fl_ray.strategies.robust import krum_scores


def scalars(*values):
    return [{"w": torch.tensor([float(v)])} for v in values]


def test_median_odd_and_even():
    assert aggregate("median", {}, {}, scalars(1, 10, 3), [1, 1, 1], {}).state["w"].item() == 3
    assert aggregate("median", {}, {}, scalars(1, 2, 3, 100), [5, 1, 1, 1], {}).state[
        "w"
    ].item() == pytest.approx(2.5)


def test_trimmed_mean_drops_beta_fraction_each_side():
    ups = scalars(100, 2, 3, 1, 4)  # sorted: 1 2 3 4 100; β=0.2 of 5 → drop 1 each side
    res = aggregate("trimmed_mean", {"beta": 0.2}, {}, ups, [1] * 5, {})
    assert res.state["w"].item() == 3.0 and res.info == {"trimmed_each_side": 1}
    assert aggregate("trimmed_mean", {"beta": 0.0}, {}, ups, [1] * 5, {}).state["w"].item() == 22
    with pytest.raises(ValueError, match="beta must be in"):
        aggregate("trimmed_mean", {"beta": 0.5}, {}, ups, [1] * 5, {})


def test_krum_scores_and_selection_hand_computed():
    ups = scalars(0, 1, 2, 4, 100)
    # f=1 → each score sums the 5−1−2 = 2 smallest squared distances to the others
    # 0: 1+4=5; 1: 1+1=2; 2: 1+4=5; 4: 4+9=13; 100: 96²+98²=18820
    assert krum_scores(ups, 1) == [5.0, 2.0, 5.0, 13.0, 18820.0]
    res = aggregate("krum", {"f": 1}, {}, ups, [1] * 5, {})
    assert res.state["w"].item() == 1.0
    assert res.info["krum_selected_indices"] == [1]
    multi = aggregate("multi_krum", {"f": 1, "m": 3}, {}, ups, [1] * 5, {})
    assert multi.state["w"].item() == 1.0  # mean of 0, 1, 2
    assert multi.info["krum_rejected_indices"] == [3, 4]
    default_m = aggregate("multi_krum", {"f": 1}, {}, ups, [1] * 5, {})  # m = n − f = 4
    assert default_m.info["krum_selected_indices"] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="needs at least 5 updates, got 4"):
        aggregate("krum", {"f": 1}, {}, ups[:4], [1] * 4, {})


def test_label_indices_names_silos():
    info = {"krum_selected_indices": [0, 2], "krum_scores": [1.0, 2.0, 3.0]}
    assert label_indices(info, ["a", "b", "c"]) == {
        "krum_selected": ["a", "c"],
        "krum_scores": [1.0, 2.0, 3.0],
    }


def test_clip_norm_option_of_any_strategy():
    glob = {"w": torch.tensor([1.0, 1.0])}
    ups = [{"w": torch.tensor([4.0, 5.0])}, {"w": torch.tensor([1.3, 1.4])}]  # deltas 5, 0.5
    res = aggregate("fedavg", {"clip_norm": 1.0}, glob, ups, [1, 1], {})
    # delta 0 → [3,4]/5 = [0.6, 0.8]; delta 1 unclipped [0.3, 0.4]; mean [0.45, 0.6]
    assert res.state["w"].tolist() == pytest.approx([1.45, 1.6], rel=1e-6)
    assert res.info == {"clip_norm_clipped_indices": [0]}
    med = aggregate("median", {"clip_norm": 0.1}, glob, ups, [1, 1], {})
    assert med.info["clip_norm_clipped_indices"] == [0, 1]


def test_check_params_names_the_problem():
    check_params("fedprox", {"mu": 0.01})
    check_params("fedadam", {"server_lr": 0.1, "clip_norm": 2.0})
    with pytest.raises(ValueError, match="fedavg: unknown parameter 'mu'"):
        check_params("fedavg", {"mu": 0.1})
    with pytest.raises(ValueError, match="dp: missing required parameter 'clip'"):
        check_params("dp", {"noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="clip_norm must be a positive number"):
        check_params("krum", {"clip_norm": -1})
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        check_params("nope", {})


def test_fedprox_merge_is_fedavg():
    ups = scalars(1, 3)
    res = aggregate("fedprox", {"mu": 0.1}, {}, ups, [1, 3], {})
    assert res.state["w"].item() == 2.5
    with pytest.raises(ValueError, match="mu must be >= 0"):
        aggregate("fedprox", {"mu": -1.0}, {}, ups, [1, 3], {})


# --- attack scenario ------------------------------------------------------------------------


def honest_updates(glob, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    common = {k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in glob.items()}
    return [
        {
            k: glob[k] + common[k] + 0.02 * torch.randn(v.shape, generator=gen)
            for k, v in glob.items()
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "name,params",
    [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1}), ("multi_krum", {"f": 1})],
)
def test_one_scaling_attacker_of_five(name, params):
    gen = torch.Generator().manual_seed(42)
    glob = {
        "lora_A": torch.randn(4, 16, generator=gen),
        "lora_B": torch.randn(16, 4, generator=gen),
    }
    honest = honest_updates(glob)
    clean = weighted_mean(honest, [1] * 5)
    attacked = list(honest)
    attacked[2] = apply_attack(AttackSpec(kind="scale", factor=100.0), honest[2], glob, seed=1)

    def dist(state):
        return sum(float((state[k] - clean[k]).norm() ** 2) for k in clean) ** 0.5

    spread = max(dist(u) for u in honest)  # how far any honest silo is from the clean merge
    fedavg = aggregate("fedavg", {}, glob, attacked, [1] * 5, {}).state
    assert dist(fedavg) > 50 * spread  # the attacker drags plain averaging far away

    robust = aggregate(name, params, glob, attacked, [1] * 5, {})
    # stated bound: every coordinate stays inside the honest silos' [min, max] envelope, so the
    # robust merge is no farther from the clean merge than the envelope's width
    for k in clean:
        stack = torch.stack([u[k] for u in honest])
        lo, hi = stack.min(0).values, stack.max(0).values
        assert ((robust.state[k] >= lo - 1e-6) & (robust.state[k] <= hi + 1e-6)).all()
    assert dist(robust.state) <= spread * 1.5
    if "krum" in name:
        assert 2 not in robust.info["krum_selected_indices"]


def test_nan_update_is_rejected_before_merging():
    glob = {"lora_A": torch.zeros(2, 3), "lora_B": torch.zeros(3, 2)}
    honest = {"lora_A": torch.ones(2, 3), "lora_B": torch.ones(3, 2)}
    poisoned = apply_attack(AttackSpec(kind="nan"), honest, glob, seed=0)
    update = SiloUpdate("health", 1, poisoned, num_examples=10)
    reason = check_update(update, 1, "health", glob, sorted(glob), same_shapes=True)
    assert reason == "non-finite values in lora_A"
    clean = SiloUpdate("health", 1, honest, num_examples=10)
    assert check_update(clean, 1, "health", glob, sorted(glob), same_shapes=True) is None
