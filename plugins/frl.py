"""FRL: Fair Robust Learning (Reweight, Remargin, Reweight+Remargin).

Paper: Han Xu, Xiaorui Liu, Yaxin Li, Anil K. Jain, Jiliang Tang. "To be Robust or
to be Fair: Towards Fairness in Adversarial Training". ICML 2021 (PMLR 139); an
earlier ICLR-submission version has Algorithm 1 with the three options. Authors'
code: https://github.com/hannxu123/fair_robust (``frlrw.py`` + ``utils_frl.py`` for
Reweight, ``frlrmrw.py`` + ``utils_frl2.py`` for Reweight+Remargin, ``frlrm.py`` +
``utils_frl1.py`` for Remargin, an older snapshot).

Algorithm, as the authors' code runs it (TRADES fine-tuning of a robust model):

1. On a held-out per-class validation split, measure per class the clean error
   ``e_c = 1 - clean_acc_c`` and the boundary error ``b_c = clean_acc_c - adv_acc_c``
   (PGD-20, CE loss, step eps/4, random start), and the overall errors ``E`` and
   ``Bd``, pooled over all validation samples (``E = 1 - correct / N``,
   ``Bd = (correct - correct_adv) / N``; with equal class counts this is the mean
   over classes).
2. Violations ``g0 = e - E - tau1`` and ``g1 = b - Bd - tau2``.
3. Multipliers ``lam0 = Norm(lam0 + a1 * g0)`` (always), ``lam1 = Norm(lam1 + 2 * a1 * g1)``
   (rw, rwrm), ``lam2 = lam2 + a2 * g1`` (rm, rwrm; never clipped), where
   ``Norm(v)`` clips at 0 and, if ``sum(v) > lim``, rescales ``v`` to sum ``lim``.
   All multipliers start at 0. ``a1`` is halved every 40 epochs (``now_epoch % 40 == 0``).
4. Class weights ``w0_c = 1/C + lam0_c - mean(lam0)`` (natural term) and
   ``w1_c = 1/C + lam1_c - mean(lam1)`` (boundary term); the batch loss is
   ``sum_i w0_{y_i} CE_i / sum_i w0_{y_i} + beta * sum_i w1_{y_i} KL_i / sum_i w1_{y_i}``.
5. Remargin: class radius ``eps_c = eps * clamp(exp(2 * lam2_c), 0.98, M)`` and
   TRADES attack step ``max_i eps_{y_i} / 4`` over the batch.

Hooks: ``configure`` (TRADES, beta, validation steps/size), ``on_validation``
(steps 1-3), ``reweight`` (step 4; returns ``w_{y_i} * B / sum_j w_{y_j}`` so that the
trainer's unnormalised ``mean(w * term)`` equals the code's weighted batch mean),
``remargin`` (step 5; ``None`` for the rw variant), ``plugin_state`` /
``load_plugin_state`` (the three multiplier vectors).

Defaults (authors' code): variant ``rwrm``; ``tau1 = tau2 = 0.07`` (``frlrmrw.py``;
``frlrw.py`` uses 0.1, the paper's tables 0.05 and 0.07); ``a1 = 0.05``; ``a2 = 0.2``
(``frlrmrw.py``; 0.1 in ``frlrw.py``/``frlrm.py`` where it is unused or older);
``lim = 0.5``; ``M = 3.0`` (``utils_frl2.py``; the older RM code 2.5, the paper text
"at most 16/255", i.e. M = 2); ``beta = 1.5`` (``frlrw.py``; ``frlrmrw.py``'s default
is 2.0); ``val_steps = 20``; validation 300 images per class on CIFAR-10
(``val_size = None`` keeps the dataset's default). The code fine-tunes with SGD lr
1e-3, momentum 0.9, weight decay 5e-4, batch 128, 40 epochs; those are trainer
settings (``--init``, ``--lr 0.001``, ``--schedule constant``), not forced here.

Deviations and why:

- Timing of the updates: as in the code, the multipliers are updated from the
  validation split *before* every epoch, the first included (``configure`` sets
  ``validate_first``, so the trainer validates the initial model once before the
  first epoch; the update after 0-based epoch ``k`` serves epoch ``k + 1``). The
  halving of ``a1`` follows the code's 1-based epoch numbering.
- Attack step: ``Margins.step = eps_step * max_i m_{y_i}`` with ``m_c = eps_c / eps``,
  which is the code's ``max_i eps_{y_i} / 4`` at the default ``eps_step = eps / 4``
  and follows a user's ``eps_step`` otherwise.
- Remargin (rm) follows the newest code's rules (M = 3, step ``max eps / 4``,
  ``lim = 0.5``); the older ``utils_frl1.py`` used M = 2.5, a fixed step 2/255 and
  ``lim = 0.3``. As in that code (and in the paper's Algorithm 1, which always
  updates the natural multiplier), rm still reweights the natural term with ``lam0``;
  its boundary term stays unweighted.
- The paper's Eq. 11 writes the remargin as ``eps_i <- eps_i * exp(a2 * (b_i - tau2))``
  (no ``- Bd``, no clamp, factor 1); the code's additive ``lam2`` with ``exp(2 lam2)``
  and clamp is implemented.
- The validation attack is the trainer's shared CE-PGD (``val_steps`` steps, step
  eps/4, uniform random start), as in the code's ``evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import fairdefense
from fairdefense.toolkit import (
    DeviceCache,
    batch_mean_weights,
    check_options,
    cost_sensitive_weights,
    normalize_multipliers,
    pooled_mean,
    validation_counts,
)

__all__ = ["FRL"]


class FRL(fairdefense.FairnessPlugin):
    """FRL (Xu et al. 2021): Lagrangian reweighting and per-class remargin from validation errors."""

    name = "frl"

    @dataclass
    class Options:
        """FRL's options (defaults from the authors' ``frlrmrw.py``)."""

        variant: Literal["rw", "rm", "rwrm"] = "rwrm"
        tau1: float = 0.07
        tau2: float = 0.07
        a1: float = 0.05
        a2: float = 0.2
        lim: float = 0.5
        max_eps_mult: float = 3.0
        min_eps_mult: float = 0.98
        a1_decay: float = 0.5
        a1_decay_every: int = 40
        beta: float = 1.5
        val_steps: int = 20
        val_size: float | None = None

        def __post_init__(self) -> None:
            check_options("frl", self, [
                (0.0 <= self.lim < 1.0, "lim", "in [0, 1) (it keeps every class weight positive)"),
                (self.a1 >= 0.0, "a1", ">= 0"),
                (self.a2 >= 0.0, "a2", ">= 0"),
                (0.0 < self.min_eps_mult <= self.max_eps_mult, "min_eps_mult", "> 0 and <= max_eps_mult"),
                (0.0 < self.a1_decay <= 1.0, "a1_decay", "in (0, 1]"),
                (self.a1_decay_every >= 0, "a1_decay_every", ">= 0 (0 never decays)"),
                (self.beta >= 0.0, "beta", ">= 0"),
                (self.val_steps >= 1, "val_steps", ">= 1"),
                (self.val_size is None or self.val_size > 0, "val_size", "> 0 (a count per class or a fraction)"),
            ])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.lam0: Tensor | None = None
        self.lam1: Tensor | None = None
        self.lam2: Tensor | None = None
        self._cache = DeviceCache(self.class_vectors)

    # ------------------------------------------------------------- state
    @property
    def reweights_boundary(self) -> bool:
        """Whether the boundary (robust) term is reweighted (variants rw, rwrm)."""
        return self.options.variant in ("rw", "rwrm")

    @property
    def adapts_radius(self) -> bool:
        """Whether the per-class radius is adapted (variants rm, rwrm)."""
        return self.options.variant in ("rm", "rwrm")

    def _reset(self, num_classes: int) -> None:
        zeros = torch.zeros(num_classes, dtype=torch.float64)
        self.lam0, self.lam1, self.lam2 = zeros.clone(), zeros.clone(), zeros.clone()
        self._cache.clear()

    def _ensure(self, num_classes: int) -> None:
        if self.lam0 is None or self.lam0.numel() != num_classes:
            self._reset(num_classes)

    def class_vectors(self) -> dict[str, Tensor]:
        """Per-class ``w0``, ``w1`` (loss weights) and ``eps_mult`` (``eps_c / eps``), float64 on the CPU."""
        o = self.options
        return {
            "w0": cost_sensitive_weights(self.lam0),
            "w1": cost_sensitive_weights(self.lam1),
            "eps_mult": torch.exp(2.0 * self.lam2).clamp(o.min_eps_mult, o.max_eps_mult),
        }

    def rate1(self, epoch: int) -> float:
        """``a1`` for the update made after 0-based epoch ``epoch`` (halved as in the code)."""
        o = self.options
        if o.a1_decay_every == 0:
            return o.a1
        return o.a1 * o.a1_decay ** ((epoch + 2) // o.a1_decay_every)

    # ------------------------------------------------------------- hooks
    def inactive_hooks(self) -> frozenset[str]:
        """Variant rw keeps the base radius: it leaves ``remargin`` free (e.g. for CFA's CCM)."""
        return frozenset({"remargin"}) if self.options.variant == "rw" else frozenset()

    def configure(self, config: "fairdefense.TrainConfig", run: "fairdefense.RunInfo") -> dict[str, Any]:
        """TRADES with FRL's beta, a PGD-``val_steps`` validation split, validated before the first epoch too."""
        self._reset(run.num_classes)
        required: dict[str, Any] = {
            "objective": "trades", "beta": self.options.beta, "val_steps": self.options.val_steps, "validate_first": True,
        }
        if self.options.val_size is not None:
            required["val_size"] = self.options.val_size
        return required

    def on_validation(self, epoch: "fairdefense.EpochInfo", report: "fairdefense.ClassReport") -> None:
        """Update the multipliers from the per-class clean and boundary errors."""
        o = self.options
        counts = validation_counts(self.name, report)
        self._ensure(report.num_classes)
        clean_error = report.clean_error.double()
        boundary_error = report.boundary_error().double()
        g0 = clean_error - pooled_mean(clean_error, counts) - o.tau1
        g1 = boundary_error - pooled_mean(boundary_error, counts) - o.tau2
        rate = self.rate1(epoch.epoch)
        self.lam0 = normalize_multipliers(self.lam0 + rate * g0, o.lim)
        if self.reweights_boundary:
            self.lam1 = normalize_multipliers(self.lam1 + 2.0 * rate * g1, o.lim)
        if self.adapts_radius:
            self.lam2 = self.lam2 + o.a2 * g1
        self._cache.clear()

    def remargin(self, batch: "fairdefense.BatchInfo") -> "fairdefense.Margins | None":
        """Per-class radius ``eps * clamp(exp(2 lam2), 0.98, M)``; step scaled by the batch's largest."""
        if not self.adapts_radius:
            return None
        self._ensure(batch.num_classes)
        mult = self._cache.like(batch.x)["eps_mult"]
        return fairdefense.Margins(eps=batch.eps * mult, step=batch.eps_step * mult[batch.y].max())

    def reweight(self, batch: "fairdefense.BatchInfo", outputs: "fairdefense.BatchOutputs") -> "fairdefense.LossWeights":
        """Weighted batch means of the natural (``w0``) and boundary (``w1``) terms."""
        self._ensure(batch.num_classes)
        vectors = self._cache.like(outputs.robust)
        natural = batch_mean_weights(vectors["w0"], batch.y)
        robust = batch_mean_weights(vectors["w1"], batch.y) if self.reweights_boundary else None
        return fairdefense.LossWeights(natural=natural, robust=robust)

    def plugin_state(self) -> dict[str, Tensor] | None:
        """The three multiplier vectors."""
        if self.lam0 is None:
            return None
        return {"lam0": self.lam0.clone(), "lam1": self.lam1.clone(), "lam2": self.lam2.clone()}

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Restore the multipliers saved by :meth:`plugin_state`."""
        self.lam0, self.lam1, self.lam2 = (
            torch.as_tensor(state[k], dtype=torch.float64).cpu().clone() for k in ("lam0", "lam1", "lam2")
        )
        self._cache.clear()
