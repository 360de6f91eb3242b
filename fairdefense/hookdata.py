"""The values the trainer hands to hooks, and the values hooks hand back.

Hooks receive these objects as keyword arguments (see :mod:`fairdefense.hookspecs`).
They are plain dataclasses of tensors so that a plugin needs nothing but torch.
Tensors live on the training device. Plugins read them; only the trainer changes
training state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fairdefense import distributed

if TYPE_CHECKING:  # imported for type checkers only: the core imports no cycle
    from fairdefense.attacks import AttackRecord
    from fairdefense.config import TrainConfig
    from fairdefense.objectives import Objective

__all__ = [
    "RunInfo",
    "EpochInfo",
    "BatchInfo",
    "BatchOutputs",
    "Margins",
    "Selection",
    "LossWeights",
]


@dataclass
class RunInfo:
    """What is fixed for a whole run: the data's classes and the resolved config."""

    num_classes: int
    class_names: list[str]
    config: "TrainConfig"
    device: torch.device


@dataclass
class EpochInfo:
    """One epoch, as seen by the epoch-level hooks.

    ``epoch`` counts from 0 (``metrics.jsonl`` logs it as ``"epoch": epoch + 1``,
    completed epochs). ``model`` is the module being trained (read it, copy it;
    do not modify it in a hook).
    """

    epoch: int
    num_epochs: int
    model: nn.Module
    run: RunInfo
    lr: float


@dataclass
class BatchInfo:
    """One training batch, as seen by the per-batch hooks.

    ``x`` holds clean inputs of shape ``(B, ...)`` in the data's valid range and ``y``
    the labels ``(B,)`` (int64, in ``0..C-1``). ``eps`` is the base attack radius
    (a float) and ``eps_step`` the base step; ``objective`` is the base objective
    in use (its :meth:`~fairdefense.objectives.Objective.terms` gives unweighted
    per-sample losses, e.g. for a proxy model).

    Data-parallel runs: ``x`` and ``y`` are this process's share of a global batch of
    ``global_batch_size`` samples (possibly empty, see :mod:`fairdefense.sharding`).
    A statistic that depends on the whole batch is formed with
    :meth:`all_reduce_sum`, called by every process in the same order (the identity in
    one process); see ``docs/plugins.md`` for what each hook sees.
    """

    epoch: int
    index: int
    step: int
    x: Tensor
    y: Tensor
    model: nn.Module
    objective: "Objective"
    eps: float
    eps_step: float
    run: RunInfo
    global_batch_size: int | None = None

    @property
    def num_classes(self) -> int:
        return self.run.num_classes

    @property
    def global_size(self) -> int:
        """Samples in the global batch (``len(y)`` in one process)."""
        return len(self.y) if self.global_batch_size is None else self.global_batch_size

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the processes training together, as a new tensor.

        The identity (a copy) in one process. Every process calls the hook, so every
        process must call this in the same order with a tensor of the same shape, even
        on an empty local batch: e.g. per-class sums ``(C,)`` of a batch statistic.
        """
        return distributed.all_reduce_sum(tensor)

    def average_gradients(self, module: nn.Module) -> None:
        """Make ``module``'s ``.grad`` the gradient of the global-batch mean.

        Call it after each process back-propagated the mean of a loss over its local
        batch (a proxy model's step, for instance): each gradient is weighted by the
        local share of the global batch and summed over the processes. Nothing
        changes in one process.
        """
        if distributed.world_size() == 1:
            return
        share = len(self.y) / self.global_size
        for param in module.parameters():
            if param.requires_grad:
                grad = torch.zeros_like(param) if param.grad is None else param.grad
                param.grad = distributed.all_reduce_sum(grad * share)


@dataclass
class Margins:
    """What ``remargin`` returns: per-class attack radius and, optionally, step size.

    ``eps`` has shape ``(C,)``. ``step`` is ``None`` (keep the trainer's step size),
    a 0-d tensor or float (one step size for the whole batch), or a ``(C,)`` tensor
    (per-class step size). Sample ``i`` is attacked with ``eps[y_i]``.
    """

    eps: Tensor
    step: Tensor | float | None = None


@dataclass
class Selection:
    """What ``select_examples`` returns: which inputs each loss term trains on.

    ``natural`` replaces the input of the natural (clean) term, ``adversarial`` the
    input of the robust term; both ``(B, ...)`` like ``x``. ``None`` keeps the
    default (clean ``x`` and the attack's final iterate).
    """

    natural: Tensor | None = None
    adversarial: Tensor | None = None


@dataclass
class LossWeights:
    """What ``reweight`` returns: per-sample weights of the loss terms, each ``(B,)``.

    The trainer reduces each term as ``mean_i(w_i * term_i)``: weights are not
    renormalised, so a plugin that wants a weighted average returns weights that
    average to one. ``None`` leaves a term's weights at one.
    """

    natural: Tensor | None = None
    robust: Tensor | None = None


@dataclass
class BatchOutputs:
    """What the trainer computed for one batch, handed to ``reweight`` and ``extra_loss``.

    - ``x_natural``/``x_adv``: inputs of the natural and robust terms.
    - ``logits_clean``: ``f(x)`` on the clean batch, or ``None`` when the objective
      does not need it (PGD-AT without a natural term).
    - ``logits_natural``: ``f(x_natural)``; the same tensor as ``logits_clean`` unless
      ``select_examples`` replaced the natural input; ``None`` for PGD-AT.
    - ``logits_adv``: ``f(x_adv)``.
    - ``natural``/``robust``: the objective's unweighted per-sample terms ``(B,)``
      (``natural`` is ``None`` for PGD-AT and FAT). For TRADES the robust term is
      ``KL(f(x) || f(x_adv))`` and the trainer multiplies it by ``beta``; for MART
      ``natural`` is the boosted CE on ``x_adv`` and ``robust`` the KL times
      ``1 - f(x)_y`` (see :mod:`fairdefense.objectives`).
    - ``eps``: the radius each sample was attacked with ``(B,)``.
    - ``record``: the attack's iterate record when early stopping was on, else ``None``.

    The objective builds this object (:meth:`~fairdefense.objectives.Objective.terms`);
    the trainer sets ``eps`` and ``record``, so in hooks ``eps`` is always a tensor
    (``None`` only when an objective is called outside the trainer, e.g. on AWP's proxy).
    Logits carry gradients (``extra_loss`` may build on them); ``reweight`` results
    are detached by the trainer.
    """

    x_natural: Tensor
    x_adv: Tensor
    logits_clean: Tensor | None
    logits_natural: Tensor | None
    logits_adv: Tensor
    natural: Tensor | None
    robust: Tensor
    eps: Tensor | None = None
    record: "AttackRecord | None" = None
