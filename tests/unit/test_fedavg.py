"""FedAvg against hand-computed values (no Ray)."""

import pytest
import torch

from fl_ray.strategies import aggregate, fedavg, weighted_mean


def test_fedavg_example_weighted_exact():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[0.0, 4.0]])}
    b = {"x": torch.tensor([3.0, 6.0]), "y": torch.tensor([[8.0, 0.0]])}
    result = fedavg({}, [a, b], [1, 3], {})
    merged, server = result.state, result.server_state
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5; (0 + 24)/4 = 6, (4 + 0)/4 = 1
    assert torch.equal(merged["x"], torch.tensor([2.5, 5.0]))
    assert torch.equal(merged["y"], torch.tensor([[6.0, 1.0]]))
    assert server == {}


def test_fedavg_keeps_dtype_and_accumulates_in_float64():
    a = {"x": torch.tensor([1.0], dtype=torch.bfloat16)}
    merged = weighted_mean([a, a, a], [1, 1, 1])
    assert merged["x"].dtype == torch.bfloat16 and merged["x"].item() == 1.0


def test_fedavg_via_registry_equal_weights():
    ups = [{"w": torch.full((2, 2), float(i))} for i in range(4)]
    merged = aggregate("fedavg", {}, {}, ups, [10, 10, 10, 10], {}).state
    assert torch.equal(merged["w"], torch.full((2, 2), 1.5))


@pytest.mark.parametrize(
    "updates,weights,message",
    [
        ([], [], "no updates"),
        ([{"x": torch.zeros(2)}, {"y": torch.zeros(2)}], [1, 1], "different tensor names"),
        ([{"x": torch.zeros(2)}, {"x": torch.zeros(3)}], [1, 1], "mixed LoRA ranks"),
        ([{"x": torch.zeros(2)}], [0], "positive sum"),
    ],
)
def test_fedavg_rejects_bad_input(updates, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_mean(updates, weights)


def test_unknown_strategy_names_choices():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*fedavg"):
        aggregate("nope", {}, {}, [{"x": torch.zeros(1)}], [1], {})
