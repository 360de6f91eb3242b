"""Base objectives: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Each objective computes *unweighted per-sample* loss terms so that plugins can
weight them (``reweight``) before the trainer reduces them:

- PGD-AT: robust term ``CE(f(x_adv), y)``; no natural term.
  ``loss = mean(w_rob * CE(f(x_adv), y))``.
- TRADES: natural term ``CE(f(x_nat), y)`` and robust term
  ``KL(f(x) || f(x_adv))`` (softmax outputs, summed over classes).
  ``loss = mean(w_nat * natural) + beta * mean(w_rob * robust)``.

Each objective also names the attack that goes with it: PGD-AT attacks the CE
loss from a uniform random start; TRADES attacks its KL term from
``x + 0.001 * N(0, I)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.errors import ConfigError

__all__ = ["Objective", "PGDAT", "TRADES", "Terms", "make_objective", "OBJECTIVES"]


@dataclass
class Terms:
    """Logits and unweighted per-sample loss terms of one batch."""

    logits_clean: Tensor | None
    logits_natural: Tensor | None
    logits_adv: Tensor
    natural: Tensor | None
    robust: Tensor


class Objective:
    """A base objective; see the module docstring for the formulas."""

    name: str = ""
    attack_loss: str = "ce"
    random_start: str = "uniform"

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = float(beta)

    def terms(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, x_natural: Tensor | None = None) -> Terms:
        """Forward the inputs the objective needs and return per-sample terms."""
        raise NotImplementedError

    def reduce(self, terms: Terms, w_natural: Tensor | None = None, w_robust: Tensor | None = None) -> Tensor:
        """The scalar loss: ``mean(w_nat * natural) + beta * mean(w_rob * robust)``."""
        robust = terms.robust if w_robust is None else w_robust * terms.robust
        loss = self.beta * robust.mean()
        if terms.natural is not None:
            natural = terms.natural if w_natural is None else w_natural * terms.natural
            loss = loss + natural.mean()
        return loss


class PGDAT(Objective):
    """Madry et al.'s PGD adversarial training: cross-entropy on PGD-CE examples."""

    name = "at"
    attack_loss = "ce"
    random_start = "uniform"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__(1.0)

    def terms(self, model, x, y, x_adv, x_natural=None) -> Terms:
        logits_natural = model(x_natural) if x_natural is not None else None
        natural = F.cross_entropy(logits_natural, y, reduction="none") if x_natural is not None else None
        logits_adv = model(x_adv)
        return Terms(None, logits_natural, logits_adv, natural, F.cross_entropy(logits_adv, y, reduction="none"))


class TRADES(Objective):
    """Zhang et al.'s TRADES: ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``."""

    name = "trades"
    attack_loss = "kl"
    random_start = "normal"

    def terms(self, model, x, y, x_adv, x_natural=None) -> Terms:
        logits_clean = model(x)
        logits_natural = logits_clean if x_natural is None else model(x_natural)
        logits_adv = model(x_adv)
        natural = F.cross_entropy(logits_natural, y, reduction="none")
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="none"
        ).sum(dim=1)
        return Terms(logits_clean, logits_natural, logits_adv, natural, robust)


OBJECTIVES = {"at": PGDAT, "trades": TRADES}


def make_objective(name: str, beta: float = 6.0) -> Objective:
    """Build an objective by name (``"at"`` or ``"trades"``)."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; use one of {sorted(OBJECTIVES)}.")
    if not beta >= 0:
        raise ConfigError(f"beta must be >= 0, got {beta}.")
    return OBJECTIVES[name](beta)
