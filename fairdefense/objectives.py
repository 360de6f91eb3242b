"""Base objectives: PGD-AT, TRADES, MART and FAT, and the objective registry.

An objective computes the *unweighted per-sample* loss terms of one batch and
returns them, with the logits, as the :class:`~fairdefense.hookdata.BatchOutputs`
that the ``reweight`` and ``extra_loss`` hooks receive. Two terms: ``natural``
(``None`` when the objective has none) and ``robust``; the trainer reduces them as
``mean(w_nat * natural) + beta * mean(w_rob * robust)`` (:meth:`Objective.reduce`),
the weights coming from the plugins.

- PGD-AT (Madry et al. 2018): ``robust = CE(f(x'), y)``; no natural term; beta 1.
  Attack: CE, uniform random start.
- TRADES (Zhang et al. 2019): ``natural = CE(f(x), y)``, ``robust = KL(f(x) || f(x'))``.
  Attack: the KL term, from ``x + 0.001 N(0, I)``.
- MART (Wang et al. 2020, code yisenwang/MART ``mart.py``): ``natural`` is the
  boosted CE on the adversarial example,
  ``CE(f(x'), y) - log(1.0001 - f(x')_{y'} + 1e-12)`` with ``y'`` the most likely
  wrong class of ``f(x')``; ``robust = KL(f(x) || f(x')) * (1.0000001 - f(x)_y)``
  (the KL with ``log(f(x') + 1e-12)``; the gradient flows through ``f(x)_y`` too).
  Constants as in the code. Attack: CE, from ``x + 0.001 N(0, I)``.
- FAT (Zhang et al. 2020, friendly adversarial training): PGD-AT's loss on the
  early-stopped attack: each sample stops ``tau = config.early_stop_extra_steps``
  steps after it is first misclassified (:func:`~fairdefense.attacks.pgd_early_stop`).
  Attack: CE, uniform random start.

Deviations from the authors' code:

- MART's code attacks with 10 steps of 0.007 within 0.031 (pass ``eps_step = 0.226 * eps``;
  the trainer's default step is ``eps / 4``). As for TRADES, the noisy start is clipped
  into the ball and the input range before the first step (the code clips after it).
- FAT's code (zjfheart/Friendly-Adversarial-Training) raises tau during training by
  default (0, then 1 after 50 of 120 epochs, then 2 after 90); here tau is one setting
  for the whole run. CFA's code trains its FAT rows with tau 3, in train mode, and stops a
  sample once it has been misclassified tau times; the trainer stops it tau steps after
  its first misclassification (FAT's own rule).

Objectives are plugins: each is a class registered in the ``fairdefense.objectives``
entry-point group (the four above are declared there by fairdefense itself), found
by :func:`list_objectives` and built by name with :func:`make_objective`. The
contract for a third-party objective is in ``docs/plugins.md``.
"""
from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.hookdata import BatchOutputs
from fairdefense.errors import ConfigError, PluginError
from fairdefense.pluginhost import entry_points, installed, nearest

__all__ = [
    "ENTRY_POINT_GROUP",
    "Objective",
    "PGDAT",
    "TRADES",
    "MART",
    "FAT",
    "ObjectiveInfo",
    "list_objectives",
    "objective_class",
    "make_objective",
]

#: Entry-point group of base objectives (built-in and third-party alike).
ENTRY_POINT_GROUP = "fairdefense.objectives"


class Objective:
    """A base objective; subclasses set the class attributes and implement :meth:`terms`.

    - ``name``: the name it is registered under.
    - ``attack_loss``: the loss the training attack ascends (``"ce"``, ``"kl"`` or ``"cw"``).
    - ``random_start``: the attack's start (``"uniform"``, ``"normal"`` for
      ``x + 0.001 N(0, I)``, or ``"none"``); ``config.random_start`` overrides it.
    - ``early_stop``: whether the training attack stops early (FAT's rule, with
      ``config.early_stop_extra_steps`` extra steps) and trains on its stopped iterate.
    - ``beta``: the factor of the robust term.
    - ``has_beta``: ``False`` for an objective whose robust term has the fixed factor 1
      (PGD-AT, FAT): it is built without arguments and :func:`make_objective` does not
      pass it ``beta`` (``config.beta`` is TRADES's and MART's factor).
    """

    name: str = ""
    has_beta: bool = True
    attack_loss: str = "ce"
    random_start: str = "uniform"
    early_stop: bool = False

    def __init__(self, beta: float = 6.0) -> None:
        self.beta = float(beta)

    def terms(
        self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, x_natural: Tensor | None = None
    ) -> BatchOutputs:
        """Forward what the objective needs; return logits and unweighted per-sample terms.

        ``x`` is the clean batch, ``x_adv`` the robust term's input and ``x_natural``
        the natural term's input if a plugin replaced it (``None``: ``x``). The result's
        ``eps`` and ``record`` are left ``None``; the trainer sets them.
        """
        raise NotImplementedError

    def reduce(self, outputs: BatchOutputs, w_natural: Tensor | None = None, w_robust: Tensor | None = None) -> Tensor:
        """The scalar loss: ``mean(w_nat * natural) + beta * mean(w_rob * robust)``."""
        robust = outputs.robust if w_robust is None else w_robust * outputs.robust
        loss = self.beta * robust.mean()
        if outputs.natural is not None:
            natural = outputs.natural if w_natural is None else w_natural * outputs.natural
            loss = loss + natural.mean()
        return loss


def _kl(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """Per-sample ``KL(f(x) || f(x'))`` (softmax outputs, summed over classes)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="none").sum(dim=1)


class PGDAT(Objective):
    """Madry et al.'s PGD adversarial training: cross-entropy on PGD-CE examples."""

    name = "at"
    attack_loss = "ce"
    random_start = "uniform"
    has_beta = False

    def __init__(self) -> None:
        super().__init__(1.0)

    def terms(self, model, x, y, x_adv, x_natural=None) -> BatchOutputs:
        logits_natural = model(x_natural) if x_natural is not None else None
        natural = F.cross_entropy(logits_natural, y, reduction="none") if x_natural is not None else None
        logits_adv = model(x_adv)
        return BatchOutputs(
            x_natural=x if x_natural is None else x_natural, x_adv=x_adv, logits_clean=None,
            logits_natural=logits_natural, logits_adv=logits_adv, natural=natural,
            robust=F.cross_entropy(logits_adv, y, reduction="none"),
        )


class FAT(PGDAT):
    """Zhang et al.'s friendly adversarial training: PGD-AT on the early-stopped (FAT) attack."""

    name = "fat"
    early_stop = True


class TRADES(Objective):
    """Zhang et al.'s TRADES: CE(f(x), y) + beta * KL(f(x) || f(x'))."""

    name = "trades"
    attack_loss = "kl"
    random_start = "normal"

    def terms(self, model, x, y, x_adv, x_natural=None) -> BatchOutputs:
        logits_clean = model(x)
        logits_natural = logits_clean if x_natural is None else model(x_natural)
        logits_adv = model(x_adv)
        return BatchOutputs(
            x_natural=x if x_natural is None else x_natural, x_adv=x_adv, logits_clean=logits_clean,
            logits_natural=logits_natural, logits_adv=logits_adv,
            natural=F.cross_entropy(logits_natural, y, reduction="none"), robust=_kl(logits_clean, logits_adv),
        )


class MART(Objective):
    """Wang et al.'s MART: boosted CE on x' plus beta * KL(f(x) || f(x')) * (1 - f(x)_y)."""

    name = "mart"
    attack_loss = "ce"
    random_start = "normal"

    def terms(self, model, x, y, x_adv, x_natural=None) -> BatchOutputs:
        if x_natural is not None:
            raise ConfigError(
                "MART has no term on a clean input that select_examples could replace; "
                "use the TRADES objective with a plugin that selects natural inputs (e.g. bat)."
            )
        logits_clean = model(x)
        logits_adv = model(x_adv)
        p_adv = F.softmax(logits_adv, dim=1)
        p_clean = F.softmax(logits_clean, dim=1)
        # most likely wrong class of f(x'): the top class, or the runner-up when the top is y
        top2 = p_adv.topk(2, dim=1).indices
        wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
        boosted = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(
            1.0001 - p_adv.gather(1, wrong[:, None]).squeeze(1) + 1e-12
        )
        kl = (p_clean * (F.log_softmax(logits_clean, dim=1) - torch.log(p_adv + 1e-12))).sum(dim=1)
        robust = kl * (1.0000001 - p_clean.gather(1, y[:, None]).squeeze(1))
        return BatchOutputs(
            x_natural=x, x_adv=x_adv, logits_clean=logits_clean, logits_natural=logits_clean,
            logits_adv=logits_adv, natural=boosted, robust=robust,
        )


# ------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ObjectiveInfo:
    """One installed objective, as ``fairdefense objectives`` lists it."""

    name: str
    version: str
    distribution: str
    attack_loss: str
    random_start: str
    early_stop: bool
    description: str
    error: str | None = None


def _load(ep: metadata.EntryPoint) -> type[Objective]:
    target = ep.load()
    if not (isinstance(target, type) and issubclass(target, Objective)):
        raise PluginError(
            f"objective '{ep.name}' ({ep.value}) is not a subclass of fairdefense.Objective; "
            f"register the class itself in the '{ENTRY_POINT_GROUP}' entry-point group."
        )
    return target


def list_objectives(filter: str | None = None) -> list[ObjectiveInfo]:
    """The installed objectives, sorted by name; ``filter`` keeps the names it matches (:func:`fairdefense.listing.matches`).

    An objective whose entry point fails to load is listed with its ``error``.
    """
    return [
        ObjectiveInfo(i.name, i.version, i.distribution, "?", "?", False, "", i.error) if i.error else
        ObjectiveInfo(i.name, i.version, i.distribution, i.target.attack_loss, i.target.random_start,
                      i.target.early_stop, i.description)
        for i in installed(ENTRY_POINT_GROUP, filter, _load)
    ]


def objective_class(name: str) -> type[Objective]:
    """The objective class registered as ``name``; an unknown name is an error naming the nearest ones."""
    eps = entry_points(ENTRY_POINT_GROUP)
    if name not in eps:
        raise ConfigError(
            f"unknown objective {name!r}.{nearest(name, eps)} Installed objectives: {', '.join(sorted(eps)) or 'none'} "
            f"(run 'fairdefense objectives' to list them; none at all means fairdefense's metadata is "
            f"missing: reinstall it with pip install -e .)."
        )
    try:
        return _load(eps[name])
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"objective '{name}' is installed but failed to import: {exc}") from exc


def make_objective(name: str, beta: float = 6.0) -> Objective:
    """Build the installed objective ``name`` (``"at"``, ``"trades"``, ``"mart"``, ``"fat"``, ...).

    ``beta`` is checked, then passed only to an objective with ``has_beta`` (PGD-AT and FAT
    have none: their robust term's factor is 1, whatever ``beta`` says).
    """
    if not beta >= 0:
        raise ConfigError(f"beta must be >= 0, got {beta}.")
    cls = objective_class(name)
    return cls(beta) if cls.has_beta else cls()
