"""FedAdam / FedYogi / FedAdagrad against two hand-computed server steps, and resume of their
moments through the run directory's safetensors format (no Ray)."""

import math

import pytest
import torch

from fl_ray.rundir import load_state, save_state
from fl_ray.strategies import aggregate
from fl_ray.strategies.server_opt import STEP_KEY, fedadagrad, fedadam, fedyogi

X0 = {"w": torch.tensor([1.0, 2.0])}


def _two_steps(fn, delta1, delta2, **params):
    """Round 1: two silos (weights 1 and 3) whose weighted mean is x0 + delta1; round 2: x1 +
    delta2. Returns x1, x2 and the server state after round 2."""
    d1 = torch.tensor(delta1)
    target1 = X0["w"] + d1
    # weighted mean (1·u + 3·v)/4 = target1 with u = target1 + 3, v = target1 − 1
    ups1 = [{"w": target1 + 3.0}, {"w": target1 - 1.0}]
    r1 = fn(X0, ups1, [1, 3], {}, **params)
    target2 = r1.state["w"].double() + torch.tensor(delta2, dtype=torch.float64)
    r2 = fn(r1.state, [{"w": target2.float()}] * 2, [1, 3], r1.server_state, **params)
    return r1.state["w"], r2.state["w"], r2.server_state


def test_fedadam_two_steps_hand_computed():
    # η=0.5, β1=0.5, β2=0.75, τ=0.5: v0 = τ² = 0.25.
    # step 1, Δ=[0.5, -0.5]: m=[0.25,-0.25], v=0.75·0.25+0.25·0.25=0.25, √v+τ=1
    #   x1 = [1, 2] + 0.5·m = [1.125, 1.875]
    # step 2, Δ=[-0.5, -0.5]: m=0.5·m+0.5·Δ=[-0.125,-0.375], v=0.25, x2 = x1 + 0.5·m
    #   = [1.0625, 1.6875]
    x1, x2, server = _two_steps(
        fedadam, [0.5, -0.5], [-0.5, -0.5], server_lr=0.5, beta1=0.5, beta2=0.75, tau=0.5
    )
    assert torch.equal(x1, torch.tensor([1.125, 1.875]))
    assert torch.equal(x2, torch.tensor([1.0625, 1.6875]))
    assert torch.equal(server["m/w"], torch.tensor([-0.125, -0.375]))
    assert torch.equal(server["v/w"], torch.tensor([0.25, 0.25]))
    assert int(server[STEP_KEY]) == 2 and server[STEP_KEY].dim() == 0


def test_fedyogi_two_steps_hand_computed():
    # η=0.5, β1=0.5, β2=0.25, τ=0.5: v0 = 0.25.
    # step 1, Δ=[1,-1]: Δ²=1 > v0 so v = 0.25 + 0.75·1 = 1; m=[0.5,-0.5]
    #   x1 = x0 + 0.5·m/(1+0.5) = [1 + 1/6, 2 - 1/6]
    # step 2, Δ=[2,-0.5]: elem 0: Δ²=4 > 1 → v = 1 + 0.75·4 = 4; m = 0.25 + 1 = 1.25
    #   x2 = x1 + 0.5·1.25/(2+0.5) = x1 + 0.25
    #   elem 1: Δ²=0.25 < 1 → v = 1 − 0.75·0.25 = 0.8125 (Yogi shrinks v; Adam would give
    #   0.4375); m = -0.25 - 0.25 = -0.5; x2 = x1 − 0.25/(√0.8125 + 0.5)
    x1, x2, server = _two_steps(
        fedyogi, [1.0, -1.0], [2.0, -0.5], server_lr=0.5, beta1=0.5, beta2=0.25, tau=0.5
    )
    expect1 = [1 + 1 / 6, 2 - 1 / 6]
    expect2 = [expect1[0] + 0.25, expect1[1] - 0.25 / (math.sqrt(0.8125) + 0.5)]
    assert x1.tolist() == pytest.approx(expect1, rel=1e-6)
    assert x2.tolist() == pytest.approx(expect2, rel=1e-6)
    assert server["v/w"].tolist() == pytest.approx([4.0, 0.8125], rel=1e-6)


def test_fedadagrad_two_steps_hand_computed():
    # η=0.5, β1=0 (default), τ=0.75: v0 = 0.5625.
    # step 1, Δ=[1,-1]: v = 0.5625+1 = 1.5625 (=1.25²), x1 = x0 + 0.5·Δ/(1.25+0.75) = x0 ± 0.25
    # step 2, Δ=[3,-3]: v = 1.5625+9 = 10.5625 (=3.25²), x2 = x1 + 0.5·Δ/(3.25+0.75) = x1 ± 0.375
    x1, x2, server = _two_steps(fedadagrad, [1.0, -1.0], [3.0, -3.0], server_lr=0.5, tau=0.75)
    assert torch.equal(x1, torch.tensor([1.25, 1.75]))
    assert torch.equal(x2, torch.tensor([1.625, 1.375]))
    assert torch.equal(server["v/w"], torch.tensor([10.5625, 10.5625]))


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_state_survives_save_load_bitwise(name, tmp_path):
    gen = torch.Generator().manual_seed(0)
    glob = {"a": torch.randn(3, 5, generator=gen), "b": torch.randn(5, 3, generator=gen)}

    def updates(state, r):
        g = torch.Generator().manual_seed(r)
        return [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in state.items()}] * 3

    def step(state, server, r):
        res = aggregate(name, {"server_lr": 0.05}, state, updates(state, r), [1, 2, 3], server)
        return res.state, res.server_state

    straight, server = glob, {}
    for r in range(3):
        straight, server = step(straight, server, r)

    resumed, server = glob, {}
    for r in range(2):
        resumed, server = step(resumed, server, r)
    save_state(tmp_path / "server_state.safetensors", server)
    save_state(tmp_path / "global.safetensors", resumed)
    server = load_state(tmp_path / "server_state.safetensors")
    resumed = load_state(tmp_path / "global.safetensors")
    resumed, server_after = step(resumed, server, 2)

    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert int(server_after[STEP_KEY]) == 3


@pytest.mark.parametrize("bad", [{"server_lr": 0}, {"tau": -1}, {"beta1": 1.0}])
def test_server_opt_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match="fedadam needs"):
        fedadam(X0, [X0], [1], {}, **bad)


def test_server_opt_refuses_mixed_ranks():
    with pytest.raises(ValueError, match="mixed LoRA ranks need strategy exact"):
        aggregate("fedadam", {}, X0, [X0, {"w": torch.zeros(3)}], [1, 1], {})
