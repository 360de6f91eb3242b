"""Per-class evaluation of a model under attacks, streamed batch by batch.

Attack names: ``"pgdK"`` (K steps of CE-PGD, step ``eps/4``, uniform random
start), ``"cwK"`` (K steps of PGD on the CW margin loss, same step and start),
``"tradesK"`` (K steps of TRADES's attack: ascent of ``KL(f(x) || f(x'))``, step
``eps/4``, from ``x + 0.001 N(0, I)``; WAT's code validates with it) and
``"autoattack"`` (AutoAttack's standard version, or its reduced set below 10
classes; see :mod:`fairdefense.autoattack`). ``"pgdK-any"``, ``"cwK-any"`` and ``"tradesK-any"`` run
the same PGD but score a sample as robust only if *every* iterate (the start and
each step) is classified correctly: a sample is frozen at its first successful
iterate, as FAAL's evaluator does, so the figure is the worst case over iterates.
Clean accuracy is always measured. With more than one attack, the report also has a
:data:`~fairdefense.metrics.WORST_CASE` row: a sample counts as robust only if it
resists every attack.

Memory stays flat in the number of samples: only count tensors are kept (per
class, and the ``C x C`` confusion of true against predicted class under each
attack), so partial evaluations add up.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.attacks import pgd, pgd_early_stop
from fairdefense.autoattack import AutoAttackRunner, import_autoattack, plan_autoattack
from fairdefense.errors import ConfigError
from fairdefense.metrics import WORST_CASE, ClassReport

__all__ = ["evaluate", "parse_attack", "scores_any_iterate", "attack_settings", "ATTACK_FAMILIES", "AUTOATTACK", "ANY_ITERATE"]

#: Attack families: name prefix -> attack loss; the suffix is the number of steps.
ATTACK_FAMILIES = {"pgd": "ce", "cw": "cw", "trades": "kl"}
#: Random start of each attack loss: TRADES's small Gaussian for the KL attack, uniform in the ball otherwise.
_STARTS = {"ce": "uniform", "cw": "uniform", "kl": "normal"}
#: Name of the AutoAttack entry in a report.
AUTOATTACK = "autoattack"
#: Suffix of a PGD/CW attack name scored on its worst iterate (``"pgd20-any"``).
ANY_ITERATE = "-any"


def parse_attack(name: str) -> tuple[str, int]:
    """``"pgd20"`` (or ``"pgd20-any"``) -> ``("ce", 20)``, ``"trades10"`` -> ``("kl", 10)``,
    ``"autoattack"`` -> ``("autoattack", 0)``;
    raises ``ConfigError`` naming the valid forms."""
    if name == AUTOATTACK:
        return AUTOATTACK, 0
    m = re.fullmatch(r"([a-z]+)(\d+)(-any)?", name)
    if not m or m.group(1) not in ATTACK_FAMILIES or int(m.group(2)) < 1:
        raise ConfigError(
            f"unknown attack {name!r}; use 'pgdK', 'cwK' or 'tradesK' with K >= 1 steps (e.g. pgd20, cw20, trades10), "
            f"the same with "
            f"'{ANY_ITERATE}' to score the worst iterate (e.g. pgd20{ANY_ITERATE}), or 'autoattack'."
        )
    return ATTACK_FAMILIES[m.group(1)], int(m.group(2))


def scores_any_iterate(name: str) -> bool:
    """Whether attack ``name`` counts a sample as fooled when any iterate fooled it."""
    return name != AUTOATTACK and name.endswith(ANY_ITERATE)


def attack_settings(
    name: str, *, eps: float, norm: str, num_classes: int, autoattack: Sequence[str] | None = None
) -> dict:
    """The exact settings of attack ``name`` as :func:`evaluate` runs it (JSON-ready)."""
    loss, steps = parse_attack(name)
    if loss == AUTOATTACK:
        return {"kind": AUTOATTACK, "eps": eps, "norm": norm, "package": import_autoattack()[1],
                **plan_autoattack(num_classes, autoattack).to_dict()}
    start = {"random_start": _STARTS[loss], **({"sigma": 0.001} if _STARTS[loss] == "normal" else {})}
    return {"kind": "pgd", "loss": loss, "steps": steps, "eps": eps, "step_size": eps / 4, **start, "norm": norm, "scored": "any iterate" if scores_any_iterate(name) else "final iterate"}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    class_names: Sequence[str],
    attacks: Sequence[str] = ("pgd20",),
    *,
    eps: float,
    norm: str = "linf",
    clip: tuple | None = (0.0, 1.0),
    device: torch.device | str = "cpu",
    seed: int = 0,
    losses: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    autoattack: Sequence[str] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> ClassReport:
    """Per-class clean and robust accuracy of ``model`` over ``batches``.

    ``batches`` yields ``(x, y)`` pairs (a ``DataLoader``, for instance). The model
    is evaluated in eval mode and its mode restored afterwards. Random starts
    come from a generator seeded with ``seed``, so results are deterministic.
    With ``losses=True`` the report also carries per-class mean ``clean_ce``,
    ``adv_ce`` and ``kl`` (``KL(f(x) || f(x_adv))``) under the first attack.
    ``progress`` wraps the batch iterable (``tqdm``, for instance). ``autoattack``
    names a custom AutoAttack set for the ``"autoattack"`` entry (default: the
    standard version, reduced below 10 classes); it is seeded with ``seed`` too.
    The report's ``confusion`` maps each attack to the ``(C, C)`` counts of true
    class (row) against the class predicted on its adversarial examples (column).
    ``reduce`` maps every count tensor before any rate is formed (data-parallel
    evaluation: :func:`fairdefense.distributed.all_reduce_sum` over the shards).
    """
    specs = [(name, *parse_attack(name)) for name in attacks]
    num_classes = len(class_names)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    runner = None
    if any(loss == AUTOATTACK for _, loss, _ in specs):
        runner = AutoAttackRunner(model, eps=eps, norm=norm, num_classes=num_classes, device=device, seed=seed,
                                  attacks=autoattack, clip=clip)
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    clean = torch.zeros_like(counts)
    robust = {name: torch.zeros_like(counts) for name, _, _ in specs}
    worst = torch.zeros_like(counts)
    confusion = {name: torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
                 for name, _, _ in specs}
    loss_sums = {k: torch.zeros_like(counts) for k in ("clean_ce", "adv_ce", "kl")}
    try:
        for x, y in progress(batches) if progress else batches:
            x, y = x.to(device, torch.float32), y.to(device).long()
            logits = model(x)
            counts += torch.bincount(y, minlength=num_classes).double()
            clean += torch.bincount(y, weights=(logits.argmax(1) == y).double(), minlength=num_classes)
            all_ok = torch.ones_like(y, dtype=torch.bool)
            for i, (name, loss, steps) in enumerate(specs):
                if loss == AUTOATTACK:
                    x_adv = runner(x, y)
                elif scores_any_iterate(name):
                    x_adv = pgd_early_stop(model, x, y, eps, eps / 4, steps, extra_steps=0, norm=norm, loss=loss,
                                           random_start=_STARTS[loss], clip=clip, generator=generator).x_first_wrong
                else:
                    x_adv = pgd(model, x, y, eps, eps / 4, steps, norm=norm, loss=loss, random_start=_STARTS[loss],
                                clip=clip, generator=generator)
                adv_logits = model(x_adv)
                pred = adv_logits.argmax(1)
                ok = pred == y
                confusion[name] += torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).view(
                    num_classes, num_classes).double()
                all_ok &= ok
                robust[name] += torch.bincount(y, weights=ok.double(), minlength=num_classes)
                if losses and i == 0:
                    per = {
                        "clean_ce": F.cross_entropy(logits, y, reduction="none"),
                        "adv_ce": F.cross_entropy(adv_logits, y, reduction="none"),
                        "kl": F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(logits, 1), reduction="none").sum(1),
                    }
                    for k, v in per.items():
                        loss_sums[k] += torch.bincount(y, weights=v.double(), minlength=num_classes)
            worst += torch.bincount(y, weights=all_ok.double(), minlength=num_classes)
    finally:
        model.train(was_training)
    if reduce is not None:
        counts, clean, worst = reduce(counts), reduce(clean), reduce(worst)
        robust = {k: reduce(v) for k, v in robust.items()}
        loss_sums = {k: reduce(v) for k, v in loss_sums.items()}
        confusion = {k: reduce(v) for k, v in confusion.items()}
    n = counts.where(counts > 0, torch.tensor(float("nan"), dtype=torch.float64, device=device))
    robust_acc = {name: (v / n).cpu() for name, v in robust.items()}
    if len(specs) > 1:
        robust_acc[WORST_CASE] = (worst / n).cpu()
    return ClassReport(
        class_names=list(class_names),
        counts=counts.long().cpu(),
        clean_acc=(clean / n).cpu(),
        robust_acc=robust_acc,
        losses={k: (v / n).cpu() for k, v in loss_sums.items()} if losses else {},
        confusion={name: v.long().cpu() for name, v in confusion.items()},
    )
