"""Experiment tracking: every metrics.jsonl series reaches the loggers, read back from the real
libraries' files (TensorBoard's event reader, MLflow's file store)."""
from __future__ import annotations

import json
import sys

import pytest

import fairdefense
from fairdefense.cli import main
from fairdefense.errors import ConfigError, MissingDependencyError
from fairdefense.reports import write_run_report
from fairdefense.tracking import LOGGERS, Tracker, config_params, epoch_scalars, log_report_files

SMALL = dict(epochs=2, attack_steps=1, batch_size=512, device="cpu", val_size=0.1, select_best=True, val_steps=2,
             eval_attacks=("pgd2",))


def history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_epoch_scalars_one_series_per_class_name():
    entry = {
        "epoch": 3, "lr": 0.01, "loss": 1.5, "images_per_s": None, "time": float("nan"),
        "train": {"robust_acc": [0.5, 0.25], "clean_acc": None, "summary": {"robust_acc": {"avg": 0.375}}},
        "test": {"class_names": ["cat", "dog"], "counts": [4, 4], "clean_acc": [1.0, 0.75],
                 "robust_acc": {"pgd20": [0.5, 0.0]}, "summary": {"pgd20/robust_acc": {"worst": 0.0}}},
    }
    assert epoch_scalars(entry, ["cat", "dog"]) == {
        "lr": 0.01, "loss": 1.5,
        "train/robust_acc/cat": 0.5, "train/robust_acc/dog": 0.25, "train/summary/robust_acc/avg": 0.375,
        "test/clean_acc/cat": 1.0, "test/clean_acc/dog": 0.75,
        "test/robust_acc/pgd20/cat": 0.5, "test/robust_acc/pgd20/dog": 0.0,
        "test/summary/pgd20/robust_acc/worst": 0.0,
    }


def test_config_params_are_flat_text():
    config = fairdefense.TrainConfig(epochs=2, milestones=(0.5,), plugins=("faal",), plugin_options={"faal": {"r": 0.3}})
    params = config_params(config)
    assert params["epochs"] == "2" and params["milestones"] == "[0.5]" and params["plugins"] == '["faal"]'
    assert params["plugin_options.faal.r"] == "0.3" and "lr" not in params  # unset fields are left out


class Recording:
    """A third-party logger: records every call."""

    calls: list = []

    def __init__(self, run_dir, config) -> None:
        self.calls.append(("open", run_dir.name, tuple(config.loggers)))

    def log_scalars(self, scalars, step):
        self.calls.append(("scalars", step, dict(scalars)))

    def log_files(self, files):
        self.calls.append(("files", sorted(files)))

    def close(self):
        self.calls.append(("close",))


def test_a_logger_sees_each_epoch_then_closes_then_the_report_files(tmp_path, monkeypatch):
    monkeypatch.setitem(LOGGERS, "recording", Recording)
    Recording.calls = []
    run = tmp_path / "run"
    result = fairdefense.train(loggers=["recording"], out=str(run), progress=False, **SMALL)
    assert [c[0] for c in Recording.calls] == ["open", "scalars", "scalars", "close"]
    assert Recording.calls[0] == ("open", "run", ("recording",))
    lines = history(run)
    for (_, step, scalars), line in zip(Recording.calls[1:3], lines):
        assert step == line["epoch"] and scalars == epoch_scalars(line, result.report.class_names)
        assert scalars["lr"] == line["lr"] and scalars["images_per_s"] == line["images_per_s"]
        assert scalars["val_score"] == line["val_score"]
    Recording.calls = []
    log_report_files(run, result.config, write_run_report(run))
    assert Recording.calls == [("open", "run", ("recording",)),
                               ("files", ["classwise.png", "confusion.png", "curves.png", "metrics.json", "report.md"]), ("close",)]
    # without a run folder (nothing written, as for metrics.jsonl) no logger is called
    Recording.calls = []
    fairdefense.train(loggers=["recording"], progress=False, **{**SMALL, "epochs": 1})
    assert Recording.calls == []


def test_unknown_and_missing_loggers_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'. Did you mean 'tensorboard'"):
        Tracker(["tensorbord"], fairdefense.TrainConfig(), ["a", "b"])
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'fairdefense\[tensorboard\]'"):
        LOGGERS["tensorboard"](None, fairdefense.TrainConfig())


def test_tensorboard_event_files_hold_every_series(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = fairdefense.train(loggers=["tensorboard"], out=str(run), progress=False, **SMALL)
    log_report_files(run, result.config, write_run_report(run))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    lines = history(run)
    for name in result.report.class_names:
        series = events.Scalars(f"test/robust_acc/pgd2/{name}")
        assert [(s.step, s.value) for s in series] == [
            (line["epoch"], pytest.approx(line["test"]["robust_acc"]["pgd2"][int(name)], abs=1e-6)) for line in lines]
        assert len(events.Scalars(f"train/robust_acc/{name}")) == 2 and len(events.Scalars(f"val/clean_acc/{name}")) == 2
    assert [s.value for s in events.Scalars("lr")] == pytest.approx([line["lr"] for line in lines])
    assert [s.value for s in events.Scalars("images_per_s")] == pytest.approx([line["images_per_s"] for line in lines])
    assert {"report/classwise.png", "report/curves.png"} <= set(tags["images"])


def test_mlflow_file_store_holds_params_metrics_and_artifacts_and_resume_continues(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use its file store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fair-test")
    run = tmp_path / "run"
    argv = ["train", "--epochs", "2", "--attack-steps", "1", "--batch-size", "512", "--device", "cpu", "--no-progress",
            "--log", "tensorboard,mlflow", "--set", 'eval_attacks=["pgd2"]', "--out", str(run), "--plugin", "faal", "-o", "faal.r=0.3"]
    assert main(argv) == 0
    client = MlflowClient(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("fair-test").experiment_id])
    assert mlrun.info.run_name == "run" and mlrun.info.status == "FINISHED"
    assert mlrun.data.params["plugins"] == '["faal"]' and mlrun.data.params["plugin_options.faal.r"] == "0.3"
    lines = history(run)
    for c, name in enumerate(lines[0]["test"]["class_names"]):
        metric = client.get_metric_history(mlrun.info.run_id, f"test/robust_acc/pgd2/{name}")
        assert sorted((m.step, m.value) for m in metric) == [
            (line["epoch"], pytest.approx(line["test"]["robust_acc"]["pgd2"][c])) for line in lines]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id, "report")}
    assert artifacts == {"report/metrics.json", "report/report.md", "report/classwise.png", "report/curves.png",
                         "report/confusion.png"}
    assert (run / "tensorboard").is_dir()  # both loggers at once
    # resuming continues the same MLflow run
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "3", "--no-progress"]) == 0
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "lr")] == [1, 2, 3]
