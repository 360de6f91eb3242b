"""The generic fair adversarial trainer: one loop, hooks at every batch and epoch.

The trainer owns the optimizer, scheduler, device, data order, checkpoints and
logs, and applies what plugins return; plugins only compute (see
:mod:`fairdefense.hookspecs` for the order of calls).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from fairdefense.attacks import AttackRecord, pgd, pgd_early_stop
from fairdefense.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    versions,
)
from fairdefense.config import TrainConfig, resolve, select_device
from fairdefense.context import BatchInfo, EpochInfo, RunInfo
from fairdefense.errors import ConfigError, NonFiniteLossError
from fairdefense.evaluation import evaluate
from fairdefense.manager import PluginHost
from fairdefense.metrics import ClassReport, ClassStats, summarize
from fairdefense.objectives import make_objective
from fairdefense.splits import per_class_split

__all__ = ["Trainer", "TrainResult", "load_weights", "resolve_run"]


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    ``model`` holds the trained weights; ``eval_model`` the weights to evaluate
    (the same module unless a plugin such as EMA supplies averaged weights);
    ``report`` the final per-class test report (``None`` without test data);
    ``history`` one dict per epoch (the lines of ``metrics.jsonl``).
    """

    model: nn.Module
    eval_model: nn.Module
    report: ClassReport | None
    history: list[dict[str, Any]]
    config: TrainConfig
    run_dir: Path | None
    best_epoch: int | None = None


class _Augmented(Dataset):
    def __init__(self, base: Dataset, augment: Callable[[Tensor], Tensor]) -> None:
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return self.augment(x), y


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights for fine-tuning: a fairdefense checkpoint or a plain ``state_dict``.

    A state_dict saved from the bare network also loads into a model wrapped with
    input normalisation. Mismatched keys raise an error listing them.
    """
    state = load_checkpoint(path)
    if isinstance(state, dict) and "format" in state and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{str(path)!r} holds neither a fairdefense checkpoint nor a state_dict.")
    targets = [model] + ([model.net] if hasattr(model, "net") else [])
    errors = []
    for target in targets:
        try:
            target.load_state_dict(state)
            return
        except RuntimeError as exc:
            errors.append(str(exc).splitlines()[0])
    raise ConfigError(f"weights in {str(path)!r} do not fit this model: {errors[0]}")


def resolve_run(
    config: TrainConfig,
    class_names: Sequence[str],
    dataset_defaults: Mapping[str, Any],
    clip: tuple | None,
    plugins: Sequence[str | Any] = (),
) -> tuple[TrainConfig, PluginHost, RunInfo]:
    """Resolve ``config`` as a run does: activate ``config.plugins`` then ``plugins``, let
    their ``configure`` hooks fill unset fields, then ``dataset_defaults``, then the
    library's defaults. Returns the resolved config, the plugin host and the run info."""
    config = copy.deepcopy(config)
    device = select_device(config.device)
    host = PluginHost(list(config.plugins) + list(plugins), config.plugin_options)
    config.plugins = tuple(host.plugins)
    run = RunInfo(len(class_names), [str(c) for c in class_names], config, device)
    required = host.configure(config, run, explicit=config.explicit())
    run.config = resolve(config, dataset_defaults, required, clip)
    return run.config, host, run


class Trainer:
    """Adversarial training with fairness plugins.

    Parameters
    ----------
    model:
        The module to train (in place). Its output width must equal the number of classes.
    train_data:
        A dataset of ``(x, y)`` pairs, inputs within ``clip``.
    class_names:
        One name per class (its length is the number of classes).
    config:
        A :class:`~fairdefense.config.TrainConfig`; unset fields are filled by plugins'
        ``configure`` hooks, then ``dataset_defaults``, then the library defaults.
    plugins:
        Installed plugin names and/or plugin objects, mixed. Names listed in
        ``config.plugins`` are activated first.
    test_data:
        Optional dataset scored per class after each ``eval_every`` epochs and at the end.
    optimizer, scheduler:
        Optional; default SGD with the config's lr, momentum and weight decay, and the
        config's schedule (``multistep`` at fractions ``milestones`` of the epochs,
        ``cosine`` or ``constant``), stepped once per epoch.
    clip:
        The valid input range ``(low, high)`` (scalars or tensors broadcastable to an input).
    train_targets:
        Labels of ``train_data`` ``(N,)``; read from the data if omitted.
    augment:
        Per-sample augmentation of training inputs (not applied to the validation split).
    run_dir:
        Folder for ``config.json``, ``metrics.jsonl`` and checkpoints (``None``: nothing written).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        class_names: Sequence[str],
        config: TrainConfig | None = None,
        plugins: Sequence[str | Any] = (),
        *,
        test_data: Dataset | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        clip: tuple | None = (0.0, 1.0),
        train_targets: Tensor | None = None,
        augment: Callable[[Tensor], Tensor] | None = None,
        dataset_defaults: dict[str, Any] | None = None,
        data_meta: dict[str, Any] | None = None,
        run_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        num_classes = len(self.class_names)
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {num_classes}.")
        self.config, self.host, self.run = resolve_run(
            config or TrainConfig(), self.class_names, dataset_defaults or {}, clip, plugins
        )
        device = self.run.device
        self.device = device
        self.clip = clip
        self.model = model.to(device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # attacks and loss forward through ``net`` (compiled if asked); plugins see the module itself
        self.net: nn.Module = torch.compile(self.model) if self.config.compile else self.model
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.config.amp == "fp16")
        self.objective = make_objective(self.config.objective, self.config.beta)
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.data_meta = dict(data_meta or {})

        targets = train_targets if train_targets is not None else _targets_of(train_data)
        targets = torch.as_tensor(targets).long()
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise ConfigError(
                f"training labels must lie in 0..{num_classes - 1} (one per class name), found "
                f"{targets.min().item()}..{targets.max().item()}. Check class_names or remap the labels."
            )
        self._check_model(train_data, num_classes)
        needs_val = self.host.implements("on_validation") or bool(self.config.select_best)
        if needs_val:
            if not self.config.val_size > 0:
                raise ConfigError("a validation split is needed (on_validation plugin or select_best): set val_size > 0.")
            train_idx, val_idx = per_class_split(targets, self.config.val_size, self.config.seed)
            self.val_data: Dataset | None = Subset(train_data, val_idx.tolist())
            train_base: Dataset = Subset(train_data, train_idx.tolist())
        else:
            self.val_data, train_base = None, train_data
        self.train_data = _Augmented(train_base, augment) if augment else train_base
        self.test_data = test_data

        torch.manual_seed(self.config.seed)
        self.shuffle = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = optimizer or torch.optim.SGD(
            self.model.parameters(), lr=self.config.lr, momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )
        self.scheduler = scheduler if scheduler is not None else self._default_scheduler()
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self._eval_state: dict[str, Tensor] | None = None
        if self.config.init:
            load_weights(self.model, self.config.init)

    # ------------------------------------------------------------------ setup
    def _check_model(self, data: Dataset, num_classes: int) -> None:
        if len(data) == 0:  # type: ignore[arg-type]
            raise ConfigError("the training data is empty.")
        x, _ = data[0]
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model(torch.as_tensor(x).unsqueeze(0).to(self.device))
        self.model.train(was)
        if out.dim() != 2 or out.shape[1] != num_classes:
            raise ConfigError(
                f"the model outputs shape {tuple(out.shape[1:])} per sample but there are {num_classes} classes; "
                f"its last layer must have {num_classes} outputs (one logit per class)."
            )

    def _default_scheduler(self):
        c = self.config
        if c.schedule == "multistep":
            milestones = sorted({max(1, int(round(m * c.epochs))) for m in c.milestones})
            return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=c.gamma)
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        # evaluation loaders get a generator of their own: drawing their seed from the global
        # RNG would make the trained weights depend on how often the test split is scored
        generator = self.shuffle if shuffle else torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            data, batch_size=self.config.batch_size, shuffle=shuffle, num_workers=self.config.workers,
            generator=generator, pin_memory=self.device.type == "cuda",
        )

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    # -------------------------------------------------------------- one batch
    def _batch(self, epoch: int, index: int, x: Tensor, y: Tensor, stats: ClassStats) -> tuple[float, int]:
        c = self.config
        info = BatchInfo(epoch, index, self.global_step, x, y, self.model, self.objective, c.eps, c.eps_step, self.run)
        margins = self.host.remargin(info)
        eps: float | Tensor = c.eps
        step: float | Tensor = c.eps_step
        if margins is not None:
            eps = margins.eps.to(x)[y]
            if margins.step is not None:
                s = torch.as_tensor(margins.step, dtype=x.dtype, device=x.device)
                step = s[y] if s.dim() else s
        start = c.random_start or self.objective.random_start
        attack = dict(norm=c.norm, loss=self.objective.attack_loss, random_start=start, clip=self.clip)
        self.model.train(c.attack_mode == "train")
        record: AttackRecord | None = None
        with self._autocast():
            if self.objective.early_stop or self.host.implements("select_examples"):
                record = pgd_early_stop(self.net, x, y, eps, step, c.attack_steps, extra_steps=c.early_stop_extra_steps, **attack)
                x_adv, steps = record.x_adv, record.steps
            else:
                x_adv, steps = pgd(self.net, x, y, eps, step, c.attack_steps, **attack), c.attack_steps
        self.model.train()
        x_natural = None
        if record is not None:
            selection = self.host.select_examples(info, record)
            if selection is not None:
                x_natural = selection.natural
                x_adv = selection.adversarial if selection.adversarial is not None else x_adv
        perturbation = self.host.perturb_weights(info, x_adv)
        params = dict(self.model.named_parameters())
        if perturbation:
            with torch.no_grad():
                for name, delta in perturbation.items():
                    params[name].add_(delta)
        eps_b = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(len(y))
        with self._autocast():
            outputs = replace(self.objective.terms(self.net, x, y, x_adv, x_natural), eps=eps_b, record=record)
        w_natural, w_robust = self.host.reweight(info, outputs)
        with self._autocast():
            loss = self.objective.reduce(outputs, w_natural, w_robust)
            extra = self.host.extra_loss(info, outputs)
            if extra is not None:
                loss = loss + extra
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the loss became {value} at epoch {epoch + 1}, batch {index + 1}; training stopped. "
                f"The last good checkpoint is kept{f' in {self.run_dir}' if self.run_dir else ''}. "
                f"Lower the learning rate or check the plugins' weights and extra losses.",
                epoch=epoch + 1, batch=index + 1,
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if perturbation:
            with torch.no_grad():
                for name, delta in perturbation.items():
                    params[name].sub_(delta)
        clean = None if outputs.logits_clean is None else outputs.logits_clean.detach()
        stats.update(y, outputs.logits_adv.detach(), clean)
        self.global_step += 1
        return value, steps

    # -------------------------------------------------------------- one epoch
    def _epoch_info(self, epoch: int) -> EpochInfo:
        return EpochInfo(epoch, self.config.epochs, self.model, self.run, self.optimizer.param_groups[0]["lr"])

    def _evaluate(self, model: nn.Module, data: Dataset, attacks: Sequence[str], losses: bool = False) -> ClassReport:
        return evaluate(
            model, self._loader(data, shuffle=False), self.class_names, attacks, eps=self.config.eps,
            norm=self.config.norm, clip=self.clip, device=self.device, seed=self.config.seed, losses=losses,
        )

    def _validate(self, info: EpochInfo) -> ClassReport:
        """The per-class validation report, computed once and handed to every ``on_validation``."""
        report = self._evaluate(self.model, self.val_data, [f"pgd{self.config.val_steps}"], losses=True)
        self.host.notify("on_validation", epoch=info, report=report)
        return report

    def _eval_module(self) -> nn.Module:
        if self._eval_state is None:
            return self.model
        module = copy.deepcopy(self.model)
        module.load_state_dict(self._eval_state)
        return module

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        info = self._epoch_info(epoch)
        self.host.notify("on_epoch_start", epoch=info)
        stats = ClassStats.zeros(self.run.num_classes, self.device)
        loader = self._loader(self.train_data, shuffle=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, disable=not self.progress)
        loss_sum, steps_sum, n_batches, n_samples = 0.0, 0, 0, 0
        for index, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True).long()
            if self.config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, steps = self._batch(epoch, index, x, y, stats)
            loss_sum += loss
            steps_sum += steps
            n_batches += 1
            n_samples += len(y)
            if self.progress:
                rob = summarize(stats.robust_acc, higher_is_worse=False)
                rate = n_samples / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", rob_avg=f"{rob['avg']:.3f}",
                                rob_worst=f"{rob['worst']:.3f}", img_s=f"{rate:.0f}")
        train_time = time.perf_counter() - start
        logged = self.host.on_epoch_end(info, stats)
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": info.lr,
            "loss": loss_sum / max(n_batches, 1),
            "attack_steps": steps_sum / max(n_batches, 1),
            "train_time": train_time,
            "images_per_s": n_samples / train_time if train_time > 0 else None,
            "train": {
                "robust_acc": stats.robust_acc.tolist(),
                "clean_acc": None if stats.clean_acc is None else stats.clean_acc.tolist(),
                "summary": {"robust_acc": summarize(stats.robust_acc, False)},
            },
        }
        if logged:
            entry["plugins"] = logged
        report = self._validate(info) if self.val_data is not None else None
        if report is not None:
            entry["val"] = report.to_dict()
        self._eval_state = self.host.weights_to_evaluate(info)
        if report is not None and c.select_best:
            if self._eval_state is not None:  # score the weights that would be exported
                report = self._evaluate(self._eval_module(), self.val_data, [f"pgd{c.val_steps}"])
                entry["val_eval_weights"] = report.to_dict()
            acc = summarize(report.robust_acc[f"pgd{c.val_steps}"], False)
            entry["val_score"] = acc["avg"] + acc["worst"]
        last = epoch + 1 == c.epochs
        if self.test_data is not None and ((c.eval_every and (epoch + 1) % c.eval_every == 0) or last):
            entry["test"] = self._evaluate(self._eval_module(), self.test_data, c.eval_attacks).to_dict()
        self.scheduler.step()
        entry["time"] = time.perf_counter() - start
        return entry

    # ---------------------------------------------------------------- running
    def fit(self) -> TrainResult:
        """Train until ``config.epochs``, writing a checkpoint after every epoch.

        Ctrl-C stops training, keeps the checkpoint of the last completed epoch
        (resumable with :meth:`resume` or ``fairdefense train --resume``) and
        re-raises ``KeyboardInterrupt``.
        """
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2, default=str))
            if not (self.run_dir / "last.pt").exists():
                self.save(self.run_dir / "last.pt")
        before = None
        if self.epoch == 0 and self.config.validate_first and self.val_data is not None:
            before = self._validate(self._epoch_info(-1)).to_dict()
        epochs = tqdm(range(self.epoch, self.config.epochs), desc="training", disable=not self.progress)
        try:
            for epoch in epochs:
                entry = self._run_epoch(epoch)
                if before is not None:
                    entry["val_before"], before = before, None
                self.epoch = epoch + 1
                self.history.append(entry)
                if "test" in entry and self.progress:
                    s = entry["test"]["summary"][f"{self.config.eval_attacks[0]}/robust_acc"]
                    epochs.set_postfix(test_rob_avg=f"{s['avg']:.3f}", test_rob_worst=f"{s['worst']:.3f}")
                improved = entry.get("val_score", -math.inf) > self.best_score
                if improved:
                    self.best_score, self.best_epoch = entry["val_score"], self.epoch
                if self.run_dir is not None:
                    with open(self.run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(entry) + "\n")
                    self.save(self.run_dir / "last.pt")
                    if improved:
                        self.save(self.run_dir / "best.pt")
        except KeyboardInterrupt:
            if self.run_dir is not None:
                print(f"\ninterrupted: resume with  fairdefense train --resume {self.run_dir / 'last.pt'}")
            raise
        final = self.history[-1].get("test") if self.history else None
        return TrainResult(
            model=self.model, eval_model=self._eval_module(),
            report=ClassReport.from_dict(final) if final else None,
            history=self.history, config=self.config, run_dir=self.run_dir, best_epoch=self.best_epoch,
        )

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :mod:`fairdefense.checkpoint`)."""
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "eval_model": self._eval_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {**rng_state(), "shuffle": self.shuffle.get_state()},
            "plugins": self.host.state(),
            "plugin_names": list(self.host.plugins),
            "config": json.loads(json.dumps(self.config.to_dict(), default=str)),
            "data": {"class_names": self.class_names, **self.data_meta},
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": json.loads(json.dumps(self.history)),
            "versions": versions(),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically."""
        return save_checkpoint(self.state_dict(), path)

    def resume(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (same model, data and plugins)."""
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{str(path)!r} is not a fairdefense training checkpoint (format {FORMAT_VERSION}).")
        missing = set(state["plugin_names"]) ^ set(self.host.plugins)
        if missing:
            raise ConfigError(
                f"{str(path)!r} was trained with plugins {state['plugin_names']}, not {list(self.host.plugins)}; "
                f"resume with the same plugins."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.host.load_state(state["plugins"])
        set_rng_state({k: v for k, v in state["rng"].items() if k != "shuffle"})
        self.shuffle.set_state(state["rng"]["shuffle"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self._eval_state = state["eval_model"]
        self.best_score = float(state["best_score"])
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])


def _targets_of(data: Dataset) -> Tensor:
    for attr in ("targets", "labels"):
        if hasattr(data, attr):
            return torch.as_tensor(getattr(data, attr))
    if hasattr(data, "tensors"):
        return data.tensors[1]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])  # type: ignore[arg-type]
