"""High-level entry points: train on a named dataset, resume a run, evaluate a checkpoint."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from fairdefense import distributed
from fairdefense.config import TrainConfig
from fairdefense.data import load_dataset
from fairdefense.errors import ConfigError
from fairdefense.pluginhost import installed_plugins, plugin_name, plugin_options
from fairdefense.metrics import ClassReport
from fairdefense.models import create_model
from fairdefense.run_folder import RunFolder, load_training_state
from fairdefense.trainer import Trainer, TrainResult

__all__ = ["build_trainer", "train", "resume", "evaluate_checkpoint", "default_run_dir", "RESUMABLE"]


def default_run_dir(config: TrainConfig, root: str | Path = "runs") -> Path:
    """``runs/<dataset>-<plugins or baseline>-<objective>-s<seed>``, numbered if it exists."""
    label = "+".join(config.plugins) or "baseline"
    base = Path(root) / f"{config.dataset}-{label}-{config.objective or 'auto'}-s{config.seed}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def build_trainer(
    config: TrainConfig, plugins: Sequence[Any] = (), *, progress: bool = True, download: bool = True,
    overwrite: bool = False,
) -> Trainer:
    """Load ``config.dataset``, build ``config.model`` and return a ready :class:`Trainer`.

    Writes to ``config.out`` (``None``: nothing written; a folder holding another run is
    refused unless ``overwrite``). The model is initialised under ``config.seed``.
    ``config.init="robustbench:<name>"`` starts from a RobustBench zoo model instead (see
    :mod:`fairdefense.zoo`).
    """
    from fairdefense.zoo import is_zoo, zoo_model  # lazily: python -m fairdefense.zoo runs that module

    distributed.init_from_env()
    if not distributed.is_main():  # the main process downloads first; the others read its copy
        distributed.barrier()
    bundle = load_dataset(config.dataset, config.data_dir, download=download, fold=config.fold)
    if distributed.is_main():
        distributed.barrier()
    model_name = config.model or bundle.defaults.get("model", "small_cnn")
    torch.manual_seed(config.seed)
    mean, std, init = bundle.mean, bundle.std, config.init
    if is_zoo(init):  # a RobustBench model with its weights; it normalises its inputs itself
        model_name, model = zoo_model(config, download)
        mean = std = None
        config = dataclasses.replace(config, model=model_name, init=None)
    else:
        model = create_model(model_name, bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std)
    meta = {
        "dataset": bundle.name, "model": model_name, "input_shape": list(bundle.input_shape),
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std), "clip": list(bundle.clip),
    }
    trainer = Trainer(
        model, bundle.train, bundle.class_names, config, plugins, test_data=bundle.test, clip=tuple(bundle.clip),
        train_targets=bundle.train_targets, augment=bundle.augment, dataset_defaults=bundle.defaults,
        data_meta=meta, run_dir=config.out, progress=progress, overwrite=overwrite,
    )
    trainer.config.init = init
    return trainer


def train(
    config: TrainConfig | None = None, plugins: Sequence[Any] = (), *, progress: bool = True, overwrite: bool = False,
    **settings: Any,
) -> TrainResult:
    """Train on a named dataset. ``settings`` override fields of ``config``; ``overwrite``
    replaces a run already in ``config.out``. ``plugins`` (installed names and plugin
    objects, mixed) is the way to name the run's plugins; names in ``config.plugins`` are
    the same thing recorded, activated first (docs/plugins.md, "Naming the plugins of a run")::

        result = fairdefense.train(plugins=["bat"], epochs=5)
        result.report.summary()["pgd20/robust_acc"]
    """
    values = (config or TrainConfig()).to_dict()
    values.update(settings)
    return build_trainer(TrainConfig.from_dict(values), plugins, progress=progress, overwrite=overwrite).fit()


#: Settings a resumed run may change; every other setting is part of the run being continued.
RESUMABLE = ("epochs", "workers", "threads", "device", "log_every", "eval_every", "eval_attacks", "data_dir")


def _same(a: Any, b: Any) -> bool:
    """Equal as they would be recorded in ``config.json`` (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def resume(
    checkpoint: str | Path, *, progress: bool = True, plugins: Sequence[Any] = (), **settings: Any
) -> TrainResult:
    """Continue the run that wrote ``checkpoint`` (a checkpoint file, or a run folder: its
    ``last.pt``) exactly where it stopped (restore, then train).

    ``settings`` may change the settings in :data:`RESUMABLE` (``epochs`` extends the
    run); they are recorded in ``config.json``. Any other setting given must equal the
    checkpoint's: a different value (another plugin, learning rate, ...) is refused,
    naming it. A run that has done all its epochs is refused too (extend it with
    ``epochs``). Results go to the checkpoint's folder. In a process group, every
    process calls it with the same arguments.

    The run's plugins are rebuilt by name with their recorded options. A plugin the run
    was given as an object and that is not installed cannot be rebuilt: pass the object
    again in ``plugins`` (its name and options must be the recorded ones); names in
    ``plugins`` are a setting like the others (they must be the run's).

    A run started with ``init`` (``--init CHECKPOINT``) does not read that checkpoint
    again: its own checkpoint holds the weights, so it resumes after the starting
    checkpoint was moved or deleted (``config.json`` still records it).
    """
    from fairdefense.zoo import is_zoo  # lazily, as in build_trainer

    distributed.init_from_env()
    checkpoint, _ = RunFolder.resolve(checkpoint)  # a run folder resumes from its last.pt
    names = tuple(p for p in plugins if isinstance(p, str))
    if names:  # names are a setting, compared with the run's
        settings["plugins"] = names
    objects = [p for p in plugins if not isinstance(p, str)]
    state = distributed.broadcast_object(
        {k: v for k, v in load_training_state(checkpoint, hint="; use --init to fine-tune from weights.").items()
         if k in ("config", "epoch")} if distributed.is_main() else None
    )
    recorded = state["config"]
    folder = Path(checkpoint).parent
    out = settings.pop("out", None)
    if out is not None and Path(out).resolve() != folder.resolve():
        raise ConfigError(f"a resumed run goes on in its own folder {str(folder)!r}; drop --out {out} "
                          f"(or copy the folder there and resume from the copy).")
    contradicting = [
        f"{key}={value!r} (the run has {recorded.get(key)!r})" for key, value in settings.items()
        if key not in RESUMABLE and not _same(value, recorded.get(key))
    ]
    if contradicting:
        raise ConfigError(
            f"{str(checkpoint)!r} is resumed with its own settings; these contradict it: {', '.join(contradicting)}. "
            f"Drop them, or start a new run (--init {checkpoint} fine-tunes from its weights). "
            f"A resumed run may change only {', '.join(RESUMABLE)}."
        )
    config = TrainConfig.from_dict({**recorded, **{k: v for k, v in settings.items() if k in RESUMABLE}})
    config.out = str(folder)
    ordered = _resumed_plugins(checkpoint, config, objects)
    config.plugins = ()
    config.plugin_options = {k: v for k, v in config.plugin_options.items() if isinstance(ordered.get(k), str)}
    if int(state["epoch"]) >= config.epochs:
        raise ConfigError(
            f"{str(checkpoint)!r} has done all {config.epochs} epochs of its run: nothing to do. "
            f"Extend it with --epochs N (N > {config.epochs}), or evaluate it with: fairdefense evaluate {folder}"
        )
    started_from = config.init
    if started_from and not is_zoo(started_from):
        config.init = None  # restore() brings the weights: the run's starting checkpoint may have moved or gone
    trainer = build_trainer(config, [ordered[name] for name in ordered], progress=progress)
    trainer.config.init = started_from
    trainer.restore(checkpoint)
    return trainer.fit()


def _resumed_plugins(checkpoint: str | Path, config: TrainConfig, objects: Sequence[Any]) -> dict[str, Any]:
    """The run's plugins in their recorded order: the object given for a name, else the name
    (rebuilt from its recorded options). Refuses objects the run did not use or with other
    options, and recorded plugins that are neither given nor installed."""
    given = {plugin_name(obj): obj for obj in objects}
    recorded = list(config.plugins)
    for name, obj in given.items():
        if name not in recorded:
            raise ConfigError(f"plugin '{name}' was given, but {str(checkpoint)!r} was trained with {recorded}; "
                              f"pass only objects of the run's plugins.")
        expected = config.plugin_options.get(name)
        if expected is not None and not _same(plugin_options(obj), expected):
            raise ConfigError(f"plugin '{name}' was given with options {plugin_options(obj)}, but the run used "
                              f"{expected}; pass it with the run's options.")
    installed = installed_plugins()
    missing = [n for n in recorded if n not in given and n not in installed]
    if missing:
        options = ", ".join(f"'{n}' with options {config.plugin_options.get(n, {})}" for n in missing)
        raise ConfigError(
            f"{str(checkpoint)!r} was trained with plugin(s) passed as objects and not installed: {options}; "
            f"--resume cannot rebuild them by name. Resume from Python with the objects: "
            f"fairdefense.resume({str(checkpoint)!r}, plugins=[...]), or install the plugin(s) "
            f"(entry point group 'fairdefense.plugins', see docs/plugins.md)."
        )
    return {name: given.get(name, name) for name in recorded}


def evaluate_checkpoint(
    checkpoint: str | Path,
    attacks: Sequence[str] | None = None,
    *,
    eps: float | None = None,
    n_samples: int | None = None,
    batch_size: int | None = None,
    weights: str = "eval",
    device: str | None = None,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    autoattack: Sequence[str] | None = None,
) -> ClassReport:
    """The :class:`ClassReport` of :func:`fairdefense.reports.evaluate_run` (same arguments
    and defaults), without writing files."""
    from fairdefense.reports import evaluate_run, report_from_metrics

    metrics, _ = evaluate_run(checkpoint, attacks, eps=eps, n_samples=n_samples, batch_size=batch_size,
                              weights=weights, device=device, seed=seed, progress=progress, autoattack=autoattack,
                              write=False)
    return report_from_metrics(metrics)
