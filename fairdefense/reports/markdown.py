"""``report.md``: one evaluation as Markdown (settings, summaries, per-class table, pictures)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from fairdefense.metrics import WORST_CASE
from fairdefense.reports.schema import eps_text

__all__ = ["render_report", "markdown_table", "pct"]

_STATS = ("avg", "worst", "best", "gap", "std")


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string; ``None`` (no samples) as ``"n/a"``."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; ``align`` has one of ``l``/``r`` per column (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _describe_attack(name: str, s: Mapping[str, Any]) -> str:
    if s["kind"] == "autoattack":
        return (f"- **{name}**: AutoAttack ({s['version']} version, package `{s.get('package') or 'autoattack'}`): "
                f"{s['note']}; {s['n_iter']} iterations, {s['n_restarts']} restart, "
                f"Square {s['square_queries']} queries; eps {eps_text(s['eps'])} ({s['norm']}).")
    loss = {"ce": "cross-entropy", "cw": "the CW margin max_{j!=y} z_j - z_y"}.get(s["loss"], s["loss"])
    return (f"- **{name}**: {s['steps']} steps of PGD on {loss}, eps {eps_text(s['eps'])} ({s['norm']}), "
            f"step {eps_text(s['step_size'])} (eps/4), {s['random_start']} random start, model in eval mode.")


def _evaluated(metrics: Mapping[str, Any]) -> str:
    ev = metrics["evaluated"]
    used = {"plugin": "the evaluation weights a plugin supplied (e.g. EMA/FAWA averages)",
            "trained": "the trained weights"}.get(ev.get("weights_used"), str(ev.get("weights_used")))
    where = f"`{ev['checkpoint']}`" if ev.get("checkpoint") else "the model in memory"
    epoch = f" after epoch {ev['epoch']}" if ev.get("epoch") is not None else ""
    return f"{where} ({ev.get('selection')}){epoch}, {used}"


def render_report(metrics: Mapping[str, Any], images: Sequence[str] = ("classwise.png", "curves.png")) -> str:
    """The Markdown text of ``report.md`` for a ``metrics.json`` dict."""
    run, data, settings = metrics["run"], metrics["data"], metrics["settings"]
    attacks = list(metrics["attacks"])
    lines = [
        f"# Robustness report: {run['strategy']} on {run['dataset']}",
        "",
        f"- Run: `{run.get('dir')}`; objective {run.get('objective')}, model {run.get('model')}, "
        f"{run.get('epochs')} epochs, seed {run.get('seed')}.",
        f"- Evaluated: {_evaluated(metrics)}.",
        f"- Data: {data['n_samples']} {data['split']} samples in {len(data['class_names'])} classes; "
        f"attack radius eps {eps_text(settings['eps'])} ({settings['norm']}), seed {settings['seed']}.",
        f"- fairdefense {metrics['fairdefense_version']}, metrics.json schema {metrics['schema_version']}, "
        f"written {metrics['created']}.",
        "",
        "## Attacks",
        "",
    ]
    lines += [_describe_attack(a, settings["attacks"][a]) for a in attacks if a in settings["attacks"]]
    if WORST_CASE in metrics["attacks"]:
        over = ", ".join(metrics["attacks"][WORST_CASE].get("over", []))
        lines.append(f"- **{WORST_CASE}**: per sample, robust only if it resists every attack ({over}).")
    rows = [["clean accuracy", *(pct(metrics["clean"]["summary"]["acc"][k]) for k in _STATS)]]
    rows += [[f"{a} robust accuracy", *(pct(metrics["attacks"][a]["summary"]["robust_acc"][k]) for k in _STATS)]
             for a in attacks]
    lines += ["", "## Accuracy over classes (%)", "", markdown_table(["", *_STATS], rows)]
    rows = [["clean error", *(pct(metrics["clean"]["summary"]["error"][k]) for k in _STATS)]]
    for a in attacks:
        s = metrics["attacks"][a]["summary"]
        rows.append([f"{a} boundary error", *(pct(s["boundary_error"][k]) for k in _STATS)])
        rows.append([f"{a} robust error", *(pct(s["robust_error"][k]) for k in _STATS)])
    lines += [
        "", "## Fairness: error over classes (%)", "",
        "Boundary error = clean accuracy - robust accuracy; robust error = clean error + boundary error "
        "(per class). Worst = largest error; gap = worst - best; std over classes.", "",
        markdown_table(["", *_STATS], rows),
    ]
    rows = [
        [name, data["counts"][c], pct(metrics["clean"]["acc"][c]),
         *(pct(metrics["attacks"][a]["robust_acc"][c]) for a in attacks)]
        for c, name in enumerate(data["class_names"])
    ]
    lines += ["", "## Per-class accuracy (%)", "", markdown_table(["class", "n", "clean", *attacks], rows)]
    if images:
        lines += ["", "## Figures", ""] + [f"![{img.rsplit('.', 1)[0]}]({img})" for img in images]
    return "\n".join(lines) + "\n"
