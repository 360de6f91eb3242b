"""The trainer: hook order, resume equivalence, checkpoints, interruption, bad input."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense import ConfigError, FairnessPlugin, LossWeights, NonFiniteLossError, Trainer, TrainConfig
from fairdefense.api import build_trainer
from fairdefense.checkpoint import load_checkpoint, save_checkpoint
from fairdefense.errors import MissingDependencyError, require
from fairdefense.reports import read_history
from fairdefense.run_folder import LOCK, RunFolder

FAST = dict(attack_steps=1, batch_size=512, device="cpu", val_steps=1)


class Recorder(FairnessPlugin):
    """Implements every hook and records the calls."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.calls = []

    def configure(self, config, run):
        self.calls.append("configure")

    def on_epoch_start(self, epoch):
        self.calls.append("on_epoch_start")

    def remargin(self, batch):
        self.calls.append("remargin")

    def select_examples(self, batch, record):
        self.calls.append("select_examples")

    def perturb_weights(self, batch, x_adv):
        self.calls.append("perturb_weights")

    def reweight(self, batch, outputs):
        self.calls.append("reweight")

    def extra_loss(self, batch, outputs):
        self.calls.append("extra_loss")

    def on_epoch_end(self, epoch, train_stats):
        self.calls.append("on_epoch_end")

    def on_validation(self, epoch, report):
        self.calls.append("on_validation")

    def weights_to_evaluate(self, epoch):
        self.calls.append("weights_to_evaluate")

    def plugin_state(self):
        self.calls.append("plugin_state")

    def load_plugin_state(self, state):
        self.calls.append("load_plugin_state")


def test_hook_call_order_for_one_epoch(tmp_path):
    rec = Recorder()
    build_trainer(TrainConfig(epochs=1, out=str(tmp_path), **FAST), [rec], progress=False).fit()
    per_batch = ["remargin", "select_examples", "perturb_weights", "reweight", "extra_loss"]
    n_batches = rec.calls.count("remargin")
    assert n_batches == 3  # 1,293 training images after the 10% validation split, batches of 512
    assert rec.calls == (
        ["configure", "plugin_state", "on_epoch_start"] + per_batch * n_batches
        + ["on_epoch_end", "on_validation", "weights_to_evaluate", "plugin_state"]
    )


def test_validation_is_computed_once_per_epoch_whatever_the_number_of_readers(monkeypatch):
    import fairdefense.trainer as trainer_module

    calls = []
    real = trainer_module.evaluate
    monkeypatch.setattr(trainer_module, "evaluate", lambda *a, **k: calls.append(a[3]) or real(*a, **k))

    class Reader(FairnessPlugin):
        def on_validation(self, epoch, report):
            self.seen = report

    a, b = Reader(), Reader()
    a.name, b.name = "reader-a", "reader-b"
    build_trainer(TrainConfig(epochs=1, eval_every=0, **FAST), [a, b], progress=False).fit()
    assert calls == [["pgd1"], ("pgd20",)]  # one validation pass, then the final test evaluation
    assert a.seen is b.seen


class Stateful(FairnessPlugin):
    """Weights the robust loss by a state that changes every batch; interrupts once on request."""

    name = "stateful"

    @dataclass
    class Options:
        interrupt_at_epoch: int = -1

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = torch.zeros(10)

    def on_epoch_start(self, epoch):
        if epoch.epoch == self.options.interrupt_at_epoch:
            raise KeyboardInterrupt

    def reweight(self, batch, outputs):
        self.seen += torch.bincount(batch.y, minlength=10)
        w = 1.0 + self.seen / self.seen.sum()
        return LossWeights(robust=w[batch.y])

    def plugin_state(self):
        return {"seen": self.seen.clone()}

    def load_plugin_state(self, state):
        self.seen = state["seen"].clone()


def test_resume_continues_exactly(tmp_path):
    config = dict(epochs=2, objective="trades", **FAST)
    plugin = Stateful()
    straight = build_trainer(TrainConfig(out=str(tmp_path / "a"), **config), [plugin], progress=False).fit()

    interrupted = build_trainer(TrainConfig(out=str(tmp_path / "b"), **config), [Stateful(interrupt_at_epoch=1)], progress=False)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1  # Ctrl-C left a resumable checkpoint

    resumed = build_trainer(TrainConfig(out=str(tmp_path / "b"), **config), [Stateful()], progress=False)
    resumed.restore(tmp_path / "b" / "last.pt")
    result = resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), result.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.host.plugins["stateful"].seen, plugin.seen)
    assert [e["loss"] for e in result.history] == [e["loss"] for e in straight.history]


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["format"] == 1
    assert {"model", "optimizer", "scheduler", "rng", "plugins", "config", "versions", "data"} <= set(state)
    assert state["config"]["eps"] == 0.2 and state["versions"]["torch"] == torch.__version__
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Explode(FairnessPlugin):
        name = "explode"

        def reweight(self, batch, outputs):
            w = 3e38 if batch.epoch == 1 else 1.0
            return LossWeights(robust=torch.full((len(batch.y),), w))

    trainer = build_trainer(TrainConfig(epochs=2, out=str(tmp_path), **FAST), [Explode()], progress=False)
    with pytest.raises(NonFiniteLossError, match="at epoch 2, batch 1") as info:
        trainer.fit()
    assert (info.value.epoch, info.value.batch) == (2, 1)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_fine_tuning_from_checkpoint_or_plain_state_dict(tmp_path):
    result = fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path / "run"), **FAST), progress=False)
    torch.save(result.model.state_dict(), tmp_path / "plain.pt")
    for source in (tmp_path / "run" / "last.pt", tmp_path / "plain.pt"):
        trainer = build_trainer(TrainConfig(epochs=1, init=str(source), **FAST), progress=False)
        for a, b in zip(trainer.model.state_dict().values(), result.model.state_dict().values()):
            assert torch.equal(a, b)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="do not fit this model"):
        build_trainer(TrainConfig(epochs=1, init=str(tmp_path / "other.pt"), **FAST), progress=False)


def test_learning_rate_schedules():
    def lrs(schedule, epochs=4):
        t = build_trainer(TrainConfig(epochs=epochs, lr=0.1, schedule=schedule, **FAST), progress=False)
        out = []
        for _ in range(epochs):
            out.append(t.optimizer.param_groups[0]["lr"])
            t.optimizer.step()
            t.scheduler.step()
        return out

    assert lrs("multistep") == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lrs("cosine") == pytest.approx([0.1 * (1 + torch.cos(torch.tensor(torch.pi * e / 4)).item()) / 2 for e in range(4)])
    assert lrs("constant") == pytest.approx([0.1] * 4)


def tiny_data(labels):
    return TensorDataset(torch.rand(len(labels), 1, 8, 8), torch.tensor(labels))


def test_labels_outside_the_classes_are_refused():
    model = fairdefense.create_model("small_cnn", 3, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"labels must lie in 0..2.*found 0..3"):
        Trainer(model, tiny_data([0, 1, 3]), ["a", "b", "c"], TrainConfig(**FAST), progress=False)


def test_model_output_width_must_match_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ConfigError, match=r"outputs shape \(5,\).*3 classes"):
        Trainer(model, tiny_data([0, 1, 2]), ["a", "b", "c"], TrainConfig(**FAST), progress=False)


@pytest.mark.parametrize("eps, message", [(0.0, "eps must be > 0"), (-0.1, "eps must be > 0"), (1.0, "not smaller than the input range")])
def test_eps_out_of_range(eps, message):
    with pytest.raises(ConfigError, match=message):
        build_trainer(TrainConfig(eps=eps, **FAST), progress=False)


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'fairdefense\[test\]'"):
        require("a_module_that_is_not_installed", "test", "The FAAL solver check")


def test_mixed_precision_and_channels_last_train_on_cpu():
    result = fairdefense.train(TrainConfig(epochs=1, amp="bf16", channels_last=True, **FAST), progress=False)
    assert result.history[0]["images_per_s"] > 0
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    with pytest.raises(ConfigError, match="amp must be"):
        build_trainer(TrainConfig(amp="fp8", **FAST), progress=False)


def test_validate_first_validates_the_initial_model_once_before_training():
    class Reader(FairnessPlugin):
        name = "reader"

        def __init__(self):
            super().__init__()
            self.epochs = []

        def configure(self, config, run):
            return {"validate_first": True}

        def on_validation(self, epoch, report):
            self.epochs.append(epoch.epoch)

    reader = Reader()
    build_trainer(TrainConfig(epochs=2, eval_every=0, **FAST), [reader], progress=False).fit()
    assert reader.epochs == [-1, 0, 1]


def test_select_best_scores_the_weights_that_would_be_exported(tmp_path):
    class Halve(FairnessPlugin):
        """Supplies evaluation weights that differ from the trained ones."""

        name = "halve"

        def weights_to_evaluate(self, epoch):
            return {k: v / 2 if v.is_floating_point() else v for k, v in epoch.model.state_dict().items()}

    result = build_trainer(TrainConfig(epochs=2, select_best=True, eval_every=0, out=str(tmp_path), **FAST), [Halve()],
                           progress=False).fit()
    scores = []
    for entry in result.history:
        acc = fairdefense.ClassReport.from_dict(entry["val_eval_weights"]).summary()["pgd1/robust_acc"]
        assert entry["val_score"] == pytest.approx(acc["avg"] + acc["worst"])
        scores.append(entry["val_score"])
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == result.best_epoch == 1 + scores.index(max(scores))


def test_how_often_the_test_split_is_scored_does_not_change_training():
    a = fairdefense.train(TrainConfig(epochs=2, eval_every=1, **FAST), progress=False)
    b = fairdefense.train(TrainConfig(epochs=2, eval_every=0, **FAST), progress=False)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)


# ----------------------------------------------------------------- the run folder
def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)
    first = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run .*--resume .*last.pt.*--overwrite"):
        fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == first  # nothing appended, nothing replaced
    assert not (tmp_path / LOCK).exists()

    fairdefense.resume(tmp_path / "last.pt", epochs=2, progress=False)  # continuing is allowed
    assert [e["epoch"] for e in read_history(tmp_path)] == [1, 2]

    (tmp_path / "report.md").write_text("old report")
    fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False, overwrite=True)
    assert [e["epoch"] for e in read_history(tmp_path)] == [1]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1 and not (tmp_path / "report.md").exists()


def test_config_out_is_the_run_folder_of_a_trainer(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    labels = [0, 1, 2] * 4
    Trainer(model, tiny_data(labels), ["a", "b", "c"], TrainConfig(epochs=1, out=str(tmp_path), **FAST),
            progress=False).fit()
    assert {"config.json", "metrics.jsonl", "last.pt"} <= {p.name for p in tmp_path.iterdir()}


def test_a_folder_in_use_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "run_id": None,
                                                 "started": "2026-01-01T00:00:00"}))
        with pytest.raises(ConfigError, match=rf"in use by another training: process {holder.pid} on "):
            fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # a write killed midway
    fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)  # stale lock taken over
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / LOCK).exists()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_history_lines_are_strict_json_and_a_cut_last_line_is_reported(tmp_path):
    folder = RunFolder(tmp_path)
    folder.append_history({"epoch": 1, "test": {"clean_acc": [0.5, float("nan")]}})
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1, "test": {"clean_acc": [0.5, null]}}\n'
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "te')  # a line cut by a crash (an older version appended in place)
    with pytest.warns(UserWarning, match="last line .2. is damaged"):
        assert [e["epoch"] for e in folder.read_history()] == [1]
    with pytest.warns(UserWarning):
        folder.append_history({"epoch": 2})
    assert [e["epoch"] for e in folder.read_history()] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1\n{"epoch": 2}\n')
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        folder.read_history()


def test_resume_refuses_contradicting_settings_and_a_finished_run_alike_in_cli_and_api(tmp_path, capsys):
    from fairdefense.cli import main

    fairdefense.train(TrainConfig(epochs=1, out=str(tmp_path), **FAST), progress=False)
    ckpt = str(tmp_path / "last.pt")
    assert main(["train", "--resume", ckpt, "--plugin", "bat", "--lr", "5", "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "plugins=('bat',) (the run has [])" in err and "lr=5.0 (the run has" in err
    with pytest.raises(ConfigError, match=r"contradict it: lr=5\.0 \(the run has"):
        fairdefense.resume(ckpt, lr=5.0, epochs=2, progress=False)
    with pytest.raises(ConfigError, match=r"done all 1 epochs of its run: nothing to do. Extend it with --epochs"):
        fairdefense.resume(ckpt, progress=False)
    assert [e["epoch"] for e in read_history(tmp_path)] == [1]  # refused runs touched nothing
    # settings equal to the run's, and the ones a resumed run may change, are accepted and recorded
    args = ["train", "--resume", ckpt, "--epochs", "2", "--attack-steps", "1", "--workers", "0", "--log-every", "7"]
    assert main(args + ["--no-progress"]) == 0
    assert [e["epoch"] for e in read_history(tmp_path)] == [1, 2]
    assert RunFolder(tmp_path).read_config()["log_every"] == 7
