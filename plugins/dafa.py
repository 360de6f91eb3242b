"""DAFA: Distance-Aware Fair Adversarial training.

Reference
    Hyungyu Lee, Saehyung Lee, Hyemi Jang, Junsung Park, Ho Bae, Sungroh Yoon, "DAFA:
    Distance-Aware Fair Adversarial Training", ICLR 2024. Code:
    https://github.com/rucy74/DAFA (``utils.calculate_class_weights``, ``losses.trades_loss``
    and ``losses.madry_loss``, ``train.py``, ``arguments.py``).

Algorithm (as implemented)
    Warm-up: the first ``tau`` epochs train with uniform class weights ``W = 1``. In the
    last of them (epoch ``tau`` counted from 1 as in the code, hook epoch ``tau - 1``
    counted from 0) the class similarity is read from the training statistics, with no
    extra attack::

        P[i, j] = mean over the training samples of class i of softmax(f(x'))_j

    ``x'`` the adversarial example the loss trained on, ``f`` in train mode
    (``ClassStats.robust_prob_mean`` in ``on_epoch_end``). Right after that epoch the
    class weights are computed once and fixed for the rest of the run::

        W_i = 1 + lam * sum_{j != i, P_ii < P_jj} P_ij P_jj - lam * sum_{j != i, P_ii >= P_jj} P_ji P_ii

    (``formula = "current"``: the code since Sep 2024, the paper's Algorithm 2). Each
    pair moves ``lam P_he P_ee`` from the easier class ``e`` to the harder ``h``, so
    ``sum_i W_i = C`` when no two classes tie. ``formula = "legacy"`` is the earlier
    code, whose easier-class term is the class's own confusion ``lam P_ij P_jj`` (the
    weights then need not sum to ``C``).

    Application, per objective (``remargin`` and ``reweight``)::

        TRADES   loss = mean_i W_{y_i} CE(f(x_i), y_i) + beta * mean_i KL(f(x_i) || f(x'_i))
                 attack radius W_y * eps, step W_y * eps_step
        PGD-AT   loss = mean_i W_{y_i} CE(f(x'_i), y_i)
                 attack radius W_y * eps, step W_y * eps_step         (at_radius = "scaled")
                 radius min(W_y eps + eps_step, eps), step (W_y + 1) eps_step   ("code")

Defaults (the code)
    ``tau = 70`` (of 110 epochs), ``lam = 1.0`` (CIFAR-10; the paper uses 1.5 on
    CIFAR-100 and STL-10), ``formula = "current"``, ``ties = "subtract"``. With no
    objective set, DAFA asks for TRADES (the code's default ``--loss``).

Deviations and choices
    - Ties (``P_ii == P_jj``): the code's ``else`` branch subtracts for both classes, so
      the pair loses weight and ``sum W < C``; the paper's Algorithm 2 moves nothing
      between tied classes (``ties = "skip"``).
    - A weight ``W_i <= 0`` is refused (``ConfigError`` after the warm-up epoch, naming the
      classes): the code does not handle it, and a non-positive radius or CE weight has
      no meaning (a negative radius inverts the code's projection). Lower ``lam``.
    - A class with no training sample in the warm-up's last epoch is refused (its row of
      ``P`` is undefined; the code takes the mean of an empty array).
    - PGD-AT: the code's ``madry_loss`` takes, per iteration, a step ``W_y * step`` projected
      onto the ``W_y eps`` ball, then an unscaled step projected onto the ``eps`` ball. Its
      radius is ``min(W_y eps + step, eps)``; ``at_radius = "code"`` uses that radius with
      the combined step ``(W_y + 1) * step`` (the two coincide with the code's iterates
      unless the previous iterate lies outside the ``W_y eps`` box); during the warm-up it
      takes the code's ``W = 1`` attack, radius ``eps`` and step ``2 * step``. The default scales
      radius and step by ``W_y``, as the code does for TRADES and as the paper describes.
      The code's PGD-AT starts from ``x + 0.001 N(0, I)`` for DAFA and its baseline alike
      (``--random-start normal`` here); the trainer's PGD-AT starts uniformly.
    - ``P`` is accumulated in float32 on the device (the code stores float32 softmax
      outputs and averages them in float64 with numpy).

Combination
    ``remargin`` is exclusive: DAFA is refused with CFA's CCM and FRL's remargin
    (variants rm, rwrm). ``reweight`` weights multiply: with FAAL the TRADES natural term
    is weighted ``W_y * C p_y`` and the robust term ``C p_y`` (not evaluated by either
    paper). EMA, AWP and BAT combine.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import fairdefense
from fairdefense.toolkit import DeviceCache, check_options

__all__ = ["DAFA", "dafa_weights"]


def dafa_weights(
    similarity: Tensor,
    lam: float,
    formula: Literal["current", "legacy"] = "current",
    ties: Literal["subtract", "skip"] = "subtract",
) -> Tensor:
    """DAFA's class weights ``(C,)`` float64 from the class similarity ``P`` ``(C, C)``.

    ``P[i, j]``: mean probability of class ``j`` on the adversarial examples of class
    ``i``. ``formula`` and ``ties`` as in the module docstring: ``"current"`` moves
    ``lam P_ij P_jj`` (hard ``i``, easy ``j``) between each pair, ``"legacy"`` takes the
    easier class's own confusion ``lam P_ij P_jj``; ``"subtract"`` lets both tied classes
    lose their term (the code), ``"skip"`` leaves tied pairs alone (the paper).
    """
    p = similarity.detach().double()
    if p.dim() != 2 or p.shape[0] != p.shape[1]:
        raise fairdefense.ConfigError(f"dafa_weights: the similarity must be (C, C), got {tuple(p.shape)}.")
    own = p.diagonal()
    other = ~torch.eye(len(own), dtype=torch.bool, device=p.device)
    harder = own.unsqueeze(1) < own.unsqueeze(0)  # [i, j]: P_ii < P_jj
    easier = ~harder & other if ties == "subtract" else own.unsqueeze(1) > own.unsqueeze(0)
    gain = (p * own.unsqueeze(0)).where(harder, 0.0).sum(1)  # sum_j P_ij P_jj
    if formula == "current":
        loss = (p.T * own.unsqueeze(1)).where(easier, 0.0).sum(1)  # sum_j P_ji P_ii
    else:
        loss = (p * own.unsqueeze(0)).where(easier, 0.0).sum(1)  # sum_j P_ij P_jj
    return 1.0 + lam * gain - lam * loss


class DAFA(fairdefense.FairnessPlugin):
    """DAFA (Lee et al., ICLR 2024): fixed class weights and radii from the warm-up's class similarity."""

    name = "dafa"

    @dataclass
    class Options:
        """DAFA's options (defaults: the authors' code, CIFAR-10).

        ``tau``: warm-up epochs with uniform weights; the statistic is taken in the
        ``tau``-th (hook epoch ``tau - 1``) and the weights apply from hook epoch ``tau``.
        ``lam``: DAFA's lambda (1.0 CIFAR-10, 1.5 CIFAR-100 and STL-10).
        ``formula``: ``current`` (paper Alg. 2, today's code) or ``legacy`` (code before Sep 2024).
        ``ties``: ``subtract`` (code) or ``skip`` (paper).
        ``at_radius``: PGD-AT's radius, ``scaled`` (``W_y eps``) or ``code`` (``min(W_y eps + step, eps)``).
        """

        tau: int = 70
        lam: float = 1.0
        formula: Literal["current", "legacy"] = "current"
        ties: Literal["subtract", "skip"] = "subtract"
        at_radius: Literal["scaled", "code"] = "scaled"

        def __post_init__(self) -> None:
            check_options("dafa", self, [
                (self.tau >= 1, "tau", ">= 1 (warm-up epochs, the code's --dafa_warmup)"),
                (self.lam >= 0 and math.isfinite(self.lam), "lam", "a finite number >= 0"),
            ])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.similarity: Tensor | None = None
        self.weights: Tensor | None = None
        self._on_device: DeviceCache[Tensor] = DeviceCache(lambda: self.weights)
        self._warned = False

    # ----------------------------------------------------------------- run level
    def configure(self, config: fairdefense.TrainConfig) -> dict[str, Any] | None:
        """TRADES when no objective is set (the code's default loss)."""
        return {"objective": "trades"} if config.objective is None else None

    def on_epoch_start(self, epoch: fairdefense.EpochInfo) -> None:
        """Warn (once) when the warm-up outlasts the run: the weights would never apply.

        A warning, not an error: a short run may be resumed with more epochs."""
        if self.options.tau >= epoch.num_epochs and not self._warned:
            self._warned = True
            warnings.warn(
                f"plugin 'dafa': the warm-up tau={self.options.tau} is not shorter than the run's {epoch.num_epochs} "
                f"epochs, so DAFA's weights never apply in it (plain {epoch.run.config.objective}). Set -o dafa.tau=N with "
                f"N < {epoch.num_epochs} (the code warms up 70 of 110 epochs, e.g. -o dafa.tau="
                f"{max(1, round(epoch.num_epochs * 70 / 110))}), or resume the run with more epochs.",
                stacklevel=2,
            )

    # ----------------------------------------------------------------- per epoch
    def on_epoch_end(self, epoch: fairdefense.EpochInfo, train_stats: fairdefense.ClassStats) -> dict[str, Tensor] | None:
        """In hook epoch ``tau - 1``: the class similarity and the weights, fixed from then on.

        Logs them (``metrics.jsonl``, ``"plugins": {"dafa": {"weights": ..., "similarity": ...}}``)
        on that epoch's line."""
        if epoch.epoch != self.options.tau - 1:
            return None
        similarity = train_stats.robust_prob_mean
        names = epoch.run.class_names
        empty = [names[c] for c in torch.nonzero(train_stats.counts.cpu() == 0).flatten().tolist()]
        if similarity is None or empty:
            raise fairdefense.ConfigError(
                f"plugin 'dafa': class(es) {empty} had no training sample in epoch {epoch.epoch + 1}, so their "
                f"similarity is undefined; DAFA needs every class in the training data."
            )
        o = self.options
        weights = dafa_weights(similarity, o.lam, o.formula, o.ties)
        bad = torch.nonzero(weights <= 0).flatten().tolist()
        if bad:
            listed = ", ".join(f"{names[c]}: {weights[c].item():.3f}" for c in bad)
            raise fairdefense.ConfigError(
                f"plugin 'dafa': the class weights after the warm-up are <= 0 for {listed} (lam={o.lam}); a class "
                f"needs a positive loss weight and attack radius. Lower -o dafa.lam (the code uses 1.0 on CIFAR-10)."
            )
        self.similarity, self.weights = similarity, weights
        self._on_device.clear()
        return {"weights": weights, "similarity": similarity}

    # ----------------------------------------------------------------- per batch
    def remargin(self, batch: fairdefense.BatchInfo) -> fairdefense.Margins | None:
        """Per-class radius and step scaled by ``W`` (PGD-AT ``code``: ``min(W eps + step, eps)``).

        ``None`` during the warm-up, except for PGD-AT with ``at_radius="code"``, whose
        attack takes the code's doubled step with ``W = 1`` from the first epoch."""
        code = batch.objective.name == "at" and self.options.at_radius == "code"
        if self.weights is None and not code:
            return None
        w = self._on_device.like(batch.x) if self.weights is not None else batch.x.new_ones(batch.num_classes)
        if code:
            eps = (w * batch.eps + batch.eps_step).clamp_max(batch.eps)
            return fairdefense.Margins(eps=eps, step=(w + 1.0) * batch.eps_step)
        return fairdefense.Margins(eps=w * batch.eps, step=w * batch.eps_step)

    def reweight(self, batch: fairdefense.BatchInfo) -> fairdefense.LossWeights | None:
        """``W_y`` on TRADES's natural CE term, or on PGD-AT's adversarial CE term."""
        if self.weights is None:
            return None
        w = self._on_device.like(batch.x)[batch.y]
        if batch.objective.name == "trades":
            return fairdefense.LossWeights(natural=w)
        return fairdefense.LossWeights(robust=w)

    # ---------------------------------------------------------------------- state
    def plugin_state(self) -> dict[str, Tensor] | None:
        """The similarity and the weights, once computed (``None`` during the warm-up)."""
        if self.weights is None:
            return None
        return {"similarity": self.similarity.clone(), "weights": self.weights.clone()}

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`plugin_state` returned."""
        self.similarity = torch.as_tensor(state["similarity"], dtype=torch.float64).cpu().clone()
        self.weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu().clone()
        self._on_device.clear()
