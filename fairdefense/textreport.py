"""Plain-text per-class tables, the fairness summary and the average and worst class with intervals."""
from __future__ import annotations

from torch import Tensor

from fairdefense.metrics import ClassReport
from fairdefense.reports.markdown import pct
from fairdefense.reports.schema import correct_counts
from fairdefense.stats import LEVEL, RESAMPLES, bootstrap_summaries, clopper_pearson

__all__ = ["format_report"]


def _interval_line(label: str, acc: Tensor, report: ClassReport) -> str:
    """``label: avg 71.3 [68.1, 74.2], worst 37.5 [22.1, 51.0] (class 8: exact 22.7-54.2)``."""
    counts = report.counts.tolist()
    correct = correct_counts(acc.tolist(), counts)
    boot = bootstrap_summaries(correct, counts)
    present = [c for c in range(len(counts)) if counts[c]]
    weak = min(present, key=lambda c: acc[c].item())
    lo, hi = clopper_pearson(correct[weak], counts[weak])
    avg = sum(acc[c].item() for c in present) / len(present)
    return (f"{label:<22} avg {pct(avg, width=5)} [{pct(boot['avg'][0], width=5)}, {pct(boot['avg'][1], width=5)}]   "
            f"worst {pct(acc[weak].item(), width=5)} [{pct(boot['worst'][0], width=5)}, {pct(boot['worst'][1], width=5)}]   "
            f"(class {report.class_names[weak]}: exact {pct(lo)}-{pct(hi)})")


def format_report(report: ClassReport, title: str = "") -> str:
    """A per-class table (clean and robust accuracy per attack), the fairness summary
    (average, worst, best, gap and std over classes of clean/boundary/robust error), and
    the average and worst-class accuracy with their bootstrap intervals (and the weakest
    class's exact interval)."""
    attacks = list(report.robust_acc)
    width = max(8, *(len(n) for n in report.class_names))
    head = f"{'class':<{width}} {'n':>5} {'clean':>6} " + " ".join(f"{a:>10}" for a in attacks)
    lines = [title] if title else []
    lines += ["Per-class accuracy (%)", head, "-" * len(head)]
    for c, name in enumerate(report.class_names):
        row = f"{name:<{width}} {int(report.counts[c]):>5} {pct(report.clean_acc[c].item(), width=6)} "
        row += " ".join(f"{pct(report.robust_acc[a][c].item(), width=6):>10}" for a in attacks)
        lines.append(row)
    lines += ["", "Fairness summary (error %, over classes)", f"{'quantity':<28} {'avg':>6} {'worst':>6} {'best':>6} {'gap':>6} {'std':>6}"]
    s = report.summary()
    rows = [("clean error", s["clean_error"])]
    for a in attacks:
        rows += [(f"{a} boundary error", s[f"{a}/boundary_error"]), (f"{a} robust error", s[f"{a}/robust_error"])]
    for label, v in rows:
        lines.append(f"{label:<28} " + " ".join(pct(v[k], width=6) for k in ("avg", "worst", "best", "gap", "std")))
    lines += ["", f"Accuracy (%) with {100 * LEVEL:.0f}% intervals over the test samples "
                  f"(stratified bootstrap, {RESAMPLES} resamples)"]
    lines.append(_interval_line("clean", report.clean_acc, report))
    lines += [_interval_line(f"{a} robust", report.robust_acc[a], report) for a in attacks]
    return "\n".join(lines)
