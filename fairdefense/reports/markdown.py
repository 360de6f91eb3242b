"""``report.md``: one evaluation as Markdown (settings, summaries with intervals, per-class
table with intervals, where the weak classes are pushed under attack, pictures)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from fairdefense.metrics import WORST_CASE
from fairdefense.reports.schema import eps_text

__all__ = ["render_report", "markdown_table", "pct", "pct_ci", "confusion_attack", "weak_class_lines", "WEAK_CLASSES"]

_STATS = ("avg", "worst", "best", "gap", "std")
#: How many of the lowest robust-accuracy classes ``report.md`` follows under attack.
WEAK_CLASSES = 3


def pct(value: float | None, digits: int = 1, width: int = 0) -> str:
    """A fraction as a percentage string, right-aligned in ``width`` characters; ``None`` (no samples) as ``"n/a"``.

    The one percentage formatter of the text, Markdown and benchmark reports."""
    return f"{'n/a':>{width}}" if value is None else f"{100 * value:{width}.{digits}f}"


def pct_ci(value: float | None, ci: Sequence[float | None] | None, digits: int = 1) -> str:
    """``"71.3 [68.1, 74.2]"``: a fraction and its interval as percentages (the value alone without one)."""
    if value is None or not ci or ci[0] is None:
        return pct(value, digits)
    return f"{pct(value, digits)} [{pct(ci[0], digits)}, {pct(ci[1], digits)}]"


def confusion_attack(metrics: Mapping[str, Any]) -> str | None:
    """The attack whose confusion ``report.md`` and ``confusion.png`` show: AutoAttack, else the
    first attack with a confusion matrix (the worst-case row has none); ``None`` if none has one."""
    having = [a for a, e in metrics["attacks"].items() if e.get("confusion") is not None]
    return "autoattack" if "autoattack" in having else (having[0] if having else None)


def weak_class_lines(metrics: Mapping[str, Any], attack: str, k: int = WEAK_CLASSES) -> list[str]:
    """One line per class among the ``k`` lowest robust accuracies under ``attack``: how many
    of its samples the attack fooled and which classes they went to, with shares of its errors."""
    names, counts = metrics["data"]["class_names"], metrics["data"]["counts"]
    entry = metrics["attacks"][attack]
    matrix = entry["confusion"]
    ranked = sorted((c for c in range(len(names)) if counts[c]), key=lambda c: entry["robust_acc"][c])
    lines = []
    for c in ranked[:k]:
        errors = [(matrix[c][j], j) for j in range(len(names)) if j != c and matrix[c][j] > 0]
        wrong = sum(n for n, _ in errors)
        ci = (entry.get("ci") or [None] * len(names))[c]
        interval = f", exact 95% interval {pct(ci[0])}-{pct(ci[1])}%" if ci else ""
        head = (f"- **{names[c]}** (robust {pct(entry['robust_acc'][c])}%{interval}): {wrong} of its {counts[c]} "
                f"samples misclassified")
        if not wrong:
            lines.append(head + ".")
            continue
        top = sorted(errors, reverse=True)[:2]
        pushed = ", then ".join(f"{names[j]} ({n}, {100 * n / wrong:.0f}% of its errors)" for n, j in top)
        lines.append(f"{head}; mostly pushed to {pushed}.")
    return lines


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


def _samples(data: Mapping[str, Any]) -> str:
    fold = f", fold {data['fold']} (k-fold)" if data.get("fold") else ""
    first = f", the first {data['first_n']}" if data.get("first_n") else ""
    digest = f"; samples' SHA-256 `{data['sha256'][:16]}...`" if data.get("sha256") else ""
    return f"{data['split']} split{fold}{first}{digest}"


def render_report(
    metrics: Mapping[str, Any], images: Sequence[str] = ("classwise.png", "curves.png", "confusion.png")
) -> str:
    """The Markdown text of ``report.md`` for a ``metrics.json`` dict."""
    run, data, settings = metrics["run"], metrics["data"], metrics["settings"]
    attacks = list(metrics["attacks"])
    lines = [
        f"# Robustness report: {run['strategy']} on {run['dataset']}",
        "",
        f"- Run: `{run.get('dir')}`; objective {run.get('objective')}, model {run.get('model')}, "
        f"{run.get('epochs')} epochs, seed {run.get('seed')}.",
        f"- Evaluated: {_evaluated(metrics)}.",
        f"- Data: {data['n_samples']} samples in {len(data['class_names'])} classes ({_samples(data)}); "
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
    stats = metrics.get("stats") or {}
    entries = [("clean accuracy", metrics["clean"], "acc")] + [
        (f"{a} robust accuracy", metrics["attacks"][a], "robust_acc") for a in attacks]
    rows = [[label, *(pct_ci(e["summary"][key][k], e.get("summary_ci", {}).get(key, {}).get(k)) for k in _STATS)]
            for label, e, key in entries]
    lines += [
        "", "## Accuracy over classes (%)", "",
        f"In brackets: {100 * stats.get('level', 0.95):.0f}% bootstrap intervals over the test samples "
        f"(stratified by class, {stats.get('resamples', 'n/a')} resamples, seed {stats.get('seed', 'n/a')}); "
        "they cover the noise of this test set, not the variation between training seeds.", "",
        markdown_table(["", *_STATS], rows),
    ]
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
    def cell(entry: Mapping[str, Any], key: str, c: int) -> str:
        return pct_ci(entry[key][c], (entry.get("ci") or [None] * len(data["counts"]))[c])

    rows = [
        [name, data["counts"][c], cell(metrics["clean"], "acc", c),
         *(cell(metrics["attacks"][a], "robust_acc", c) for a in attacks)]
        for c, name in enumerate(data["class_names"])
    ]
    lines += ["", "## Per-class accuracy (%)", "",
              f"In brackets: exact (Clopper-Pearson) {100 * stats.get('level', 0.95):.0f}% intervals from each class's "
              "count.", "", markdown_table(["class", "n", "clean", *attacks], rows)]
    shown = confusion_attack(metrics)
    if shown is not None:
        lines += ["", f"## Where the weak classes go under {shown}", "",
                  f"The {WEAK_CLASSES} classes with the lowest robust accuracy under {shown}, and the classes their "
                  "adversarial examples are predicted as (counts from the confusion matrix in metrics.json).", "",
                  *weak_class_lines(metrics, shown)]
    if images:
        lines += ["", "## Figures", ""] + [f"![{img.rsplit('.', 1)[0]}]({img})" for img in images]
    return "\n".join(lines) + "\n"
