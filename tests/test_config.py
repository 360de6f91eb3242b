"""Settings checked before any work: devices, data-loader workers."""
from __future__ import annotations

import pytest
import torch

from fairdefense.config import TrainConfig, resolve, select_device
from fairdefense.errors import ConfigError


def test_select_device_names_the_problem_and_the_fix(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'foo' is not a device name; use cpu, cuda"):
        select_device("foo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert select_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="asks for a GPU but torch sees none here; use --device cpu"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"sees 2 GPU\(s\), numbered 0..1"):
        select_device("cuda:2")


def test_negative_workers_refused():
    with pytest.raises(ConfigError, match=r"workers must be >= 0 .*got -1"):
        resolve(TrainConfig(workers=-1), {}, {}, (0.0, 1.0))
    assert resolve(TrainConfig(workers=0), {}, {}, (0.0, 1.0)).workers == 0


def test_a_single_name_is_a_list_of_one():
    config = TrainConfig.from_dict({"plugins": "bat", "eval_attacks": "pgd20", "milestones": 0.5})
    assert config.plugins == ("bat",) and config.eval_attacks == ("pgd20",) and config.milestones == (0.5,)
    assert TrainConfig.from_dict({"plugins": ["bat", "ema"]}).plugins == ("bat", "ema")


def test_validation_attack_is_the_family_and_the_steps():
    assert resolve(TrainConfig(), {}, {}, (0.0, 1.0)).validation_attack() == "pgd10"
    assert resolve(TrainConfig(val_steps=3), {}, {"val_attack": "trades"}, (0.0, 1.0)).validation_attack() == "trades3"
    with pytest.raises(ConfigError, match="val_attack must be one of \\['cw', 'pgd', 'trades'\\].*got 'kl'"):
        resolve(TrainConfig(val_attack="kl"), {}, {}, (0.0, 1.0))
