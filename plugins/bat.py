"""BAT: Balance Adversarial Training.

Reference
    Chunyu Sun, Chenye Xu, Chengyuan Yao, Siyuan Liang, Yichao Wu, Ding Liang, Xianglong
    Liu, Aishan Liu, "Improving Robust Fairness via Balance Adversarial Training", AAAI
    2023 (doi:10.1609/aaai.v37i12.26769; arXiv:2209.07534). Code, linked from the
    published abstract:
    https://github.com/silvercherry/Improving-Robust-Fairness-via-Balance-Adversarial-Training
    (``train.py``, ``train_mode/stop_to_lastclean.py``, ``train_mode/stop_to_firstadv.py``).

Algorithm (as implemented)
    Each batch is attacked with TRADES's attack (sign steps ascending
    ``KL(f(x) || f(x'))`` from ``x + 0.001 N(0, I)``, model in eval mode) stopped early
    per sample (FAT's rule): a sample that becomes misclassified takes ``extra_steps``
    more steps, then stops. Two iterates are trained on:

    - ``x_clean^Phi``: the last iterate still classified correctly (the start for a
      sample wrong at the start; the final iterate for a sample never fooled);
    - ``x_adv^Phi``: the first misclassified iterate after the extra steps (the final
      iterate for a sample never fooled).

    The loss, with ``f`` the softmax output and ``U`` the uniform distribution over
    the ``C`` classes::

        CE(f(x_clean^Phi), y) + beta * KL(f(x) || f(x_adv^Phi))
            + alpha * [KL(f(x_clean^Phi) || U) + KL(f(x_adv^Phi) || U)]

    each term a batch mean. The first two terms are the trainer's TRADES objective
    with the natural and robust inputs replaced (``select_examples``); the uniform
    term is ``extra_loss``.

Defaults (the code)
    ``beta = 6``, ``alpha = 1`` (the code adds the uniform term unweighted),
    ``extra_steps = 1`` (``stop_to_firstadv(..., tau=1)``), ``kl_direction = "code"``:
    ``KL(f || U) = log C - H(f)``. The code attacks with 10 steps of 0.007 within
    eps 0.031 (~8/255): set ``--eps-step`` to ``0.007 / 0.031 = 0.226`` times eps to
    match (the trainer's default step is eps/4, ~11% larger); the paper's text
    says step 2/255, which is the trainer's default eps/4.

Deviations
    - The paper writes ``KL(U || f)``; ``kl_direction="paper"`` selects it.
    - The paper's Algorithm 1 stops at the first misclassified iterate (no extra
      step): ``extra_steps=0``.
    - The code runs two separate early-stopped attacks, each from its own random
      start: one stopped at the first misclassification (``x_clean^Phi``), one with
      one extra step (``x_adv^Phi``). Here one attack records both iterates, saving a
      whole attack per batch. With ``extra_steps >= 1`` a sample whose extra step
      lands on a correctly classified iterate keeps running, so its ``x_clean^Phi`` is
      the iterate before its *last* misclassification rather than its first;
      with ``extra_steps=0`` both rules coincide.
    - Algorithm 1 keeps the clean ``x`` (not ``x + 0.001 N(0, I)``) for a sample wrong
      at the start; the code, like this plugin, keeps the noisy start.
    - The code forwards the three inputs in train mode in the order last-clean,
      first-adversarial, clean; the trainer's order is clean, natural, adversarial,
      which changes only the order of BatchNorm's running-statistics updates.

Combination
    ``select_examples`` is exclusive: BAT cannot be combined with another plugin
    that chooses the training iterates. With ``ema`` it gives BAT with weight
    averaging. Requires the TRADES objective (``configure`` asks for it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor

import fairdefense
from fairdefense.toolkit import check_options

__all__ = ["BAT", "uniform_kl"]


def uniform_kl(logits: Tensor, direction: Literal["code", "paper"] = "code") -> Tensor:
    """Per-sample KL divergence between the softmax of ``logits`` ``(B, C)`` and the uniform distribution.

    ``"code"``: ``KL(f || U) = sum_c f_c log f_c + log C`` (BAT's code);
    ``"paper"``: ``KL(U || f) = -log C - (1/C) sum_c log f_c`` (BAT's paper). Returns ``(B,)``.
    """
    log_probs = F.log_softmax(logits, dim=1)
    log_c = math.log(logits.shape[1])
    if direction == "code":
        return (log_probs.exp() * log_probs).sum(dim=1) + log_c
    return -log_c - log_probs.mean(dim=1)


class BAT(fairdefense.FairnessPlugin):
    """Balance Adversarial Training (Sun et al., AAAI 2023): boundary iterates + uniform-target KL."""

    name = "bat"

    @dataclass
    class Options:
        """TRADES ``beta``, uniform-term weight ``alpha``, FAT's ``extra_steps`` and the KL direction."""

        beta: float = 6.0
        alpha: float = 1.0
        extra_steps: int = 1
        kl_direction: Literal["code", "paper"] = "code"

        def __post_init__(self) -> None:
            check_options("bat", self, [(getattr(self, key) >= 0, key, ">= 0") for key in ("beta", "alpha", "extra_steps")])

    def configure(self) -> dict[str, Any]:
        """TRADES with the option's beta, and the early-stopping budget of the attack."""
        return {
            "objective": "trades",
            "beta": self.options.beta,
            "early_stop_extra_steps": self.options.extra_steps,
        }

    def select_examples(self, record: fairdefense.AttackRecord) -> fairdefense.Selection:
        """Train the natural term on the last correct iterate and the robust term on the first wrong one."""
        return fairdefense.Selection(natural=record.x_last_correct, adversarial=record.x_first_wrong)

    def extra_loss(self, outputs: fairdefense.BatchOutputs) -> Tensor:
        """``alpha * [mean KL(f(x_clean^Phi) || U) + mean KL(f(x_adv^Phi) || U)]`` (or ``KL(U || .)``)."""
        direction = self.options.kl_direction
        term = uniform_kl(outputs.logits_natural, direction).mean() + uniform_kl(outputs.logits_adv, direction).mean()
        return self.options.alpha * term
