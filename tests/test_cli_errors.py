"""Bad command lines end with a clear message and exit status 2, before any work is done."""
from __future__ import annotations

import re

import pytest
import torch

from fairdefense.cli import main

FAST = ["--epochs", "1", "--no-progress"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "-1"], r"workers must be >= 0"),
        (["--device", "foo"], r"'foo' is not a device name"),
        (["--threads", "0"], r"threads must be a whole number >= 1"),
    ],
)
def test_train_refuses_bad_settings(tmp_path, capsys, args, message):
    assert main(["train", *args, *FAST, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "fairdefense train: error:" in err
    assert re.search(message, err)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--device", "cuda", *FAST, "--out", str(tmp_path / "run")]) == 2
    assert "torch sees none here; use --device cpu" in capsys.readouterr().err


def test_threads_flag_sets_torch_threads(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", "--threads", "1", "--dry-run"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch digits run (a few seconds)."""
    import fairdefense

    out = tmp_path_factory.mktemp("runs") / "run"
    fairdefense.train(epochs=1, attack_steps=1, batch_size=256, device="cpu", eval_attacks=("pgd2",), out=str(out),
                      progress=False)
    return out


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-samples", "0"], r"n_samples must be >= 1, got 0"),
        (["--n-samples", "-5"], r"n_samples must be >= 1, got -5"),
        (["--eps", "0"], r"eps must be > 0, got 0.0; it is the attack radius"),
        (["--batch-size", "0"], r"batch_size must be >= 1, got 0"),
    ],
)
def test_evaluate_refuses_empty_or_zero_settings_instead_of_taking_the_runs(trained_run, capsys, args, message):
    before = _files(trained_run)
    assert main(["evaluate", str(trained_run), "--attacks", "pgd2", "--no-progress", *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert _files(trained_run) == before


@pytest.mark.parametrize("command", ["train", "evaluate", "compare"])
def test_out_naming_an_existing_file_is_refused_and_the_file_kept(trained_run, tmp_path, capsys, command):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    args = {"train": ["train", *FAST], "evaluate": ["evaluate", str(trained_run), "--attacks", "pgd2"],
            "compare": ["compare", str(trained_run)]}[command]
    assert main([*args, "--out", str(target)]) == 2
    assert re.search(r"--out '.*notes\.txt' is a file, not a folder; give a folder", capsys.readouterr().err)
    assert target.read_text() == "mine" and _files(tmp_path) == ["notes.txt"]


def test_evaluate_checks_that_out_can_be_written_before_computing(trained_run, tmp_path, capsys, monkeypatch):
    import fairdefense.evaluation

    def computing(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(fairdefense.evaluation, "evaluate", computing)
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "reports"  # under a file: cannot be created, whoever runs the test
    assert main(["evaluate", str(trained_run), "--attacks", "pgd2", "--out", str(unwritable)]) == 2
    assert re.search(r"--out '.*reports' cannot be written \(.*\); choose a folder you can write to",
                     capsys.readouterr().err)
    assert _files(tmp_path) == ["file"]


def test_recipe_dry_run_with_a_setting_of_the_wrong_type(capsys):
    assert main(["recipes", "pgdat-cifar10-wrn34", "--dry-run", "--set", "epochs=abc"]) == 2
    captured = capsys.readouterr()
    assert "epochs must be a whole number, got 'abc'" in captured.err and captured.out == ""


def test_evaluate_a_run_trained_from_python_on_tensors_says_how_to_evaluate_it(tmp_path, capsys):
    from torch import nn
    from torch.utils.data import TensorDataset

    from fairdefense import Trainer, TrainConfig

    torch.manual_seed(0)
    data = TensorDataset(torch.rand(32, 4), torch.arange(32) % 2)
    model = nn.Sequential(nn.Linear(4, 2))
    Trainer(model, data, ["a", "b"], TrainConfig(epochs=1, attack_steps=1, device="cpu", out=str(tmp_path / "run")),
            progress=False).fit()
    before = _files(tmp_path / "run")
    assert main(["evaluate", str(tmp_path / "run"), "--attacks", "pgd2"]) == 2
    err = capsys.readouterr().err
    assert "trained from Python on data and a model of your own" in err
    assert "fairdefense.trainer.load_weights(model" in err and "fairdefense.evaluate(model" in err
    assert _files(tmp_path / "run") == before
