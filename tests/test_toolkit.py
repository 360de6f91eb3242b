"""fairdefense.toolkit: the helpers strategies share, checked against hand-computed values."""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import fairdefense
from fairdefense.metrics import ClassReport
from fairdefense.toolkit import (
    DeviceCache,
    WeightAverage,
    batch_mean_weights,
    check_options,
    pooled_mean,
    validation_counts,
)


class Opts:
    decay = 1.5
    begin = -1


def test_check_options_refuses_the_first_failed_check_naming_plugin_option_and_value():
    check_options("p", Opts(), [(True, "decay", "in [0, 1)")])
    with pytest.raises(fairdefense.PluginOptionError) as err:
        check_options("p", Opts(), [(True, "begin", ">= 0"), (False, "decay", "in [0, 1)"), (False, "begin", ">= 0")])
    assert str(err.value) == "plugin 'p': option 'decay' must be in [0, 1), got 1.5."


def test_every_builtin_strategy_refuses_out_of_range_options_when_its_options_are_built():
    """One style: the Options dataclass validates itself, whether built from Python values or CLI strings."""
    from fairdefense_plugins.cfa import CFA
    from fairdefense_plugins.frl import FRL
    from fairdefense_plugins.wat import WAT

    for plugin, key, value in [(FRL, "lim", "1.5"), (WAT, "eta", "-1"), (CFA, "decay", "1")]:
        with pytest.raises(fairdefense.PluginOptionError, match=f"plugin '{plugin.name}': option '{key}' must be"):
            plugin.from_options({key: value})
        with pytest.raises(fairdefense.PluginOptionError, match=f"option '{key}'"):
            plugin.Options(**{key: float(value)})


def test_weight_average_copies_first_then_decays_floats_and_keeps_integer_buffers_current():
    average = WeightAverage(0.75)
    assert average.weights is None and average.state() == {}
    average.update({"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(3)})
    average.update({"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(7)})
    assert_close(average.weights["w"], torch.tensor([3.0, 7.0]))  # 0.75 * old + 0.25 * new
    assert average.weights["n"].item() == 7
    restored = WeightAverage(0.75)
    restored.load_state(average.state())
    assert torch.equal(restored.weights["w"], average.weights["w"])


def report(counts, robust):
    c = len(counts)
    return ClassReport(
        class_names=[f"c{k}" for k in range(c)], counts=torch.tensor(counts),
        clean_acc=torch.ones(c, dtype=torch.float64), robust_acc={"pgd1": torch.tensor(robust, dtype=torch.float64)},
    )


def test_validation_counts_names_empty_classes_and_the_fix():
    assert validation_counts("p", report([2, 3], [0.5, 0.5])).tolist() == [2, 3]
    with pytest.raises(fairdefense.ConfigError, match=r"no sample of class\(es\) \['c1'\].*-o p.val_size=300"):
        validation_counts("p", report([2, 0], [0.5, 0.5]))


def test_pooled_mean_is_the_rate_over_all_samples():
    # class 0: 1 of 4 wrong, class 1: 3 of 6 wrong -> 4 of 10 overall
    assert_close(pooled_mean(torch.tensor([0.25, 0.5], dtype=torch.float64), torch.tensor([4, 6])),
                 torch.tensor(0.4, dtype=torch.float64))


def test_batch_mean_weights_turn_the_trainers_mean_into_the_weighted_mean():
    y = torch.tensor([0, 1, 1])
    term = torch.tensor([1.0, 2.0, 4.0])
    w = batch_mean_weights(torch.tensor([3.0, 1.0]), y)
    assert_close((w * term).mean(), torch.tensor((3 * 1.0 + 2.0 + 4.0) / 5))


def test_device_cache_copies_once_per_dtype_until_cleared():
    calls = []
    values = {"w": torch.tensor([0.5, 2.0], dtype=torch.float64)}

    def compute():
        calls.append(1)
        return values

    cache = DeviceCache(compute)
    half = cache.like(torch.zeros(1, dtype=torch.float16))
    assert half["w"].dtype == torch.float16 and half["w"].tolist() == [0.5, 2.0]
    assert cache.like(torch.zeros(3, dtype=torch.float16)) is half and len(calls) == 1
    assert cache.like(torch.zeros(1))["w"].dtype == torch.float32 and len(calls) == 2  # a second dtype: a second copy
    values["w"] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    assert cache.like(torch.zeros(1, dtype=torch.float16)) is half  # stale until cleared
    cache.clear()
    assert cache.like(torch.zeros(1, dtype=torch.float16))["w"].tolist() == [1.0, 1.0]
    plain = DeviceCache(lambda: torch.tensor([1.0], dtype=torch.float64))
    assert plain.like(torch.zeros(1)).dtype == torch.float32


def test_the_example_package_logs_the_weights_it_computes(tmp_path, monkeypatch):
    """The third-party example, written with the toolkit: weights from the line's own train stats."""
    import importlib.util
    import json
    import math
    import sys
    from pathlib import Path

    from torch import nn
    from torch.utils.data import TensorDataset

    path = Path(__file__).resolve().parents[1] / "examples/fairdefense-example-plugin/fairdefense_example_plugin.py"
    spec = importlib.util.spec_from_file_location("fairdefense_example_plugin", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look their module up
    spec.loader.exec_module(example)
    with pytest.raises(fairdefense.PluginOptionError, match="option 'temperature' must be > 0"):
        example.UpweightWeak(temperature=0)

    torch.manual_seed(0)
    data = TensorDataset(torch.rand(30, 4), torch.arange(30) % 3)
    config = fairdefense.TrainConfig(epochs=2, attack_steps=1, batch_size=30, device="cpu", eps=0.3)
    plugin = example.UpweightWeak(temperature=0.5)
    fairdefense.Trainer(nn.Linear(4, 3), data, ["a", "b", "c"], config, [plugin], run_dir=tmp_path, progress=False).fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(len(set(entry["train"]["robust_acc"])) > 1 for entry in lines)  # the classes differ: weights not uniform
    for entry in lines:
        errors = [1.0 - acc for acc in entry["train"]["robust_acc"]]
        z = sum(math.exp(e / 0.5) for e in errors)
        expected = [3 * math.exp(e / 0.5) / z for e in errors]
        assert entry["plugins"]["upweight-weak"]["class_weights"] == pytest.approx(expected)
