"""EMA plugin: exact averages over the full state_dict, state, exclusivity, end to end."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import fairdefense
from fairdefense.cli import main as cli_main
from fairdefense.toolkit import WeightAverage
from fairdefense_plugins.ema import EMA


def tiny_module() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def fill(module: nn.Module, offset: float) -> None:
    """Every floating entry of the state := 0.1 * index + offset; counters := 10 * offset."""
    with torch.no_grad():
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.copy_(0.1 * torch.arange(value.numel()).view_as(value) + offset)
            else:
                value.fill_(int(10 * offset))


def epoch_info(epoch: int, module: nn.Module) -> fairdefense.EpochInfo:
    run = fairdefense.RunInfo(2, ["a", "b"], fairdefense.TrainConfig(), torch.device("cpu"))
    return fairdefense.EpochInfo(epoch, 10, module, run, 0.1)


def test_exact_average_from_begin_over_the_full_state():
    module = tiny_module()
    base = tiny_module()
    fill(base, 0.0)
    base = base.state_dict()
    ema = EMA(decay=0.5, begin=1)
    host = fairdefense.PluginHost([ema])

    def end_epoch(epoch: int, offset: float):
        fill(module, offset)
        info = epoch_info(epoch, module)
        host.notify("on_epoch_end", epoch=info, train_stats=None)
        return host.weights_to_evaluate(info)

    assert end_epoch(0, 4.0) is None  # before begin: evaluate the trained weights
    expected_offsets = [(1, 2.0, 2.0), (2, 6.0, 4.0), (3, 0.0, 2.0)]  # copy, then (old + new) / 2
    for epoch, offset, average in expected_offsets:
        weights = end_epoch(epoch, offset)
        assert set(weights) == set(base)
        for key, value in weights.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, base[key] + average)
            else:  # BatchNorm's counter is not averaged: the current value
                assert value.item() == int(10 * offset)
    assert {"1.running_mean", "1.running_var"} <= set(weights)


def test_default_decay_and_no_aliasing():
    average = WeightAverage(0.88)
    state = {"w": torch.tensor([1.0, -2.0])}
    average.update(state)
    state["w"].add_(10.0)  # the stored copy must not follow the module
    torch.testing.assert_close(average.weights["w"], torch.tensor([1.0, -2.0]))
    average.update({"w": torch.tensor([3.0, 0.0])})
    torch.testing.assert_close(average.weights["w"], torch.tensor([0.88 + 0.36, -1.76]))
    assert EMA().options.decay == 0.88 and EMA().options.begin == 0


def test_state_round_trip():
    assert EMA().plugin_state() == {}
    module = tiny_module()
    fill(module, 1.5)
    ema = EMA()
    ema.on_epoch_end(epoch=epoch_info(0, module))
    buffer = io.BytesIO()
    torch.save(ema.plugin_state(), buffer)
    buffer.seek(0)
    restored = EMA()
    restored.load_plugin_state(torch.load(buffer, weights_only=True))
    fill(module, 3.0)
    for plugin in (ema, restored):
        plugin.on_epoch_end(epoch=epoch_info(1, module))
    a, b = ema.weights_to_evaluate(), restored.weights_to_evaluate()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_option_errors():
    with pytest.raises(fairdefense.PluginOptionError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(fairdefense.PluginOptionError, match="begin"):
        EMA.from_options({"begin": "-1"})


def test_refused_with_fawa_accepted_with_cfa_without_fawa():
    with pytest.raises(fairdefense.PluginError, match="exclusive hook 'weights_to_evaluate'"):
        fairdefense.PluginHost(["ema", "cfa"])
    host = fairdefense.PluginHost(["ema", "cfa"], {"cfa": {"fawa": "false"}})
    assert host.implements("weights_to_evaluate")


class Snapshots(fairdefense.FairnessPlugin):
    """Keeps a copy of the weights each epoch ended with."""

    name = "snapshots"

    def __init__(self) -> None:
        super().__init__()
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, epoch):
        self.states.append(copy.deepcopy(epoch.model.state_dict()))


def test_trains_end_to_end_from_python_and_evaluates_the_average():
    snapshots = Snapshots()
    result = fairdefense.train(
        plugins=["ema", snapshots], plugin_options={"ema": {"decay": "0.75"}}, epochs=2, attack_steps=1,
        batch_size=256, eval_attacks=("pgd5",), progress=False,
    )
    first, second = snapshots.states
    for key, value in result.eval_model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * first[key] + 0.25 * second[key])
    key = next(k for k, v in first.items() if v.is_floating_point())
    assert not torch.equal(first[key], second[key])  # the epochs differ: the average is not a copy


def test_trains_end_to_end_from_the_cli(tmp_path):
    code = cli_main([
        "train", "--plugin", "ema", "-o", "ema.decay=0.85", "--epochs", "1", "--attack-steps", "2",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert code == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(state["plugins"]["ema"]["average"]) == set(state["model"])
    assert state["eval_model"] is not None
