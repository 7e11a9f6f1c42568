"""DP-FedAvg (clipping, noise scale, determinism, resume) and the RDP accountant against
hand-computed values (no Ray)."""

import math

import pytest
import torch

from fl_ray.privacy import epsilon, rdp_gaussian, rdp_sampled_gaussian
from fl_ray.rundir import load_state, save_state
from fl_ray.strategies import aggregate
from fl_ray.strategies.clipping import clip_delta, state_norm
from fl_ray.strategies.dp import ROUNDS_KEY, dp_fedavg


def test_noise_std_is_z_c_over_m():
    # identical updates = global, so the merged change is pure noise: std must be z·C/m
    n = 200_000
    glob = {"a": torch.zeros(n // 2), "b": torch.zeros(n // 4, 2)}
    z, clip, m = 1.3, 0.5, 4
    res = dp_fedavg(glob, [glob] * m, [1] * m, {}, seed=11, clip=clip, noise_multiplier=z)
    noise = torch.cat([res.state[k].flatten().double() for k in sorted(glob)])
    assert noise.numel() >= 100_000
    expected = z * clip / m
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noise.mean())) < 5 * expected / math.sqrt(n)
    assert res.info["noise_std"] == pytest.approx(expected)


def test_clipping_and_mean_hand_computed_without_noise():
    glob = {"w": torch.tensor([1.0, 1.0])}
    ups = [{"w": torch.tensor([4.0, 5.0])}, {"w": torch.tensor([1.0, 1.5])}]  # deltas 5, 0.5
    res = dp_fedavg(glob, ups, [100, 1], {}, seed=0, clip=1.0, noise_multiplier=0.0)
    # [0.6, 0.8] and [0, 0.5], unweighted mean [0.3, 0.65]
    assert res.state["w"].tolist() == pytest.approx([1.3, 1.65], rel=1e-6)
    assert res.info["clipped_indices"] == [0]
    assert res.info["update_norms"] == pytest.approx([5.0, 0.5])
    assert res.info["epsilon"] == math.inf


def test_clipped_norms_never_exceed_c():
    gen = torch.Generator().manual_seed(3)
    clip = 0.7
    for i in range(300):
        scale = 10 ** (i / 50 - 3)  # norms from ~1e-3 to ~1e3
        delta = {"a": scale * torch.randn(7, 5, generator=gen, dtype=torch.float64)}
        delta["b"] = scale * torch.randn(5, 7, generator=gen, dtype=torch.float64)
        clipped, norm, cut = clip_delta(delta, clip)
        assert state_norm(clipped) <= clip * (1 + 1e-12)
        assert cut == (norm > clip)
    glob = {"w": torch.zeros(50)}
    ups = [{"w": 10 * torch.randn(50, generator=gen)} for _ in range(5)]
    res = dp_fedavg(glob, ups, [1] * 5, {}, seed=0, clip=clip, noise_multiplier=0.5)
    assert res.info["max_clipped_norm"] <= clip * (1 + 1e-12)
    assert res.info["clipped_indices"] == [0, 1, 2, 3, 4]


def test_noise_is_a_function_of_the_round_seed_only():
    glob = {"w": torch.zeros(1000)}
    kw = {"clip": 1.0, "noise_multiplier": 1.0}
    a = dp_fedavg(glob, [glob] * 2, [1, 1], {}, seed=5, **kw).state["w"]
    b = dp_fedavg(glob, [glob] * 2, [1, 1], {}, seed=5, **kw).state["w"]
    c = dp_fedavg(glob, [glob] * 2, [1, 1], {}, seed=6, **kw).state["w"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_epsilon_hand_computed_for_full_participation():
    # q=1: RDP(α) = T·α/(2z²). z=1, T=2, δ=e⁻⁹: ε(α) = α + 9/(α−1), minimised at α = 4
    # (1 − 9/(α−1)² = 0): ε = 4 + 3 = 7.
    eps, order = epsilon(1.0, 1.0, 2, math.exp(-9))
    assert eps == pytest.approx(7.0, abs=1e-12) and order == 4.0
    assert rdp_gaussian(3.0, 2.0) == 3 / 8


def test_sampled_gaussian_rdp_order_two_closed_form():
    # α=2: A₂ = (1−q)² + 2q(1−q) + q²·e^{1/z²} = 1 + q²(e^{1/z²} − 1)
    q, z = 0.1, 0.8
    assert rdp_sampled_gaussian(2, q, z) == pytest.approx(math.log1p(q * q * math.expm1(1 / z**2)))
    assert rdp_sampled_gaussian(5, 1.0, z) == rdp_gaussian(5, z)
    # sampling amplifies privacy
    assert epsilon(0.1, 1.0, 10, 1e-5)[0] < epsilon(1.0, 1.0, 10, 1e-5)[0]


def test_dp_reports_cumulative_epsilon_and_resumes_from_saved_rounds(tmp_path):
    glob = {"w": torch.zeros(10)}
    gen = torch.Generator().manual_seed(0)
    ups = [{"w": torch.randn(10, generator=gen)} for _ in range(3)]
    params = {"clip": 1.0, "noise_multiplier": 1.0, "delta": math.exp(-9)}
    r1 = aggregate("dp", params, glob, ups, [1] * 3, {}, seed=1)
    save_state(tmp_path / "s.safetensors", r1.server_state)
    server = load_state(tmp_path / "s.safetensors")
    assert server[ROUNDS_KEY].dim() == 0 and int(server[ROUNDS_KEY]) == 1
    r2 = aggregate("dp", params, r1.state, ups, [1] * 3, server, seed=2)
    assert r1.info["epsilon"] == pytest.approx(epsilon(1.0, 1.0, 1, math.exp(-9))[0])
    assert r2.info["epsilon"] == pytest.approx(7.0) and r2.info["dp_rounds"] == 2
    with pytest.raises(ValueError, match="clip norm must be positive"):
        aggregate("dp", {**params, "clip": 0}, glob, ups, [1] * 3, {})
