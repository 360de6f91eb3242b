"""Experiment tracking: what ``metrics.jsonl`` holds, sent to TensorBoard, MLflow or any logger.

A logger is chosen by name (``--log tensorboard --log mlflow``, ``TrainConfig.loggers``,
``fairdefense.train(loggers=[...])``). Each epoch it receives the scalars of that epoch's
``metrics.jsonl`` line (:func:`epoch_scalars`: loss, lr, images/s, times, and every
per-class accuracy as one series per class name, with its summaries), at the step of the
epoch's number. The trainer calls loggers where it writes ``metrics.jsonl``: only with a
run folder, and only from the process that writes it. When the report files of the final
test evaluation are written (``metrics.json``, ``report.md``, ``classwise.png``,
``curves.png``; ``fairdefense train`` writes them), :func:`log_report_files` sends them.

Loggers are not hooks of the plugin contract: a strategy changes what is trained (it is
recorded in checkpoints and must match on resume), a logger only watches. A logger is a
factory ``factory(run_dir, config) -> logger`` whose result has the methods of
:class:`RunLogger`. Built-in: :class:`TensorBoardLogger` and :class:`MLflowLogger`; third
parties add theirs under the :data:`ENTRY_POINT_GROUP` entry-point group::

    [options.entry_points]
    fairdefense.loggers =
        wandb = my_package.tracking:WandbLogger
"""
from __future__ import annotations

import difflib
import importlib.metadata as metadata
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from fairdefense.errors import ConfigError, require

__all__ = [
    "ENTRY_POINT_GROUP",
    "RunLogger",
    "LOGGERS",
    "list_loggers",
    "logger_factory",
    "epoch_scalars",
    "config_params",
    "Tracker",
    "log_report_files",
    "TensorBoardLogger",
    "MLflowLogger",
]

#: Entry-point group of third-party loggers.
ENTRY_POINT_GROUP = "fairdefense.loggers"
#: Keys of a ``metrics.jsonl`` line that are not series.
_SKIP = {"epoch", "class_names", "counts"}


class RunLogger(Protocol):
    """What a logger does; ``factory(run_dir: Path, config: TrainConfig)`` builds one per run."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Record ``{name: value}`` at ``step`` (the epoch's number, from 1)."""

    def log_files(self, files: Mapping[str, Path]) -> None:
        """Record the report files ``{file name: path}`` (pictures and text) of the final evaluation."""

    def close(self) -> None:
        """Flush and release; called once at the end of training."""


def _series(prefix: str, value: Any, names: Sequence[str], out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key not in _SKIP:
                _series(f"{prefix}/{key}" if prefix else str(key), item, names, out)
    elif isinstance(value, (list, tuple)) and len(value) == len(names):
        for name, item in zip(names, value):
            _series(f"{prefix}/{name}", item, names, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


def epoch_scalars(entry: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, float]:
    """The series of one ``metrics.jsonl`` line, ``{name: value}``.

    Nested keys are joined with ``/``; a per-class list becomes one series per class
    name. E.g. ``lr``, ``loss``, ``images_per_s``, ``train/robust_acc/cat``,
    ``train/summary/robust_acc/worst``, ``test/robust_acc/pgd20/cat``,
    ``test/summary/pgd20/robust_acc/avg``, ``val/losses/adv_ce/cat``. ``epoch`` (the
    step), class names, counts, ``None`` and non-finite values are left out.
    """
    out: dict[str, float] = {}
    _series("", entry, [str(c) for c in class_names], out)
    return out


def config_params(config: Any) -> dict[str, str]:
    """A :class:`~fairdefense.TrainConfig` as flat ``{name: text}`` parameters
    (``plugin_options.faal.r``), unset fields left out."""
    out: dict[str, str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        elif value is not None:
            out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)

    for key, value in config.to_dict().items():
        add(key, value)
    return out


# ----------------------------------------------------------------- built-ins
class TensorBoardLogger:
    """TensorBoard through torch's ``SummaryWriter``, writing to ``<run_dir>/tensorboard``.

    Scalars go under their series names; the config is a text entry (``config``); report
    pictures become images (``report/classwise.png``...) and ``report.md`` a text entry.
    Needs the ``tensorboard`` extra. View with ``tensorboard --logdir runs``.
    """

    def __init__(self, run_dir: Path, config: Any) -> None:
        require("tensorboard", "tensorboard", "--log tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(str(self.log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config.to_dict(), indent=2, default=str) + "\n```")

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def log_files(self, files: Mapping[str, Path]) -> None:
        from matplotlib.image import imread

        for name, path in files.items():
            if name.endswith(".png"):
                self.writer.add_image(f"report/{name}", imread(path)[..., :3], dataformats="HWC")
            elif name.endswith(".md"):
                self.writer.add_text(f"report/{name}", Path(path).read_text())
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


#: Characters MLflow refuses in a metric or parameter name.
_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")


class MLflowLogger:
    """MLflow through ``MlflowClient``, at MLflow's own tracking URI (``MLFLOW_TRACKING_URI``,
    else MLflow's default), in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default
    ``"fairdefense"``; created when missing).

    One MLflow run per run folder, named after it: its id is kept in ``<run_dir>/mlflow.json``,
    so a resumed training continues the same MLflow run. The config is logged as
    parameters (:func:`config_params`), scalars as metrics at the epoch's step (characters
    MLflow refuses in names become ``_``), report files as artifacts under ``report/``.
    Needs the ``mlflow`` extra.
    """

    def __init__(self, run_dir: Path, config: Any) -> None:
        mlflow = require("mlflow", "mlflow", "--log mlflow")
        self.client = mlflow.tracking.MlflowClient()
        uri = mlflow.get_tracking_uri()
        record = Path(run_dir) / "mlflow.json"
        known = json.loads(record.read_text()) if record.is_file() else {}
        if known.get("tracking_uri") == uri:
            self.run_id = known["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fairdefense")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=Path(run_dir).name,
                                     tags={"fairdefense.run_dir": str(Path(run_dir).resolve())})
        self.run_id = run.info.run_id
        record.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}))
        from mlflow.entities import Param

        params = [Param(_MLFLOW_BAD.sub("_", k), v[:6000]) for k, v in config_params(config).items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_BAD.sub("_", k), v, now, step) for k, v in scalars.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_files(self, files: Mapping[str, Path]) -> None:
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path), artifact_path="report")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


#: Built-in loggers by name.
LOGGERS: dict[str, Callable[..., RunLogger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}


def _installed() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_loggers() -> list[str]:
    """Names of the built-in and installed loggers."""
    return sorted(set(LOGGERS) | set(_installed()))


def logger_factory(name: str) -> Callable[..., RunLogger]:
    """The factory of the logger ``name`` (built-in, else the ``fairdefense.loggers`` entry point)."""
    if name in LOGGERS:
        return LOGGERS[name]
    installed = _installed()
    if name in installed:
        return installed[name].load()
    near = difflib.get_close_matches(name, list_loggers(), n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(
        f"unknown logger {name!r}.{hint} Available: {', '.join(list_loggers())} (third-party loggers register "
        f"under the {ENTRY_POINT_GROUP!r} entry-point group)."
    )


class Tracker:
    """The loggers of one training run, opened at the first epoch logged.

    ``names`` are checked at once (unknown names are an error). :meth:`log_epoch` and
    :meth:`close` are called by the trainer where it writes ``metrics.jsonl``; with no
    names they do nothing.
    """

    def __init__(self, names: Sequence[str], config: Any, class_names: Sequence[str]) -> None:
        self.factories = [logger_factory(name) for name in dict.fromkeys(names)]
        self.config = config
        self.class_names = [str(c) for c in class_names]
        self.loggers: list[RunLogger] | None = None

    def _open(self, run_dir: Path) -> list[RunLogger]:
        if self.loggers is None:
            self.loggers = [factory(Path(run_dir), self.config) for factory in self.factories]
        return self.loggers

    def log_epoch(self, run_dir: Path, entry: Mapping[str, Any]) -> None:
        """Send one ``metrics.jsonl`` line (:func:`epoch_scalars`) at step ``entry["epoch"]``."""
        if not self.factories:
            return
        scalars = epoch_scalars(entry, self.class_names)
        for logger in self._open(run_dir):
            logger.log_scalars(scalars, int(entry["epoch"]))

    def close(self) -> None:
        """Close the loggers opened (at the end of training)."""
        for logger in self.loggers or []:
            logger.close()
        self.loggers = None


def log_report_files(run_dir: str | Path, config: Any, files: Mapping[str, Path]) -> None:
    """Send a finished run's report files (``{file name: path}``, as
    :func:`~fairdefense.reports.write_run_report` returns them) to the loggers of
    ``config.loggers``: each is opened again on ``run_dir`` (MLflow continues the run's
    MLflow run), receives the files and is closed. ``fairdefense train`` calls it after
    writing the report files."""
    for factory in Tracker(config.loggers, config, []).factories:
        logger = factory(Path(run_dir), config)
        logger.log_files(files)
        logger.close()
