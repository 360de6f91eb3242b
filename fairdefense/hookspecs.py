"""The plugin contract: every hook a fairness strategy may implement.

A plugin is an object (usually a :class:`fairdefense.FairnessPlugin` subclass)
whose methods are named after the hooks below. The docstring of each hook is its
contract: when the trainer calls it, what it receives, what it may return, and how
the results of several active plugins combine. ``docs/plugins.md`` renders these
docstrings; a test fails when a hook is missing from it.

Lifecycle of one run::

    configure                                   once, before the first epoch
    for each epoch:
        on_epoch_start
        for each batch:
            remargin                            -> per-class attack radius
            (attack runs; iterates recorded if select_examples is implemented)
            select_examples                     -> inputs of each loss term
            perturb_weights                     -> weight perturbation (AWP)
            (forward passes, per-sample loss terms)
            reweight                            -> per-sample loss weights
            extra_loss                          -> additional loss terms
            (backward, optimizer step, weight perturbation undone)
        on_epoch_end                            per-class training statistics
        on_validation                           per-class validation metrics
        weights_to_evaluate                     weights to evaluate / export
        plugin_state                            saved into the checkpoint
    load_plugin_state                           when a run resumes

Hooks are called with keyword arguments; an implementation may accept any subset
of a hook's arguments. A hook that returns ``None`` abstains. Implementations are
called one at a time in activation order; ``@hookimpl(tryfirst=True)`` moves one
before the unmarked ones, ``trylast=True`` after them (see
:mod:`fairdefense.pluginhost` for the pluggy options that are refused).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from fairdefense.attacks import AttackRecord
    from fairdefense.config import TrainConfig
    from fairdefense.hookdata import (
        BatchInfo,
        BatchOutputs,
        EpochInfo,
        LossWeights,
        Margins,
        RunInfo,
        Selection,
    )
    from fairdefense.metrics import ClassReport, ClassStats

PROJECT_NAME = "fairdefense"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookspec", "HOOK_NAMES", "EXCLUSIVE_HOOKS"]


# --------------------------------------------------------------------- run level
@hookspec
def configure(config: "TrainConfig", run: "RunInfo") -> "dict[str, Any] | None":
    """Declare the training settings this strategy needs.

    When: once, after the plugins are activated and the data is loaded, before the
    first epoch (also before a resumed run continues).

    Receives: ``config``, the user's :class:`~fairdefense.config.TrainConfig` (read
    only), and ``run`` (number of classes, class names, device).

    Returns: ``None``, or a dict mapping :class:`TrainConfig` field names to the
    values the strategy requires, for example ``{"objective": "trades", "beta": 6.0}``
    (BAT) or ``{"val_size": 300, "val_steps": 20}`` (FRL).

    Combination: a value fills a setting the user left unset. Two plugins asking
    for different values of one setting, or a plugin asking for a value other
    than one the user set explicitly, is a :class:`~fairdefense.PluginError` that
    names both parties.

    Distributed: called on every process; return the same settings on each.
    """


# ------------------------------------------------------------------- per epoch
@hookspec
def on_epoch_start(epoch: "EpochInfo") -> None:
    """Prepare for an epoch.

    When: at the start of every epoch, before its first batch.

    Receives: ``epoch`` (index from 0, number of epochs, the model, the learning
    rate, the run). Hooks count epochs from 0; ``metrics.jsonl`` logs epoch ``k``
    as ``"epoch": k + 1`` (completed epochs).

    Returns: nothing. Every implementation is called, in activation order.

    Distributed: called on every process; the model is the same on each.
    """


@hookspec
def on_epoch_end(epoch: "EpochInfo", train_stats: "ClassStats") -> "dict[str, Any] | None":
    """Observe the epoch's per-class training statistics; log the plugin's own values.

    When: after the last batch of every epoch, before validation.

    Receives: ``train_stats``, a :class:`~fairdefense.metrics.ClassStats` counted from
    the logits the trainer already computed on the examples it trained on (no
    extra attack): per class, the number of samples (``counts``), how many
    adversarial inputs were classified correctly (``robust_correct``; the fraction
    is ``robust_acc``), for objectives with a clean forward pass (TRADES, MART) how
    many clean ones (``clean_correct`` and ``clean_acc``; ``None`` for PGD-AT and
    FAT), and the
    ``(C, C)`` sums of the softmax outputs on the adversarial inputs, row = true
    class (``robust_prob_sums``; ``robust_prob_mean`` is the per-class mean
    prediction, e.g. DAFA's class similarity), accumulated on the device from the
    training logits (train mode, before the batch's optimizer step).

    Distributed: global. Every tensor field is summed over the processes before the
    call, so every process sees the single-process counts; the model is the same on
    each (BatchNorm buffers: rank 0's).

    Returns: ``None``, or a dict of values to log (numbers, strings, tensors, lists
    and dicts of these): the trainer writes it into this epoch's line of
    ``metrics.jsonl`` under ``"plugins": {"<plugin name>": {...}}``. That line's
    ``"epoch"`` counts completed epochs from 1, so hook epoch ``epoch.epoch == k``
    is logged on the line with ``"epoch": k + 1``.

    Combination: every implementation is called, in activation order; each
    plugin's values are logged under its own name.
    """


@hookspec
def on_validation(epoch: "EpochInfo", report: "ClassReport") -> None:
    """Observe per-class metrics on the held-out validation split.

    When: after ``on_epoch_end``, every epoch, only if some active plugin
    implements this hook (or best-checkpoint selection is on). The trainer holds
    out ``config.val_size`` training samples per class (stratified, fixed by the
    seed) and computes the report once per epoch, with the model in eval mode,
    whatever the number of plugins that read it. If ``config.validate_first`` is
    set (FRL's ``configure`` sets it: its code validates before every epoch), it
    is also called once before the first epoch of a run, with ``epoch.epoch == -1``
    (that report is logged as ``val_before`` in the first line of ``metrics.jsonl``).

    Receives: ``report``, a :class:`~fairdefense.metrics.ClassReport` with per-class
    clean and robust accuracy under the validation attack ``config.validation_attack()``
    (``config.val_steps`` steps of the ``config.val_attack`` family at the base radius,
    step ``eps/4``: CE-PGD from a uniform start by default, TRADES's KL attack from
    ``x + 0.001 N(0, I)`` when WAT asks for ``"trades"``) and the per-class mean losses
    ``report.losses["clean_ce"]``, ``["adv_ce"]`` and ``["kl"]`` (TRADES's
    ``KL(f(x) || f(x_adv))``) on that attack's examples.

    Distributed: global. The split is sharded across the processes and the per-class
    counts and loss sums are summed before any rate is formed: every process sees
    the single-process report.

    Returns: nothing. Every implementation is called, in activation order.
    """


@hookspec
def weights_to_evaluate(epoch: "EpochInfo") -> "dict[str, Tensor] | None":
    """Supply the weights to evaluate and export instead of the trained ones.

    When: after ``on_validation`` at the end of every epoch; the returned weights
    are used for that epoch's test evaluation and stored in the checkpoint as
    ``eval_model`` (and used by ``fairdefense evaluate``), while training goes on
    from the trained weights (e.g. EMA, FAWA).

    Returns: ``None`` (evaluate the trained weights) or a full ``state_dict`` for the
    model (buffers included). Exclusive: at most one active plugin may implement it.

    Distributed: called on every process; return the same weights on each (they
    are, when computed from the model and the global statistics above).
    """


# ------------------------------------------------------------------- per batch
@hookspec
def remargin(batch: "BatchInfo") -> "Tensor | Margins | None":
    """Choose the attack radius per class for this batch.

    When: every training batch, before the attack.

    Receives: ``batch`` (clean inputs, labels, base ``eps`` and ``eps_step``).

    Returns: ``None`` (every sample uses the base radius), a tensor of shape
    ``(C,)`` with each class's radius, or :class:`~fairdefense.Margins` with a per-class
    radius and a step size (scalar or ``(C,)``). Radii must be finite and
    positive; sample ``i`` is attacked within ``eps[y_i]``.

    Distributed: local. ``batch.x``/``batch.y`` are this process's share of the global
    batch (possibly empty); the per-class answer must be the same on every process:
    form any batch statistic with :meth:`~fairdefense.BatchInfo.all_reduce_sum` (FRL's
    step over the classes present in the global batch does).

    Combination: exclusive; at most one active plugin may implement it.
    """


@hookspec
def select_examples(batch: "BatchInfo", record: "AttackRecord") -> "Selection | None":
    """Choose which attack iterate each loss term trains on.

    When: every training batch, right after the attack. If an active plugin
    implements this hook (or the objective is early-stopped, as FAT is), the
    trainer runs the attack with early stopping and records the iterates
    (otherwise it does not pay for them): each sample stops
    ``config.early_stop_extra_steps`` steps after it is first misclassified
    (FAT's tau).

    Receives: ``record``, an :class:`~fairdefense.attacks.AttackRecord` with
    ``x_adv`` (each sample's final iterate), ``x_last_correct`` (the last iterate
    still classified correctly; the start for samples wrong at the start),
    ``x_first_wrong`` (the first misclassified iterate plus the extra steps; the
    final iterate for samples never fooled), ``fooled`` and ``stop_step``.

    Returns: ``None`` or a :class:`~fairdefense.Selection` naming the inputs of the
    natural and/or robust term, each ``(B, ...)`` within the batch's radius.

    Distributed: local, per sample (the record's rows are this process's share; each
    sample's iterates do not depend on the other samples).

    Combination: exclusive; at most one active plugin may implement it.
    """


@hookspec
def perturb_weights(batch: "BatchInfo", x_adv: "Tensor") -> "dict[str, Tensor] | None":
    """Propose a temporary perturbation of the model weights (AWP).

    When: every training batch, after ``select_examples``, before the forward
    passes of the loss.

    Receives: ``x_adv``, the robust term's inputs.

    Returns: ``None`` or a dict mapping parameter names (as in
    ``model.named_parameters()``) to tensors of the same shape. The trainer adds
    them to the weights for this batch's loss and backward pass and subtracts them
    after the optimizer step.

    Distributed: local inputs; return the same perturbation on every process. A proxy
    step on the local batch becomes the global-batch step with
    :meth:`~fairdefense.BatchInfo.average_gradients` (AWP does).

    Combination: exclusive; at most one active plugin may implement it.
    """


@hookspec
def reweight(batch: "BatchInfo", outputs: "BatchOutputs") -> "LossWeights | None":
    """Weight each sample's loss terms.

    When: every training batch, after the forward passes.

    Receives: ``outputs`` (logits, unweighted per-sample natural and robust terms,
    the radius each sample was attacked with).

    Returns: ``None`` or :class:`~fairdefense.LossWeights` with ``(B,)`` finite,
    non-negative weights for the natural and/or robust term. The loss is
    ``mean(w_nat * natural) + beta * mean(w_rob * robust)`` (TRADES, MART; the
    objective's ``reduce``) and ``mean(w_rob * robust)`` for PGD-AT and FAT, which
    have no natural term; no gradient flows through the weights.

    Distributed: local. ``outputs`` holds this process's share of the global batch and
    the trainer averages over the global batch (it scales the local mean by the local
    share). A normalisation over the batch (weights that average to one, class sums)
    must use :meth:`~fairdefense.BatchInfo.all_reduce_sum` (FAAL's margin sums, FRL's
    and Baseline Reweight's weighted means do).

    Combination: the weights of several plugins multiply elementwise; nothing is
    renormalised.
    """


@hookspec
def extra_loss(batch: "BatchInfo", outputs: "BatchOutputs") -> "Tensor | None":
    """Add a term to this batch's loss.

    When: every training batch, after ``reweight``.

    Receives: ``outputs``, whose logits carry gradients.

    Returns: ``None`` or a finite scalar tensor, differentiable w.r.t. the model
    (e.g. BAT's uniform-target KL).

    Distributed: local. Return a per-sample mean over the local batch: the trainer
    scales it by the local share of the global batch, so the processes together add
    the global-batch mean. On an empty local share (a final global batch smaller
    than the number of processes) the value is ignored.

    Combination: the terms of all plugins are added to the loss.
    """


# ------------------------------------------------------------------------ state
@hookspec
def plugin_state() -> "dict[str, Any] | None":
    """Return the strategy's state, so that a resumed run continues exactly.

    When: whenever the trainer writes a checkpoint: ``last.pt`` once before the
    first epoch of a new run (so that even an interrupted first epoch can be
    resumed), then after every epoch (and ``best.pt`` when the selection improves).
    Ctrl-C keeps the checkpoint of the last completed epoch.

    Returns: ``None`` (stateless) or a dict of tensors, numbers, strings, lists and
    dicts of these (it is saved with ``torch.save`` and read back with
    ``weights_only=True``).

    Distributed: called on every process; the main process's state is saved, so keep
    it the same on every process.

    Combination: each plugin's state is stored under its own name.
    """


@hookspec
def load_plugin_state(state: "dict[str, Any]") -> None:
    """Restore the state returned by ``plugin_state``.

    When: once, when a run resumes from a checkpoint, after ``configure`` and
    before the first resumed epoch. Only called with the state this plugin saved
    (looked up by plugin name).

    Returns: nothing.

    Distributed: every process receives the main process's saved state.
    """


#: Names of every hook in the contract, in lifecycle order (the order of this module).
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, value in list(globals().items()) if callable(value) and hasattr(value, f"{PROJECT_NAME}_spec")
)

#: Hooks that at most one active plugin may implement (activation refuses a second).
EXCLUSIVE_HOOKS: tuple[str, ...] = ("remargin", "select_examples", "perturb_weights", "weights_to_evaluate")
