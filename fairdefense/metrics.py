"""Per-class clean, boundary and robust error (Xu et al. 2021's definitions).

For class ``c``::

    clean error_c    = 1 - clean_acc_c
    boundary error_c = clean_acc_c - adv_acc_c
    robust error_c   = 1 - adv_acc_c  = clean error_c + boundary error_c

Summaries are taken over classes: ``avg`` is the unweighted mean of the per-class
values, ``worst`` the largest error (lowest accuracy), ``best`` the smallest,
``gap = worst - best`` and ``std`` the population standard deviation (ddof 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ClassStats", "ClassReport", "per_class_accuracy", "summarize", "WORST_CASE"]

#: Name of the per-sample worst case over several attacks in a report.
WORST_CASE = "worst-case"


def per_class_accuracy(y: Tensor, correct: Tensor, num_classes: int) -> Tensor:
    """Accuracy of each class ``(C,)`` (float64) from labels and a correctness mask.

    Classes without samples get NaN.
    """
    y = y.long().cpu()
    counts = torch.bincount(y, minlength=num_classes).double()
    hits = torch.bincount(y, weights=correct.double().cpu(), minlength=num_classes)
    return hits / counts.where(counts > 0, torch.tensor(float("nan"), dtype=torch.float64))


def summarize(values: Tensor, higher_is_worse: bool) -> dict[str, float]:
    """``avg``, ``worst``, ``best``, ``gap`` and ``std`` over classes (NaN classes skipped)."""
    v = values[~torch.isnan(values)].double()
    worst, best = (v.max(), v.min()) if higher_is_worse else (v.min(), v.max())
    return {
        "avg": v.mean().item(),
        "worst": worst.item(),
        "best": best.item(),
        "gap": abs(worst - best).item(),
        "std": v.std(unbiased=False).item(),
    }


@dataclass
class ClassStats:
    """Per-class counts accumulated from training logits (no extra forward pass).

    ``robust_correct`` counts adversarial inputs classified correctly;
    ``clean_correct`` counts clean inputs, or is ``None`` when the objective has no
    clean forward pass (PGD-AT). ``robust_prob_sums`` ``(C, C)`` float32 sums the
    softmax outputs on the adversarial inputs: row ``c`` (true class) adds
    ``softmax(logits_adv_i)`` over the samples ``i`` of class ``c``, so a row sums to
    that class's count (``robust_prob_mean`` divides by it). Every field is a tensor
    that sums over batches and processes (or ``None``), so an all-reduce (sum) of
    each makes the statistics global.
    """

    counts: Tensor
    robust_correct: Tensor
    clean_correct: Tensor | None = None
    robust_prob_sums: Tensor | None = None

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str = "cpu") -> "ClassStats":
        z = torch.zeros(num_classes, dtype=torch.long, device=device)
        probs = torch.zeros(num_classes, num_classes, dtype=torch.float32, device=device)
        return cls(z.clone(), z.clone(), None, probs)

    def update(self, y: Tensor, logits_adv: Tensor, logits_clean: Tensor | None = None) -> None:
        """Add one batch (on the device, ``O(B C)``; no host synchronisation)."""
        c = self.counts.numel()
        self.counts += torch.bincount(y, minlength=c)
        self.robust_correct += torch.bincount(y, weights=(logits_adv.argmax(1) == y).float(), minlength=c).long()
        if logits_clean is not None:
            hits = torch.bincount(y, weights=(logits_clean.argmax(1) == y).float(), minlength=c).long()
            self.clean_correct = hits if self.clean_correct is None else self.clean_correct + hits
        if self.robust_prob_sums is None:
            self.robust_prob_sums = torch.zeros(c, c, dtype=torch.float32, device=y.device)
        probs = torch.softmax(logits_adv.detach().float(), dim=1)
        self.robust_prob_sums.index_add_(0, y, probs.to(self.robust_prob_sums.dtype))

    @property
    def robust_acc(self) -> Tensor:
        """Per-class accuracy on the adversarial training inputs ``(C,)`` float64 (CPU)."""
        return (self.robust_correct.double() / self.counts.double().clamp_min(1)).cpu()

    @property
    def clean_acc(self) -> Tensor | None:
        """Per-class clean training accuracy, or ``None`` for PGD-AT."""
        if self.clean_correct is None:
            return None
        return (self.clean_correct.double() / self.counts.double().clamp_min(1)).cpu()

    @property
    def robust_prob_mean(self) -> Tensor | None:
        """Per-class mean softmax output on the adversarial training inputs ``(C, C)``
        float64 (CPU): entry ``[i, j]`` is the mean probability of class ``j`` over the
        samples of true class ``i`` (a soft confusion matrix; DAFA's class similarity).
        Rows of classes without samples are NaN; ``None`` if no batch was added."""
        if self.robust_prob_sums is None:
            return None
        counts = self.counts.double().cpu().unsqueeze(1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return self.robust_prob_sums.double().cpu() / counts.where(counts > 0, nan)


@dataclass
class ClassReport:
    """Per-class accuracy under no attack and under each named attack.

    ``clean_acc`` is ``(C,)``; ``robust_acc`` maps an attack name (``"pgd20"``,
    ``"cw20"``, ``"autoattack"``, :data:`WORST_CASE`) to ``(C,)`` accuracies;
    ``losses`` maps a loss name to per-class mean losses. All tensors are float64 on
    the CPU. ``confusion`` maps an attack name (not :data:`WORST_CASE`) to the
    ``(C, C)`` int64 counts of true class (row) against predicted class (column) on
    its adversarial examples.
    """

    class_names: list[str]
    counts: Tensor
    clean_acc: Tensor
    robust_acc: dict[str, Tensor] = field(default_factory=dict)
    losses: dict[str, Tensor] = field(default_factory=dict)
    confusion: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _attack(self, attack: str | None) -> str:
        if attack is None:
            if not self.robust_acc:
                raise KeyError("this report has no attack")
            return next(iter(self.robust_acc))
        if attack not in self.robust_acc:
            raise KeyError(f"no attack {attack!r} in this report; it has {list(self.robust_acc)}")
        return attack

    @property
    def clean_error(self) -> Tensor:
        return 1.0 - self.clean_acc

    def boundary_error(self, attack: str | None = None) -> Tensor:
        """``clean_acc - adv_acc`` per class (first attack by default)."""
        return self.clean_acc - self.robust_acc[self._attack(attack)]

    def robust_error(self, attack: str | None = None) -> Tensor:
        """``1 - adv_acc`` per class (first attack by default)."""
        return 1.0 - self.robust_acc[self._attack(attack)]

    def summary(self) -> dict[str, dict[str, float]]:
        """Summaries (avg/worst/best/gap/std) of every per-class quantity.

        Keys: ``clean_acc``, ``clean_error`` and, for each attack ``A``,
        ``A/robust_acc``, ``A/boundary_error``, ``A/robust_error``.
        """
        out = {"clean_acc": summarize(self.clean_acc, False), "clean_error": summarize(self.clean_error, True)}
        for attack, acc in self.robust_acc.items():
            out[f"{attack}/robust_acc"] = summarize(acc, False)
            out[f"{attack}/boundary_error"] = summarize(self.boundary_error(attack), True)
            out[f"{attack}/robust_error"] = summarize(self.robust_error(attack), True)
        return out

    def to_dict(self) -> dict:
        """A JSON-ready dict: per-class lists and the summaries."""
        return {
            "class_names": list(self.class_names),
            "counts": self.counts.tolist(),
            "clean_acc": self.clean_acc.tolist(),
            "robust_acc": {k: v.tolist() for k, v in self.robust_acc.items()},
            "losses": {k: v.tolist() for k, v in self.losses.items()},
            "confusion": {k: v.tolist() for k, v in self.confusion.items()},
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ClassReport":
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return cls(
            class_names=list(data["class_names"]),
            counts=torch.tensor(data["counts"], dtype=torch.long),
            clean_acc=t(data["clean_acc"]),
            robust_acc={k: t(v) for k, v in data.get("robust_acc", {}).items()},
            losses={k: t(v) for k, v in data.get("losses", {}).items()},
            confusion={k: torch.tensor(v, dtype=torch.long) for k, v in data.get("confusion", {}).items()},
        )
