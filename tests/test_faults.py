"""Faults that must neither lose nor mix up data: inputs off the clip range, non-finite
gradients, a full disk, plugins passed as objects on resume, plugins that raise."""
from __future__ import annotations

import json
import re
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


# ---------------------------------------------------------------- numeric faults
def run_until_fault(tmp_path, plugins, model=None):
    """Train 2 epochs into ``tmp_path/run``; return the error and the first epoch's weights."""
    from fairdefense.checkpoint import load_checkpoint

    after_one = {}

    class Snapshot(fairdefense.FairnessPlugin):
        name = "snapshot"

        def on_epoch_start(self, epoch):
            if epoch.epoch == 1:
                after_one.update({k: v.clone() for k, v in epoch.model.state_dict().items()})

    trainer = Trainer(model or mlp(), data(256), ["a", "b"], TrainConfig(epochs=2, out=str(tmp_path / "run"), **FAST),
                      [*plugins, Snapshot()], progress=False)
    with pytest.raises(fairdefense.NonFiniteLossError) as info:
        trainer.fit()
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["epoch"] == 1
    assert after_one and all(torch.equal(saved["model"][k], v) for k, v in after_one.items())
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    return info.value


def test_finite_loss_with_non_finite_gradients_stops_without_checkpointing_them(tmp_path):
    model = mlp()
    state = {"poison": False}
    model[3].weight.register_hook(lambda g: torch.full_like(g, float("nan")) if state["poison"] else g)

    class Poison(fairdefense.FairnessPlugin):
        name = "poison"

        def on_epoch_start(self, epoch):
            state["poison"] = epoch.epoch == 1

    error = run_until_fault(tmp_path, [Poison()], model)
    assert (error.epoch, error.batch) == (2, 1)
    assert "weights became non-finite at epoch 2, batch 1 although the loss was finite" in str(error)
    assert "last good checkpoint is kept" in str(error) and "Lower the learning rate" in str(error)


def test_plugin_weights_overflowing_the_loss_are_named_with_hook_epoch_and_batch(tmp_path):
    class Explode(fairdefense.FairnessPlugin):
        name = "explode"

        def reweight(self, batch, outputs):
            w = 3e38 if (batch.epoch, batch.index) == (1, 2) else 1.0
            return fairdefense.LossWeights(robust=torch.full((len(batch.y),), w))

    error = run_until_fault(tmp_path, [Explode()])
    assert (error.epoch, error.batch) == (2, 3)
    assert "non-finite at epoch 2, batch 3 through plugin 'explode', hook 'reweight'" in str(error)


def test_extra_losses_overflowing_the_loss_are_named_with_hook_epoch_and_batch(tmp_path):
    def big(name_):
        class Big(fairdefense.FairnessPlugin):
            name = name_

            def extra_loss(self, batch, outputs):
                return torch.tensor(2e38 if batch.epoch == 1 else 0.0)

        return Big()

    error = run_until_fault(tmp_path, [big("big1"), big("big2")])
    assert (error.epoch, error.batch) == (2, 1)
    assert "through plugin 'big1', 'big2', hook 'extra_loss'" in str(error)


# ---------------------------------------------------------------- a full disk
def full_disk_at_epoch_two(fail):
    """A plugin that calls ``fail`` (filling the disk) when epoch 2 starts for the first time."""

    class FillDisk(fairdefense.FairnessPlugin):
        name = "fill-disk"
        filled = False

        def on_epoch_start(self, epoch):
            if epoch.epoch == 1 and not self.filled:
                self.filled = True
                fail()

    return FillDisk()


@pytest.mark.parametrize("where", ["history", "checkpoint"])
def test_a_full_disk_says_so_keeps_the_previous_files_and_the_run_resumes(tmp_path, monkeypatch, where):
    import errno

    from fairdefense import checkpoint
    from fairdefense.checkpoint import load_checkpoint

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def torch_writer_fails(*args, **kwargs):  # how torch.save reports it, here with the OSError chained
        try:
            no_space()
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0") from exc

    def fail():
        if where == "history":
            monkeypatch.setattr(checkpoint.os, "fsync", no_space)
        else:
            monkeypatch.setattr(checkpoint.torch, "save", torch_writer_fails)

    out = tmp_path / "run"
    plugin = full_disk_at_epoch_two(fail)
    config = TrainConfig(epochs=2, out=str(out), **FAST)
    with pytest.raises(fairdefense.DiskFullError, match=r"cannot write .*the disk holding .*run' is full.*"
                                                        r"The previous .* is intact.*--resume .*last\.pt"):
        Trainer(mlp(), data(128), ["a", "b"], config, [plugin], progress=False).fit()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == (
        [1] if where == "history" else [1, 2])
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()
    monkeypatch.undo()

    trainer = Trainer(mlp(), data(128), ["a", "b"], config, [plugin], progress=False)
    trainer.restore(out / "last.pt")
    resumed = trainer.fit()
    straight = Trainer(mlp(), data(128), ["a", "b"], TrainConfig(epochs=2, out=str(tmp_path / "b"), **FAST), [plugin],
                       progress=False).fit()  # the plugin has filled the disk once: it does nothing now
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------- plugin objects on resume
RESUME = dict(FAST, schedule="constant", eval_attacks=("pgd2",), threads=1)  # same float sums in every run


def test_resume_rebuilds_a_plugin_object_with_its_recorded_options(tmp_path):
    from fairdefense_plugins.ema import EMA

    from fairdefense.checkpoint import load_checkpoint
    from fairdefense.cli import main

    out, straight = tmp_path / "run", tmp_path / "straight"
    fairdefense.train(epochs=1, plugins=[EMA(decay=0.5)], out=str(out), progress=False, **RESUME)
    assert json.loads((out / "config.json").read_text())["plugin_options"]["ema"]["decay"] == 0.5
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--threads", "1", "--no-progress"]) == 0
    fairdefense.train(epochs=2, plugins=[EMA(decay=0.5)], out=str(straight), progress=False, **RESUME)
    resumed, expected = load_checkpoint(out / "last.pt"), load_checkpoint(straight / "last.pt")
    assert resumed["config"]["plugin_options"]["ema"] == expected["config"]["plugin_options"]["ema"]
    for key, value in expected["eval_model"].items():  # default decay 0.88 would give other averaged weights
        torch.testing.assert_close(resumed["eval_model"][key], value, rtol=0, atol=0)


class LocalOnly(fairdefense.FairnessPlugin):
    """A user's own plugin, not installed: it weights class 1's robust loss by ``factor``."""

    name = "local-only"

    @__import__("dataclasses").dataclass
    class Options:
        factor: float = 1.0

    def reweight(self, batch, outputs):
        return fairdefense.LossWeights(robust=1.0 + (self.options.factor - 1.0) * (batch.y == 1).float())


def test_a_plugin_object_that_is_not_installed_is_taken_again_by_the_python_api(tmp_path, capsys):
    from fairdefense.checkpoint import load_checkpoint
    from fairdefense.cli import main

    out, straight = tmp_path / "run", tmp_path / "straight"
    fairdefense.train(epochs=1, plugins=[LocalOnly(factor=2.0)], out=str(out), progress=False, **RESUME)
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--threads", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "passed as objects and not installed: 'local-only' with options {'factor': 2.0}" in err
    assert "cannot rebuild them by name" in err and "fairdefense.resume(" in err
    with pytest.raises(ConfigError, match=r"'local-only' was given with options \{'factor': 3.0\}.*\{'factor': 2.0\}"):
        fairdefense.resume(out / "last.pt", epochs=2, plugins=[LocalOnly(factor=3.0)], progress=False)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1 and (out / "metrics.jsonl").read_text() == before

    fairdefense.resume(out / "last.pt", epochs=2, plugins=[LocalOnly(factor=2.0)], progress=False)
    fairdefense.train(epochs=2, plugins=[LocalOnly(factor=2.0)], out=str(straight), progress=False, **RESUME)
    resumed, expected = load_checkpoint(out / "last.pt"), load_checkpoint(straight / "last.pt")
    for key, value in expected["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)


# ---------------------------------------------------------------- plugins, splits, weights
def test_a_plugin_hook_that_raises_is_named_with_the_original_chained(tmp_path):
    class Broken(fairdefense.FairnessPlugin):
        name = "broken"

        def on_epoch_end(self, epoch, train_stats):
            return {"ratio": 1 / 0}

    out = tmp_path / "run"
    trainer = Trainer(mlp(), data(), ["a", "b"], TrainConfig(epochs=1, out=str(out), **FAST), [Broken()],
                      progress=False)
    with pytest.raises(fairdefense.PluginError, match=r"plugin 'broken', hook 'on_epoch_end' raised "
                                                      r"ZeroDivisionError: division by zero") as info:
        trainer.fit()
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert not (out / "metrics.jsonl").exists() and fairdefense.checkpoint.load_checkpoint(out / "last.pt")["epoch"] == 0


@pytest.mark.parametrize("plugins, select_best, who", [((), True, "select_best"),
                                                        (("cfa",), False, "plugin 'cfa' \\(on_validation\\)")])
def test_a_validation_split_without_every_class_says_how_many_are_needed(plugins, select_best, who):
    two_per_class = TensorDataset(torch.rand(4, 4), torch.tensor([0, 1, 0, 1]))
    config = TrainConfig(epochs=1, select_best=select_best, val_size=0.1, attack_steps=1, device="cpu")
    with pytest.raises(ConfigError, match=rf"val_size=0.1 holds out no sample of class\(es\) \['a', 'b'\] \(the "
                                          rf"smallest has 2 samples\), but {who} needs at least 1 validation sample "
                                          rf"per class: use val_size=1 or more .* or a fraction of at least 0.25"):
        Trainer(mlp(), two_per_class, ["a", "b"], config, plugins, progress=False)


def test_frl_with_a_class_without_training_samples_says_so_not_to_raise_val_size():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"class\(es\) \['c'\] have no training samples, but plugin 'frl' "
                                          r"\(on_validation\) scores every class.*at least 2 samples.*drop them from "
                                          r"class_names") as info:
        Trainer(model, data(8), ["a", "b", "c"], TrainConfig(epochs=1, val_size=1, device="cpu"), ["frl"],
                progress=False)
    assert "raise val_size" not in str(info.value)


def test_init_with_another_architecture_lists_the_first_keys(tmp_path):
    from fairdefense.trainer import load_weights

    other = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2),
                          nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"do not fit this model .*: unexpected keys \(10\): 5\.weight, 5\.bias, "
                                          r"6\.weight, 6\.bias and 6 more; shapes differ \(2\): 3\.weight \(8, 8\) vs "
                                          r"\(2, 8\), 3\.bias \(8,\) vs \(2,\)\. Pass weights of the same --model"):
        load_weights(mlp(), tmp_path / "w.pt")


def test_a_fine_tuning_run_resumes_after_its_starting_checkpoint_moved(tmp_path):
    base = tmp_path / "base"
    fairdefense.train(epochs=1, out=str(base), progress=False, **RESUME)
    start = str(base / "last.pt")
    straight = fairdefense.train(epochs=2, init=start, out=str(tmp_path / "straight"), progress=False, **RESUME)
    fairdefense.train(epochs=1, init=start, out=str(tmp_path / "ft"), progress=False, **RESUME)
    (base / "last.pt").rename(tmp_path / "moved.pt")
    resumed = fairdefense.resume(tmp_path / "ft", epochs=2, progress=False)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init"] == start
    with pytest.raises(ConfigError, match="does not exist"):  # a new run from it still needs the file
        fairdefense.train(epochs=1, init=start, out=str(tmp_path / "again"), progress=False, **RESUME)


def test_init_and_resume_given_a_folder(tmp_path, capsys):
    from fairdefense.cli import main

    out = tmp_path / "run"
    fairdefense.train(epochs=1, out=str(out), progress=False, **RESUME)
    assert main(["train", "--init", str(out), "--threads", "1", *["--epochs", "1", "--no-progress"],
                 "--out", str(tmp_path / "b")]) == 2
    assert re.search(r"'.*run' is a folder; pass a checkpoint file in it: .*last\.pt\.", capsys.readouterr().err)
    assert not (tmp_path / "b" / "last.pt").exists()
    result = fairdefense.resume(out, epochs=2, progress=False)  # a run folder resumes from its last.pt
    assert [e["epoch"] for e in result.history] == [1, 2]
