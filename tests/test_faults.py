"""Faults that must neither lose nor mix up data: inputs off the clip range, non-finite
gradients, a full disk, plugins passed as objects on resume, plugins that raise."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense import ConfigError, Trainer, TrainConfig

FAST = dict(attack_steps=1, batch_size=64, device="cpu", val_steps=1)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def data(n: int = 64, scale: float = 1.0, dtype=torch.float32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 4, generator=g) * scale).to(dtype)
    return TensorDataset(x, torch.arange(n) % 2)


# ---------------------------------------------------------------- inputs and clip
def test_trainer_refuses_pixels_on_the_255_scale_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"training data has values in \[.*\], outside .*clip=\(0, 1\).*by 255"):
        Trainer(mlp(), data(scale=255.0), ["a", "b"], TrainConfig(epochs=1, out=str(tmp_path / "run"), **FAST),
                progress=False)
    assert not (tmp_path / "run").exists()


def test_trainer_converts_float64_inputs_says_so_and_trains_as_on_float32():
    config = TrainConfig(epochs=1, **FAST)
    with pytest.warns(UserWarning, match="dtype float64.*converted to float32"):
        as64 = Trainer(mlp(), data(dtype=torch.float64), ["a", "b"], config, progress=False).fit()
    as32 = Trainer(mlp(), data(), ["a", "b"], config, progress=False).fit()
    for a, b in zip(as64.model.parameters(), as32.model.parameters()):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def art_trainer(clip_values):
    from art.estimators.classification import PyTorchClassifier

    from fairdefense.art import FairAdversarialTrainer

    model = mlp()
    clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), (4,), 2, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                            clip_values=clip_values)
    return FairAdversarialTrainer(clf, eps=0.1, eps_step=0.05, max_iter=1, num_random_init=0, progress=False)


def test_art_fit_refuses_inputs_outside_clip_values():
    x = (np.random.default_rng(0).random((16, 4)) * 255).astype(np.float32)
    trainer = art_trainer((0.0, 1.0))
    before = [p.detach().clone() for p in trainer.parts.module.parameters()]
    with pytest.raises(ConfigError, match=r"x has values in \[.*\], outside .*clip=\(0, 1\)"):
        trainer.fit(x, np.arange(16) % 2, nb_epochs=1, batch_size=8)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.parts.module.parameters()))


def test_trainer_threads_setting_is_applied_recorded_and_resumable(tmp_path):
    before = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        fairdefense.train(epochs=1, threads=1, out=str(out), progress=False, **FAST)
        assert torch.get_num_threads() == 1
        assert json.loads((out / "config.json").read_text())["threads"] == 1
        fairdefense.resume(out / "last.pt", epochs=2, threads=2, progress=False)
        assert torch.get_num_threads() == 2
        assert json.loads((out / "config.json").read_text())["threads"] == 2
        with pytest.raises(ConfigError, match="threads must be a whole number >= 1"):
            fairdefense.train(epochs=1, threads=0, progress=False, **FAST)
    finally:
        torch.set_num_threads(before)
