"""RobustBench's zoo, offline: a zoo architecture with random weights saved where RobustBench's
loader looks, fine-tuned and evaluated through the real code path (robustbench's load_model)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_datasets import bless_cifar, write_cifar10

import fairdefense
from fairdefense.api import build_trainer
from fairdefense.cli import main
from fairdefense.errors import ConfigError, MissingDependencyError
from fairdefense.zoo import import_robustbench, load_zoo_model, weights_path, zoo_factory

NAME = "Ding2020MMA"  # WRN-28-4 (5.8M parameters), normalising each image itself
MODEL = f"robustbench:cifar10/Linf/{NAME}"


@pytest.fixture(scope="module")
def robustbench():
    try:
        return import_robustbench()
    except MissingDependencyError as exc:
        pytest.skip(f"the robustbench extra is not installed: {exc}")


@pytest.fixture
def cache(robustbench, tmp_path) -> Path:
    """RobustBench's cache folder holding random weights for NAME, as load_model lays it out."""
    torch.manual_seed(1)
    path = tmp_path / "models" / "cifar10" / "Linf" / f"{NAME}.pt"
    path.parent.mkdir(parents=True)
    torch.save(zoo_factory(MODEL)().state_dict(), path)
    return tmp_path / "models"


@pytest.fixture
def cifar(tmp_path, monkeypatch) -> tuple[Path, dict]:
    from torchvision.datasets import CIFAR10

    root = tmp_path / "data"
    written = write_cifar10(root, per_batch=2, n_test=4)
    bless_cifar(monkeypatch, CIFAR10, root)
    return root, written


def saved(cache: Path) -> dict:
    return torch.load(cache / "cifar10" / "Linf" / f"{NAME}.pt")


def accuracy_by_hand(model: torch.nn.Module, images, labels) -> dict[int, float]:
    x = torch.as_tensor(images, dtype=torch.float32) / 255
    with torch.no_grad():
        ok = (model.eval()(x).argmax(1) == torch.as_tensor(labels)).tolist()
    return {c: sum(o for o, y in zip(ok, labels) if y == c) / labels.count(c) for c in set(labels)}


def test_weights_path_is_robustbenchs_layout(robustbench):
    # pyautoattack was lent to robustbench's import only: fairdefense's AutoAttack still reports its real name
    assert "autoattack" not in sys.modules or sys.modules["autoattack"].__name__ == "autoattack"
    assert weights_path(MODEL) == Path("models/cifar10/Linf/Ding2020MMA.pt")  # RobustBench's default ./models
    assert weights_path("robustbench:cifar100/L2/X", "/cache") == Path("/cache/cifar100/L2/X.pt")


def test_fine_tune_starts_from_the_cached_weights_and_keeps_the_zoo_normalisation(cache, cifar, tmp_path):
    data, _ = cifar
    config = fairdefense.TrainConfig(
        dataset="cifar10", data_dir=str(data), init=f"robustbench:{NAME}", model_dir=str(cache), epochs=1,
        attack_steps=1, batch_size=5, eval_attacks=("pgd1",), device="cpu", out=str(tmp_path / "run"),
        plugins=("faal",),
    )
    trainer = build_trainer(config, progress=False)
    assert type(trainer.model).__name__ == "Ding2020MMANet"  # not wrapped in the dataset's mean/std
    state = saved(cache)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in state.items())
    assert trainer.config.eps == pytest.approx(8 / 255)  # pixel units
    result = trainer.fit()
    assert any(not torch.equal(result.model.state_dict()[k], v) for k, v in state.items())  # fine-tuned
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["init"] == f"robustbench:{NAME}" and recorded["model"] == MODEL
    # the run folder evaluates like any run: the zoo architecture is rebuilt from the recorded id
    assert main(["evaluate", str(tmp_path / "run"), "--attacks", "clean,pgd1", "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    _, written = cifar
    expected = accuracy_by_hand(result.model, *written["test"])
    assert {c: metrics["clean"]["acc"][c] for c in expected} == pytest.approx(expected)


def test_evaluate_a_zoo_model_writes_a_runs_reports(cache, cifar, tmp_path, capsys):
    data, written = cifar
    out = tmp_path / "audit"
    argv = ["evaluate", f"robustbench:{NAME}", "--model-dir", str(cache), "--data-dir", str(data), "--attacks",
            "clean,pgd2", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", "classwise.png", "confusion.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["strategy"] == f"robustbench:{NAME}" and metrics["run"]["model"] == MODEL
    assert metrics["settings"]["eps"] == pytest.approx(8 / 255) and metrics["data"]["n_samples"] == 4
    model = zoo_factory(MODEL)()
    model.load_state_dict(saved(cache))
    expected = accuracy_by_hand(model, *written["test"])
    assert {c: metrics["clean"]["acc"][c] for c in expected} == pytest.approx(expected)
    assert f"robustbench:{NAME} on cifar10" in capsys.readouterr().out
    assert main(["compare", str(out), "--out", str(tmp_path / "board")]) == 0  # beside runs in a leaderboard
    assert f"robustbench:{NAME}" in (tmp_path / "board" / "leaderboard.md").read_text()


def test_absent_weights_offline_name_the_file_folder_and_command(robustbench, tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    expected = folder / "cifar10" / "Linf" / f"{NAME}.pt"
    with pytest.raises(ConfigError) as refused:
        load_zoo_model(MODEL, folder, download=False)
    message = str(refused.value)
    assert f"expected the file {expected}" in message and f"not in {expected.parent}" in message
    assert f"python -m fairdefense.zoo {NAME} --dataset cifar10 --norm linf --model-dir {folder}" in message
    # online is tried first: RobustBench's download is called with the cache path, and its failure explained
    calls = []

    def offline(gdrive_id, path):
        calls.append(str(path))
        raise ConnectionError("no network")

    utils, _ = robustbench
    monkeypatch.setattr(utils, "download_gdrive_new", offline)
    with pytest.raises(ConfigError, match="the download failed: ConnectionError: no network"):
        load_zoo_model(MODEL, folder, download=True)
    assert calls == [str(expected)]


def test_wrong_names_and_settings_are_clear_errors(robustbench, capsys):
    with pytest.raises(ConfigError, match="no model 'Ding2020MM' for cifar10 / Linf. Did you mean 'Ding2020MMA'"):
        zoo_factory("robustbench:cifar10/Linf/Ding2020MM")
    with pytest.raises(ConfigError, match="brings its own architecture"):
        build_trainer(fairdefense.TrainConfig(init=f"robustbench:{NAME}", model="small_cnn"), progress=False)
    assert main(["train", "--init", f"robustbench:{NAME}", "--dataset", "cifar10", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == MODEL  # the dry run names the zoo architecture
