"""Plain-text per-class tables and the fairness summary."""
from __future__ import annotations

from fairdefense.metrics import ClassReport

__all__ = ["format_report"]


def _pct(v: float) -> str:
    return f"{100 * v:6.1f}"


def format_report(report: ClassReport, title: str = "") -> str:
    """A per-class table (clean and robust accuracy per attack) and the fairness summary:
    average, worst, best, gap and std over classes of clean/boundary/robust error."""
    attacks = list(report.robust_acc)
    width = max(8, *(len(n) for n in report.class_names))
    head = f"{'class':<{width}} {'n':>5} {'clean':>6} " + " ".join(f"{a:>10}" for a in attacks)
    lines = [title] if title else []
    lines += ["Per-class accuracy (%)", head, "-" * len(head)]
    for c, name in enumerate(report.class_names):
        row = f"{name:<{width}} {int(report.counts[c]):>5} {_pct(report.clean_acc[c].item())} "
        row += " ".join(f"{_pct(report.robust_acc[a][c].item()):>10}" for a in attacks)
        lines.append(row)
    lines += ["", "Fairness summary (error %, over classes)", f"{'quantity':<28} {'avg':>6} {'worst':>6} {'best':>6} {'gap':>6} {'std':>6}"]
    s = report.summary()
    rows = [("clean error", s["clean_error"])]
    for a in attacks:
        rows += [(f"{a} boundary error", s[f"{a}/boundary_error"]), (f"{a} robust error", s[f"{a}/robust_error"])]
    for label, v in rows:
        lines.append(f"{label:<28} " + " ".join(_pct(v[k]) for k in ("avg", "worst", "best", "gap", "std")))
    return "\n".join(lines)
