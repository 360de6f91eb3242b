"""FAAL: Fairness-Aware Adversarial Learning as a ``reweight`` plugin.

Paper: Yanghao Zhang, Tianle Zhang, Ronghui Mu, Xiaowei Huang, Wenjie Ruan.
"Towards Fairness-Aware Adversarial Learning". CVPR 2024.
Code: https://github.com/TrustAI/FAAL (``FAAL.py``, ``ft_prn.py``, ``ft_wrn.py``).

Algorithm (Algorithm 1 of the paper, as the authors' fine-tuning scripts run it):
between the attack and the update, the class weights ``p`` of the batch loss are
chosen adversarially within a KL ball around the uniform distribution (group DRO)::

    m_i = max_{j != y_i} softmax(f(x'_i))_j - softmax(f(x'_i))_{y_i}    (no gradient)
    a_c = n_c * m_c = sum_{i: y_i = c} m_i      (m_c the class's batch mean; -1 if absent)
    p   = argmax_{p in simplex, KL(U || p) <= r}  sum_c a_c p_c
    loss = (C / B) * sum_i p_{y_i} * loss_i

``loss_i`` is the base objective's per-sample loss (PGD-AT: ``CE(f(x'_i), y_i)``;
TRADES: ``CE(f(x_i), y_i) + beta * KL(f(x_i) || f(x'_i))``). The trainer reduces
each term as ``mean_i(w_i * term_i)``, so the plugin returns the same weight
``w_i = C * p_{y_i}`` for the natural and the robust term. The margins are read
from ``outputs.logits_adv``, the logits the loss itself uses (train mode, with an
active weight perturbation such as AWP applied, as in the authors' code).

The weights (:func:`solve_dro_weights`) have a closed form up to one scalar. With
multipliers ``eta`` (simplex) and ``lambda > 0`` (KL ball), stationarity of
``sum_c a_c p_c - eta (sum_c p_c - 1) - lambda (KL(U || p) - r)`` gives
``a_c - eta + lambda / (C p_c) = 0``, i.e.::

    p_c = lambda / (C (eta - a_c)),   eta > max_c a_c,   lambda normalising p.

Write ``s = eta - max a > 0``, ``b_c = max a - a_c >= 0``, ``u_c = 1 / (s + b_c)``;
then ``p = u / sum(u)`` and ``KL(U || p) = log mean(u) - mean(log u)`` (AM-GM gap),
whose derivative in ``s`` is ``-Var(u) / mean(u) <= 0``: KL decreases
monotonically from infinity (``s -> 0``) to 0 (``s -> inf``). The objective is
linear, so unless all ``a_c`` are equal the KL constraint is active and ``s``
solves ``KL = r``. Bracket, with ``D = max b`` (spread of ``a``), ``k`` the number
of classes attaining ``max a`` and ``delta`` the gap to the next value:

- upper: ``log mean(u) - mean(log u) <= log(max u / min u) = log(1 + D / s)``, so
  ``s_hi = D / (exp(r) - 1)`` has ``KL <= r``;
- lower: ``mean(u) >= k / (C s)`` and ``mean(log u) <= -(k/C) log s - (1 - k/C) log(s + delta)``
  give ``KL >= log(k / C) + (1 - k/C) log(1 + delta / s)``, so
  ``s_lo = delta / (exp((r + log(C / k)) / (1 - k/C)) - 1)`` has ``KL >= r``.

The solver searches ``log s`` in ``[log s_lo, log s_hi]``: KL is 1-Lipschitz in
``log s`` (``|dKL / dlog s| = s Var(u) / mean(u) <= max(s u) <= 1``), so a bracket
of width ``W`` narrowed ``N`` times bounds the KL error by ``W / N``. Each round
splits the bracket into ``_GRID`` cells, evaluates KL at all their ends at once (a
vectorised multi-section; bisection is the case of 2 cells) and keeps the cell
where KL crosses ``r``; ``_ROUNDS`` rounds shrink it by ``_GRID ** _ROUNDS``
(about 7e10), far below the tolerances below for any bracket met in practice.
Everything runs in double precision, in the log domain (``log u_c =
-logaddexp(log s, log b_c)``, so that tiny ``s`` cannot overflow), on the input's
device, with no Python loop over classes and no host synchronisation. The
result is the upper end of the final cell, so ``KL(U || p) <= r`` holds exactly
up to rounding. ``r <= 0`` or all ``a_c`` equal gives the uniform ``p``.

Defaults (the authors' fine-tuning scripts): ``r = 0.5`` on CIFAR-10 (the paper
uses ``r = 0.05`` on CIFAR-100), weighting from the first epoch (``begin = 0``).
The paper's from-scratch schedule (200 epochs) starts weighting at epoch 100
with ``r = 0.25`` and raises it to 0.5 at epoch 150:
``-o faal.begin=100 -o faal.r=0.25 -o faal.late_epoch=150 -o faal.r_late=0.5``
(epochs count from 0 here, so ``begin=100`` starts after the 100th epoch).

Deviations from the authors' code, and why:

- The code rebuilds a cvxpy problem every batch and solves it with ECOS (falling
  back to MOSEK, then SCS), on the CPU. This module uses the closed form above
  (same optimum: tests compare it with cvxpy), on the training device: no
  solver dependency, no host round trip, and a solution that satisfies the KL
  constraint to rounding rather than to a conic solver's tolerance.
- The code hard-codes 10 classes (``cw`` margin, ``DAW(train_batch_size=10)``);
  here ``C`` is the dataset's number of classes.
- The code's class means give ``-1`` to a class absent from the batch; since
  ``a_c = n_c m_c``, such a class has ``a_c = 0`` whatever the fill value (its
  weight is never used by the loss). This module computes ``a_c`` as the
  per-class sum of margins, which is the same number.
- The paper's equations weight the class mean margin ``m_c``; the code ``n_c m_c``.
  ``objective="paper"`` selects the paper's form (:func:`class_objective`); the
  default is the code's.
- The paper's from-scratch schedule is not in the public code; ``begin``,
  ``late_epoch`` and ``r_late`` reproduce the schedule the paper describes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

import fairdefense
from fairdefense.toolkit import check_options

__all__ = ["FAAL", "solve_dro_weights", "class_margin_sums", "class_objective"]

#: Cells the bracket is split into per round of the vectorised multi-section.
_GRID = 64
#: Rounds of multi-section: the bracket on ``log s`` shrinks by ``_GRID ** _ROUNDS``.
_ROUNDS = 6


def _log_expm1(x: Tensor) -> Tensor:
    """``log(exp(x) - 1)`` for ``x > 0``, without overflow for large ``x``."""
    return x + torch.log(-torch.expm1(-x))


def _kl_uniform(log_s: Tensor, log_b: Tensor) -> Tensor:
    """``KL(U || p)`` for ``p ∝ 1 / (s + b)``; ``log_s`` ``(..., G)``, ``log_b`` ``(..., C)`` -> ``(..., G)``."""
    log_u = -torch.logaddexp(log_s.unsqueeze(-1), log_b.unsqueeze(-2))
    num_classes = log_b.shape[-1]
    return torch.logsumexp(log_u, dim=-1) - math.log(num_classes) - log_u.mean(dim=-1)


def solve_dro_weights(a: Tensor, r: float) -> Tensor:
    """Maximise ``sum_c a_c p_c`` over the simplex subject to ``KL(U || p) <= r``.

    ``a`` has shape ``(..., C)`` (leading dimensions are independent problems);
    the result has the same shape and dtype, on the same device, and carries no
    gradient. ``r <= 0``, or all ``a_c`` equal, gives the uniform distribution.
    Closed form ``p_c ∝ 1 / (eta - a_c)`` with ``eta`` found by a fixed number of
    vectorised multi-section rounds in double precision (see the module
    docstring for the derivation and the bracket).
    """
    if a.dim() < 1 or a.shape[-1] < 1:
        raise fairdefense.ConfigError(f"solve_dro_weights: 'a' must have shape (..., C), got {tuple(a.shape)}.")
    num_classes = a.shape[-1]
    uniform = torch.full_like(a, 1.0 / num_classes).detach()
    if not r > 0 or num_classes == 1:
        return uniform
    with torch.no_grad():
        a64 = a.detach().double()
        top = a64.max(dim=-1, keepdim=True).values
        b = top - a64
        spread = b.max(dim=-1).values
        at_top = b == 0
        k = at_top.sum(dim=-1).double()
        gap = b.masked_fill(at_top, math.inf).min(dim=-1).values
        flat = spread == 0
        # bracket on log s (see the module docstring); placeholders where all a are equal
        r64 = torch.tensor(r, dtype=torch.float64, device=a.device)
        share = k / num_classes
        exponent = (r64 - torch.log(share)) / torch.where(flat, torch.ones_like(share), 1 - share)
        lo = torch.log(torch.where(flat, torch.ones_like(gap), gap)) - _log_expm1(exponent)
        hi = torch.log(torch.where(flat, torch.ones_like(spread), spread)) - _log_expm1(r64)
        log_b = torch.log(b)
        steps = torch.linspace(0.0, 1.0, _GRID + 1, dtype=torch.float64, device=a.device)
        for _ in range(_ROUNDS):
            grid = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * steps
            above = (_kl_uniform(grid, log_b) > r64).sum(dim=-1, keepdim=True).clamp(1, _GRID)
            lo = grid.gather(-1, above - 1).squeeze(-1)
            hi = grid.gather(-1, above).squeeze(-1)
        log_u = -torch.logaddexp(hi.unsqueeze(-1), log_b)
        p = torch.softmax(log_u, dim=-1).to(a.dtype)
        return torch.where(flat.unsqueeze(-1), uniform, p)


def class_margin_sums(logits: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """Per-class sums ``a_c = sum_{i: y_i = c} m_i`` of the probability margins.

    ``m_i = max_{j != y_i} softmax(logits_i)_j - softmax(logits_i)_{y_i}`` (the CW
    margin on softmax outputs, in ``[-1, 1]``). ``a_c = n_c m_c`` with ``m_c`` the
    class's mean margin; absent classes give 0. Computed in at least float32 (under
    mixed precision the logits may be half precision). No gradient.
    """
    with torch.no_grad():
        prob = torch.softmax(logits.detach().to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        own = prob.gather(1, y.unsqueeze(1)).squeeze(1)
        other = prob.scatter(1, y.unsqueeze(1), -math.inf).max(dim=1).values
        margins = other - own
        return torch.zeros(num_classes, dtype=margins.dtype, device=margins.device).index_add_(0, y, margins)


def class_objective(
    logits: Tensor, y: Tensor, num_classes: int, form: str = "code",
    all_reduce_sum: Callable[[Tensor], Tensor] = lambda t: t,
) -> Tensor:
    """The coefficients ``a_c`` of the DRO objective ``sum_c a_c p_c``.

    ``"code"``: ``a_c = n_c m_c`` (the authors' code weights each class's mean margin by
    its count in the batch; :func:`class_margin_sums`). ``"paper"``: ``a_c = m_c``, the class
    mean margin of the paper's equations, with ``-1`` for a class absent from the batch
    (the fill value of the code's class means). ``all_reduce_sum`` sums the per-class
    statistics over the processes of a data-parallel run (the identity in one process).
    """
    sums = all_reduce_sum(class_margin_sums(logits, y, num_classes))
    if form == "code":
        return sums
    counts = all_reduce_sum(torch.zeros_like(sums).index_add_(0, y, torch.ones_like(y, dtype=sums.dtype)))
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, -1.0))


class FAAL(fairdefense.FairnessPlugin):
    """FAAL (Zhang et al., CVPR 2024): per-batch class weights from KL-ball group DRO on margins."""

    name = "faal"

    @dataclass
    class Options:
        """FAAL's options (defaults: the authors' CIFAR-10 fine-tuning).

        ``r``: radius of the KL ball around uniform class weights (0.5 on CIFAR-10;
        the paper uses 0.05 on CIFAR-100; 0 turns the weighting off).
        ``begin``: first epoch (from 0) with weighting; earlier epochs train with the
        base objective alone (0 for fine-tuning; 100 in the paper's from-scratch run).
        ``late_epoch``/``r_late``: from epoch ``late_epoch`` on, use radius ``r_late``
        (the paper's from-scratch run: ``r=0.25`` raised to 0.5 at epoch 150);
        set both or neither.
        ``objective``: ``"code"`` weights each class's mean margin by its count in the
        batch (``a_c = n_c m_c``, the authors' code); ``"paper"`` uses the class mean
        margin ``m_c`` of the paper's equations (see :func:`class_objective`).
        """

        r: float = 0.5
        begin: int = 0
        late_epoch: int | None = None
        r_late: float | None = None
        objective: Literal["code", "paper"] = "code"

        def __post_init__(self) -> None:
            check_options("faal", self, [
                (self.r >= 0 and math.isfinite(self.r), "r", "a finite number >= 0"),
                (self.begin >= 0, "begin", "an epoch >= 0"),
                (self.r_late is None or (self.r_late >= 0 and math.isfinite(self.r_late)), "r_late", "a finite number >= 0"),
            ])
            if (self.late_epoch is None) != (self.r_late is None):
                raise fairdefense.PluginOptionError(
                    "plugin 'faal': options 'late_epoch' and 'r_late' go together; set both "
                    "(e.g. -o faal.late_epoch=150 -o faal.r_late=0.5) or neither."
                )

    def radius(self, epoch: int) -> float | None:
        """The KL radius used at ``epoch`` (from 0), or ``None`` before ``begin``."""
        o = self.options
        if epoch < o.begin:
            return None
        if o.late_epoch is not None and o.r_late is not None and epoch >= o.late_epoch:
            return o.r_late
        return o.r

    def reweight(self, batch: fairdefense.BatchInfo, outputs: fairdefense.BatchOutputs) -> fairdefense.LossWeights | None:
        """``w_i = C * p_{y_i}`` for both loss terms, ``p`` from :func:`solve_dro_weights`."""
        r = self.radius(batch.epoch)
        if r is None:
            return None
        # global batch: every process solves the same weight problem
        a = class_objective(
            outputs.logits_adv, batch.y, batch.num_classes, self.options.objective, batch.all_reduce_sum
        )
        p = solve_dro_weights(a, r)
        w = batch.num_classes * p[batch.y]
        return fairdefense.LossWeights(natural=w, robust=w)
