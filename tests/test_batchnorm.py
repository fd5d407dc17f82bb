"""Precise BatchNorm statistics (wrcli.training.batchnorm): the equal-weight average of the batch statistics,
against an oracle that records each BatchNorm's inputs; nothing else changes; failures leave the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wrcli.training.batchnorm import reestimate, sample_batches


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.b, self.nb = nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return self.nb(self.b(torch.relu(self.na(self.a(x))) + shift))


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(3, 3, 6, 7, generator=g, dtype=torch.float64) * (k + 1), torch.full((1,), float(k), dtype=torch.float64))
            for k in range(n)]


def trained_net() -> Net:
    net = Net().double()
    net.train()
    with torch.no_grad():
        for x, s in batches(4):
            net(x * 0.3 + 1, s)  # running statistics from other data, as training leaves them
    return net.eval()


def oracle(net: Net, data: list) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm's inputs recorded batch by batch in training mode: mean over batches of the batch mean
    and of the unbiased batch variance per channel."""
    seen: dict[str, list[torch.Tensor]] = {"na": [], "nb": []}
    probe = copy.deepcopy(net).train()
    for name in seen:
        getattr(probe, name).register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].detach()))
    with torch.no_grad():
        for args in data:
            probe(*args)
    return {name: (torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0),
                   torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)) for name, xs in seen.items()}


def test_the_statistics_are_the_equal_weight_average_of_the_batch_statistics():
    net, data = trained_net(), batches(5)
    expected = oracle(net, data)
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    assert reestimate(net, data) == 5
    for name, (mean, var) in expected.items():
        norm = getattr(net, name)
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-12, atol=1e-12)
        assert norm.momentum == 0.1
    assert not net.training  # the mode it came in
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # parameters untouched


def test_a_model_in_training_mode_stays_in_it():
    net = trained_net().train()
    reestimate(net, batches(2))
    assert net.training


def test_no_batch_or_a_failing_batch_leaves_the_statistics_as_they_were():
    net = trained_net()
    before = copy.deepcopy(net.state_dict())
    assert reestimate(net, []) == 0
    good = batches(2)
    bad = (torch.randn(3, 7, 6, 7, dtype=torch.float64), good[0][1])  # wrong channel count: the conv raises

    with pytest.raises(RuntimeError):
        reestimate(net, [*good, bad])
    for k, v in before.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net.na.momentum == 0.1 and not net.training


def test_a_model_without_batchnorm_is_untouched():
    net = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    before = copy.deepcopy(net.state_dict())
    assert reestimate(net, [(torch.randn(1, 3, 4, 4),)]) == 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items()) and not net.training


def test_sample_batches_are_a_function_of_the_seed():
    drawn = lambda seed: list(sample_batches(Items(), 10, 3, 4, seed))
    first = drawn(5)
    assert first == drawn(5) and first != drawn(6)
    assert [len(b) for b in first] == [4, 4, 4] and all(0 <= i < 10 for b in first for i, _ in b)


class Items:
    """A dataset that returns its items: (index, sample seed)."""

    def __getitem__(self, item):
        return item
