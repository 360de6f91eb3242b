"""The generic fair adversarial trainer: one loop, hooks at every batch and epoch.

The trainer owns the optimizer, scheduler, device, data order, checkpoints and
logs, and applies what plugins return; plugins only compute (see
:mod:`fairdefense.hookspecs` for the order of calls).

Distribution is a few fixed points (see ``docs/distributed.md``): batches come from a
:class:`~fairdefense.sharding.ShardedLoader` (this process's share of each global
batch); the loss forward goes through ``DistributedDataParallel`` and is scaled so
that the averaged gradient is the one of the global-batch mean; per-class training
counts, validation and test counts, the loss and the finite-loss flag are summed
over the processes (:mod:`fairdefense.distributed`) before anything reads them; only
the main process writes (:class:`~fairdefense.run_folder.RunFolder`). In one
process every collective is the identity.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from fairdefense import distributed
from fairdefense.attacks import AttackRecord, global_batch, pgd, pgd_early_stop
from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint, rng_state, save_checkpoint, set_rng_state, versions
from fairdefense.config import TrainConfig, resolve, select_device
from fairdefense.hookdata import BatchInfo, EpochInfo, Margins, RunInfo
from fairdefense.errors import ConfigError, NonFiniteLossError
from fairdefense.evaluation import evaluate
from fairdefense.inputs import check_dataset_inputs
from fairdefense.pluginhost import PluginHost
from fairdefense.metrics import ClassReport, ClassStats, summarize
from fairdefense.objectives import make_objective
from fairdefense.splits import validation_split
from fairdefense.run_folder import RunFolder, is_training_state, load_training_state
from fairdefense.sharding import ShardedLoader
from fairdefense.threads import set_threads
from fairdefense.tracking import Tracker

__all__ = ["Trainer", "TrainResult", "StepOutput", "FAULTS", "load_weights", "resolve_run"]

#: Where a training step may first go non-finite (:attr:`StepOutput.fault` indexes it):
#: nowhere, the objective's loss, the loss weighted by ``reweight`` hooks, the loss plus
#: ``extra_loss`` hooks, the weights after the optimizer step (finite loss, overflowing
#: gradients or update).
FAULTS = ("", "objective", "reweight", "extra_loss", "weights")


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


@dataclass
class StepOutput:
    """What one training step returns, all tensors on the device (nothing read on the host).

    ``loss``: this process's share of the global-batch loss (the sum over processes is
    the loss of the global batch; detached). ``finite``: whether the loss and the
    updated weights are finite (0-d bool). ``fault``: where the step first went
    non-finite, an index into :data:`FAULTS` (0-d int64, 0: nowhere).
    ``logits_adv``/``logits_clean``: detached logits for the per-class counts.
    ``attack_steps``: steps the attack ran on this process's inputs.
    """

    loss: Tensor
    finite: Tensor
    fault: Tensor
    logits_adv: Tensor
    logits_clean: Tensor | None
    attack_steps: int


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
    if is_training_state(state):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{str(path)!r} holds neither a fairdefense checkpoint nor a state_dict.")
    targets = [model] + ([model.net] if hasattr(model, "net") else [])
    problems = []
    for target in targets:
        try:
            target.load_state_dict(state)
            return
        except RuntimeError:
            problems.append(_mismatch(target.state_dict(), state))
    raise ConfigError(
        f"weights in {str(path)!r} do not fit this model (another architecture or number of classes?): "
        f"{min(problems, key=len)}. Pass weights of the same --model and dataset."
    )


def _mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], first: int = 4) -> str:
    """The first few missing and unexpected keys and shape differences between two state_dicts."""
    def some(keys: list[str]) -> str:
        return ", ".join(keys[:first]) + (f" and {len(keys) - first} more" if len(keys) > first else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f"{label} ({len(keys)}): {some(keys)}" for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)) if keys]
    return "; ".join(parts)


def resolve_run(
    config: TrainConfig,
    class_names: Sequence[str],
    dataset_defaults: Mapping[str, Any],
    clip: tuple | None,
    plugins: Sequence[str | Any] = (),
) -> tuple[TrainConfig, PluginHost, RunInfo]:
    """Resolve ``config`` as a run does: activate ``config.plugins`` then ``plugins``, let
    their ``configure`` hooks fill unset fields, then ``dataset_defaults``, then the
    library's defaults. The resolved config names every active plugin in ``plugins`` and
    its options (objects' included, defaults too) in ``plugin_options``. Returns the
    resolved config, the plugin host and the run info."""
    config = copy.deepcopy(config)
    device = distributed.local_device(select_device(config.device))
    host = PluginHost(list(config.plugins) + list(plugins), config.plugin_options)
    config.plugins = tuple(host.plugins)
    config.plugin_options = host.options()
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
        ``batch_size`` is the global batch, whatever the number of processes.
    plugins:
        Installed plugin names and/or plugin objects, mixed. Names listed in
        ``config.plugins`` are activated first.
    test_data:
        Optional dataset scored per class after each ``eval_every`` epochs and at the end.
    optimizer, scheduler:
        Optional; default SGD with the config's lr, momentum (Nesterov if set) and weight decay, and the
        config's schedule (``multistep`` at fractions ``milestones`` of the epochs,
        ``cosine`` or ``constant``), stepped once per epoch.
    clip:
        The valid input range ``(low, high)`` (scalars or tensors broadcastable to an input).
    train_targets:
        Labels of ``train_data`` ``(N,)``; read from the data if omitted.
    augment:
        Per-sample augmentation of training inputs (not applied to the validation split).
    run_dir:
        Folder for ``config.json``, ``metrics.jsonl`` and checkpoints; defaults to
        ``config.out`` (``None``: nothing written); see :class:`~fairdefense.run_folder.RunFolder`.
        A folder that holds another run is refused unless the run is resumed
        (:meth:`restore`) or ``overwrite`` is set.
    overwrite:
        Replace a run already in ``run_dir`` (its files are removed when training starts).

    In a process group (``torchrun``, or one the caller initialised), each process
    builds the same ``Trainer``; the process group is joined from ``torchrun``'s
    environment if the caller did not (:func:`fairdefense.distributed.init_from_env`).
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
        overwrite: bool = False,
    ) -> None:
        distributed.init_from_env()
        self.class_names = [str(c) for c in class_names]
        num_classes = len(self.class_names)
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {num_classes}.")
        self.config, self.host, self.run = resolve_run(
            config or TrainConfig(), self.class_names, dataset_defaults or {}, clip, plugins
        )
        set_threads(self.config.threads)  # unset: OMP_NUM_THREADS, else the CPUs this process may use
        device = self.run.device
        self.device = device
        self.clip = clip
        check_dataset_inputs(train_data, clip)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.config.sync_bn and self.world_size > 1:  # one process: BatchNorm already sees the global batch
            if device.type == "cpu":
                raise ConfigError(
                    "sync_bn needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU. Drop --sync-bn (each "
                    "process then keeps BatchNorm statistics of its own share; see docs/distributed.md)."
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device)
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # attacks forward through ``net`` (compiled if asked), the loss through ``train_net``
        # (DistributedDataParallel in a group); plugins see the module itself
        self.net: nn.Module = torch.compile(self.model) if self.config.compile else self.model
        self.train_net: nn.Module = self.net
        if self.world_size > 1:
            ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            self.train_net = torch.compile(ddp) if self.config.compile else ddp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.config.amp == "fp16")
        self.objective = make_objective(self.config.objective, self.config.beta)
        self.progress = progress
        run_dir = run_dir if run_dir is not None else self.config.out
        self.folder: RunFolder | None = RunFolder(run_dir) if run_dir is not None else None
        self.overwrite = overwrite
        self._continues = False  # whether this trainer's state continues the run in its folder
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
            users = [f"plugin '{n}' (on_validation)" for n in self.host.implementers("on_validation")]
            purpose = " and ".join(users + (["select_best"] if self.config.select_best else []))
            train_idx, val_idx = validation_split(targets, self.class_names, self.config.val_size, self.config.seed,
                                                  purpose)
            self.val_data: Dataset | None = Subset(train_data, val_idx.tolist())
            train_base: Dataset = Subset(train_data, train_idx.tolist())
        else:
            self.val_data, train_base = None, train_data
        self.train_data = _Augmented(train_base, augment) if augment else train_base
        self.test_data = test_data

        torch.manual_seed(self.config.seed)
        self.shuffle = torch.Generator().manual_seed(self.config.seed)
        # random attack starts: one stream, drawn for whole global batches, the same on every process
        self.attack_rng = torch.Generator(device=device).manual_seed(self.config.seed)
        self.optimizer = optimizer or torch.optim.SGD(
            self.model.parameters(), lr=self.config.lr, momentum=self.config.momentum,
            weight_decay=self.config.weight_decay, nesterov=self.config.nesterov,
        )
        self.scheduler = scheduler if scheduler is not None else self._default_scheduler()
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self._eval_state: dict[str, Tensor] | None = None
        self.tracker = Tracker(self.config.loggers, self.config, self.class_names)
        if self.config.init:
            load_weights(self.model, self.config.init)

    @property
    def run_dir(self) -> Path | None:
        """The run folder's path (``None``: nothing written)."""
        return None if self.folder is None else self.folder.path

    @run_dir.setter
    def run_dir(self, path: str | Path | None) -> None:
        self.folder = None if path is None else RunFolder(path)

    # ------------------------------------------------------------------ setup
    def _check_model(self, data: Dataset, num_classes: int) -> None:
        if len(data) == 0:  # type: ignore[arg-type]
            raise ConfigError("the training data is empty.")
        x, _ = data[0]
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model(torch.as_tensor(x).unsqueeze(0).to(self.device, torch.float32))
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

    def _loader(self, data: Dataset, shuffle: bool) -> ShardedLoader:
        # evaluation loaders get a generator of their own: drawing their seed from the global
        # RNG would make the trained weights depend on how often the test split is scored
        generator = self.shuffle if shuffle else torch.Generator().manual_seed(self.config.seed)
        return ShardedLoader(
            data, self.config.batch_size, rank=self.rank, world_size=self.world_size, shuffle=shuffle,
            generator=generator, workers=self.config.workers, pin_memory=self.device.type == "cuda",
        )

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    # -------------------------------------------------------------- one batch
    def _radius(self, margins: Margins | None, x: Tensor, y: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """Per-sample radius and step from ``remargin``'s answer (the config's without one)."""
        c = self.config
        if margins is None:
            return c.eps, c.eps_step
        eps = margins.eps.to(x)[y]
        step: float | Tensor = c.eps_step
        if margins.step is not None:
            s = torch.as_tensor(margins.step, dtype=x.dtype, device=x.device)
            step = s[y] if s.dim() else s
        return eps, step

    def _attack(self, x: Tensor, y: Tensor, eps, step) -> tuple[Tensor, AttackRecord | None, int]:
        """The training attack through the bare (or compiled) module, in ``attack_mode`` (eval by default)."""
        c = self.config
        start = c.random_start or self.objective.random_start
        attack = dict(norm=c.norm, loss=self.objective.attack_loss, random_start=start, clip=self.clip,
                      generator=self.attack_rng)
        self.model.train(c.attack_mode == "train")
        try:
            if self.objective.early_stop or self.host.implements("select_examples"):
                record = pgd_early_stop(self.net, x, y, eps, step, c.attack_steps, extra_steps=c.early_stop_extra_steps,
                                        **attack)
                return record.x_adv, record, record.steps
            return pgd(self.net, x, y, eps, step, c.attack_steps, **attack), None, c.attack_steps
        finally:
            self.model.train()

    def _shift(self, perturbation: dict[str, Tensor] | None, sign: float) -> None:
        if perturbation:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, delta in perturbation.items():
                    params[name].add_(delta, alpha=sign)

    def step(self, epoch: int, index: int, x: Tensor, y: Tensor, window: tuple[int, int] | None = None) -> StepOutput:
        """One training step on this process's share ``(x, y)`` of a global batch.

        Calls the per-batch hooks in contract order inside one autocast region, then
        back-propagates and steps the optimizer. ``window = (offset, total)`` places the
        rows in their global batch (``None``: the batch is the whole global batch). The
        local mean loss is scaled by ``len(y) * world_size / total``, so that
        DistributedDataParallel's gradient average is the gradient of the mean over the
        global batch. Nothing is read on the host.
        """
        c = self.config
        offset, total = window or (0, len(y))
        info = BatchInfo(epoch, index, self.global_step, x, y, self.model, self.objective, c.eps, c.eps_step,
                         self.run, total)
        with self._autocast():
            eps, step = self._radius(self.host.remargin(info), x, y)
            with global_batch(offset, total):
                x_adv, record, steps = self._attack(x, y, eps, step)
            x_natural = None
            if record is not None:
                selection = self.host.select_examples(info, record)
                if selection is not None:
                    x_natural = selection.natural
                    x_adv = selection.adversarial if selection.adversarial is not None else x_adv
            perturbation = self.host.perturb_weights(info, x_adv)
            self._shift(perturbation, 1.0)
            # the objective's forward passes through train_net give what the hooks receive
            outputs = replace(self.objective.terms(self.train_net, x, y, x_adv, x_natural),
                              eps=torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(len(y)), record=record)
            w_natural, w_robust = self.host.reweight(info, outputs)
            loss = self.objective.reduce(outputs, w_natural, w_robust)
            stages = [(FAULTS.index("reweight"), loss)]
            if w_natural is not None or w_robust is not None:
                stages.insert(0, (FAULTS.index("objective"), self.objective.reduce(outputs).detach()))
            extra = self.host.extra_loss(info, outputs)
            if extra is not None:
                loss = loss + extra
                stages.append((FAULTS.index("extra_loss"), loss))
        share = len(y) / total
        self.optimizer.zero_grad(set_to_none=True)
        # an empty share (a final global batch smaller than the number of processes) has a NaN
        # mean but zero gradients; it contributes nothing and is not a non-finite loss
        self.scaler.scale(loss * (share * self.world_size)).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._shift(perturbation, -1.0)
        part = (loss.detach().float() * share) if len(y) else loss.new_zeros((), dtype=torch.float32)
        self.global_step += 1
        fault = self._fault(stages if len(y) else [])
        clean = None if outputs.logits_clean is None else outputs.logits_clean.detach()
        return StepOutput(part, fault == 0, fault, outputs.logits_adv.detach(), clean, steps)

    def _fault(self, stages: Sequence[tuple[int, Tensor]]) -> Tensor:
        """The :data:`FAULTS` index of the first non-finite stage of the loss (``stages`` in
        the order they were computed), else of the updated weights, else 0; on the device.
        The weights are checked through their total norm: one fused pass, no host read."""
        params = [p.detach() for p in self.model.parameters()]
        total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # fused, torch >= 2.6
        norm = total_norm(params, error_if_nonfinite=False) if total_norm else torch.stack([p.norm() for p in params]).norm()
        fault = torch.where(torch.isfinite(norm), 0, FAULTS.index("weights")).to(self.device)
        for code, value in reversed(stages):  # an earlier non-finite stage takes the blame
            fault = torch.where(torch.isfinite(value.detach()), fault, code)
        return fault

    # -------------------------------------------------------------- one epoch
    def _epoch_info(self, epoch: int) -> EpochInfo:
        return EpochInfo(epoch, self.config.epochs, self.model, self.run, self.optimizer.param_groups[0]["lr"])

    def _evaluate(self, model: nn.Module, data: Dataset, attacks: Sequence[str], losses: bool = False) -> ClassReport:
        """Per-class report on ``data``, sharded across the processes and summed as counts."""
        return evaluate(
            model, self._loader(data, shuffle=False).pairs(), self.class_names, attacks, eps=self.config.eps,
            norm=self.config.norm, clip=self.clip, device=self.device, seed=self.config.seed, losses=losses,
            reduce=distributed.all_reduce_sum,
        )

    def _validate(self, info: EpochInfo) -> ClassReport:
        """The per-class validation report, computed once and handed to every ``on_validation``."""
        report = self._evaluate(self.model, self.val_data, [self.config.validation_attack()], losses=True)
        self.host.notify("on_validation", epoch=info, report=report)
        return report

    def _eval_module(self) -> nn.Module:
        if self._eval_state is None:
            return self.model
        module = copy.deepcopy(self.model)
        module.load_state_dict(self._eval_state)
        return module

    def _sync_buffers(self) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics), as DDP does at each forward."""
        if self.world_size > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def _check_finite(self, epoch: int, first_bad: Tensor, sentinel: int) -> None:
        """Raise the same :class:`NonFiniteLossError` on every process if any step went
        non-finite; ``first_bad`` is ``batch * len(FAULTS) + fault`` of the first one."""
        code = int(distributed.all_reduce_min(first_bad).item())
        if code == sentinel:
            return
        index, fault = divmod(code, len(FAULTS))
        where = f"epoch {epoch + 1}, batch {index + 1}"
        kept = f"The last good checkpoint is kept{f' in {self.run_dir}' if self.run_dir else ''}"
        hook = FAULTS[fault]
        if hook in ("reweight", "extra_loss"):
            names = ", ".join(f"'{n}'" for n in self.host.implementers(hook))
            message = (f"the loss became non-finite at {where} through plugin {names}, hook '{hook}' (the loss "
                       f"before it was finite); training stopped. {kept}. Check that plugin's "
                       f"{'weights' if hook == 'reweight' else 'extra loss'} and options.")
        elif hook == "weights":
            message = (f"the weights became non-finite at {where} although the loss was finite: the gradients or "
                       f"the update overflowed; training stopped before any checkpoint took them. {kept}. "
                       f"Lower the learning rate, or use --amp fp16 (its gradient scaler skips such steps).")
        else:
            message = (f"the loss became non-finite at {where}; training stopped. {kept}. "
                       f"Lower the learning rate or check the plugins' weights and extra losses.")
        raise NonFiniteLossError(message, epoch=epoch + 1, batch=index + 1)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        c = self.config
        start = time.perf_counter()
        info = self._epoch_info(epoch)
        self.host.notify("on_epoch_start", epoch=info)
        stats = ClassStats.zeros(self.run.num_classes, self.device)
        loader = self._loader(self.train_data, shuffle=True)
        show = self.progress and distributed.is_main()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, disable=not show)
        sentinel = torch.iinfo(torch.int64).max
        first_bad = torch.tensor(sentinel, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        steps_sum, n_batches, n_samples = 0, 0, 0
        for index, (x, y, window) in enumerate(loader):
            x = x.to(self.device, dtype=torch.float32, non_blocking=True)
            y = y.to(self.device, non_blocking=True).long()
            if c.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.step(epoch, index, x, y, window)
            stats.update(y, out.logits_adv, out.logits_clean)
            loss_sum += out.loss
            here = out.fault + index * len(FAULTS)
            first_bad = torch.where(out.finite, first_bad, torch.minimum(first_bad, here))
            steps_sum += out.attack_steps
            n_batches += 1
            n_samples += window[1]
            if n_batches % c.log_every == 0 or n_batches == len(loader):
                self._check_finite(epoch, first_bad, sentinel)
                mean = distributed.all_reduce_sum(loss_sum).item() / n_batches
                bar.update(n_batches - bar.n)
                if show:
                    rob = summarize(stats.robust_acc, higher_is_worse=False)
                    rate = n_samples / (time.perf_counter() - start)
                    bar.set_postfix(loss=f"{mean:.3f}", rob_avg=f"{rob['avg']:.3f}",
                                    rob_worst=f"{rob['worst']:.3f}", img_s=f"{rate:.0f}")
        bar.close()
        loss = distributed.all_reduce_sum(loss_sum).item() / max(n_batches, 1)
        train_time = time.perf_counter() - start
        for f in dataclasses.fields(stats):  # counts of every process, whatever fields ClassStats has
            if isinstance(getattr(stats, f.name), Tensor):
                setattr(stats, f.name, distributed.all_reduce_sum(getattr(stats, f.name)))
        self._sync_buffers()
        logged = self.host.on_epoch_end(info, stats)
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": info.lr,
            "loss": loss,
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
                report = self._evaluate(self._eval_module(), self.val_data, [c.validation_attack()])
                entry["val_eval_weights"] = report.to_dict()
            acc = summarize(report.robust_acc[c.validation_attack()], False)
            entry["val_score"] = acc["avg"] + acc["worst"]
        last = epoch + 1 == c.epochs
        if self.test_data is not None and ((c.eval_every and (epoch + 1) % c.eval_every == 0) or last):
            entry["test"] = self._evaluate(self._eval_module(), self.test_data, c.eval_attacks).to_dict()
        self.scheduler.step()
        entry["time"] = time.perf_counter() - start
        return entry

    # ---------------------------------------------------------------- running
    def _start_folder(self) -> None:
        """Claim the run folder, write ``config.json`` and the epoch-0 checkpoint; after an
        elastic restart, restore ``last.pt`` first. Every process raises the main process's refusal."""
        folder = self.folder
        main = distributed.is_main()
        restarted = distributed.restart_count() > 0 and not self._continues
        if restarted and distributed.broadcast_object(folder.has_checkpoint("last") if main else None):
            self.restore(folder.last)
            if main:
                print(f"restart {distributed.restart_count()}: resumed from {folder.last} (epoch {self.epoch})")
        problem = None
        if main:
            try:
                folder.open(resume=self._continues, overwrite=self.overwrite)
            except ConfigError as exc:
                problem = str(exc)
        problem = distributed.broadcast_object(problem)
        if problem is not None:
            raise ConfigError(problem)
        self._continues = True
        folder.write_config(self.config.to_dict())
        if not distributed.broadcast_object(folder.has_checkpoint("last") if main else None):
            self.save(folder.last)

    def fit(self) -> TrainResult:
        """Train until ``config.epochs``, writing a checkpoint after every epoch.

        Ctrl-C stops training, keeps the checkpoint of the last completed epoch
        (resumable with :meth:`restore` then :meth:`fit`, :func:`fairdefense.resume`
        or ``fairdefense train --resume``) and re-raises ``KeyboardInterrupt``. A
        worker group restarted by ``torchrun --max-restarts`` continues from the run
        folder's ``last.pt`` by itself.
        """
        if self.folder is not None:
            self._start_folder()
        try:
            return self._fit()
        finally:
            if self.folder is not None:
                self.folder.close()

    def _fit(self) -> TrainResult:
        before = None
        if self.epoch == 0 and self.config.validate_first and self.val_data is not None:
            before = self._validate(self._epoch_info(-1)).to_dict()
        show = self.progress and distributed.is_main()
        epochs = tqdm(range(self.epoch, self.config.epochs), desc="training", disable=not show)
        try:
            for epoch in epochs:
                with distributed.peer_failures(f"epoch {epoch + 1}"):
                    entry = self._run_epoch(epoch)
                    if before is not None:
                        entry["val_before"], before = before, None
                    self.epoch = epoch + 1
                    self.history.append(entry)
                    if "test" in entry and show:
                        s = entry["test"]["summary"][f"{self.config.eval_attacks[0]}/robust_acc"]
                        epochs.set_postfix(test_rob_avg=f"{s['avg']:.3f}", test_rob_worst=f"{s['worst']:.3f}")
                    improved = entry.get("val_score", -math.inf) > self.best_score
                    if improved:
                        self.best_score, self.best_epoch = entry["val_score"], self.epoch
                    if self.folder is not None:
                        self.folder.append_history(entry)
                        if distributed.is_main():  # trackers see what metrics.jsonl holds, written by the main process
                            self.tracker.log_epoch(self.folder.path, entry)
                        state = self.state_dict()
                        self.folder.save(state, "last")
                        if improved:
                            self.folder.save(state, "best")
        except KeyboardInterrupt:
            if self.folder is not None and distributed.is_main():
                print(f"\ninterrupted: resume with  fairdefense train --resume {self.folder.last}")
            raise
        if self.folder is not None:
            self.tracker.close()
        final = self.history[-1].get("test") if self.history else None
        return TrainResult(
            model=self.model, eval_model=self._eval_module(),
            report=ClassReport.from_dict(final) if final else None,
            history=self.history, config=self.config, run_dir=self.run_dir, best_epoch=self.best_epoch,
        )

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :mod:`fairdefense.checkpoint`).

        In a process group every process must call it (the RNG states of all ranks are
        gathered into ``rng_ranks``); ``rng`` holds this process's.
        """
        own = rng_state()
        return {
            "format": FORMAT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "eval_model": self._eval_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {**own, "shuffle": self.shuffle.get_state(), "attack": self.attack_rng.get_state()},
            "rng_ranks": distributed.all_gather_object(own),
            "world_size": self.world_size,
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
        """Write a checkpoint atomically (the main process writes; every process must call it)."""
        state = self.state_dict()
        if distributed.is_main():
            save_checkpoint(state, path)
        return Path(path)

    def restore(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save` (same model, data and plugins); does not train.

        In a process group the main process reads the file and sends it to the others.
        With the number of processes it was written with, every process gets its own
        RNG state back; with another number, every process takes rank 0's (the data
        order and the attack starts stay exact either way; see ``docs/distributed.md``).
        """
        state = distributed.broadcast_object(
            load_training_state(path, hint="; use --init to fine-tune from weights.") if distributed.is_main() else None
        )
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
        self.host.load_state(_to_device(state["plugins"], self.device))
        ranks = state.get("rng_ranks") or []
        own = ranks[self.rank] if len(ranks) == self.world_size else state["rng"]
        set_rng_state(own)
        self.shuffle.set_state(state["rng"]["shuffle"])
        if "attack" in state["rng"]:
            self.attack_rng.set_state(state["rng"]["attack"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self._eval_state = _to_device(state["eval_model"], self.device)
        self.best_score = float(state["best_score"])
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        self._continues = True


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in nested dicts and lists moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _targets_of(data: Dataset) -> Tensor:
    for attr in ("targets", "labels"):
        if hasattr(data, attr):
            return torch.as_tensor(getattr(data, attr))
    if hasattr(data, "tensors"):
        return data.tensors[1]
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])  # type: ignore[arg-type]
