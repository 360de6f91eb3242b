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
