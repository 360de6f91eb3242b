"""The report's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- :func:`plot_classwise`: per-class clean and robust accuracy bars with 95% intervals (``classwise.png``);
- :func:`plot_confusion`: where each class's adversarial examples are predicted (``confusion.png``);
- :func:`plot_curves`: average and worst-class robust accuracy per epoch (``curves.png``);
- :func:`plot_scatter`: average vs worst-class robust accuracy, one point per run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fairdefense.errors import ConfigError
from fairdefense.metrics import WORST_CASE, summarize
from fairdefense.reports.schema import eps_text, headline_attack

__all__ = ["plot_classwise", "plot_confusion", "plot_curves", "plot_scatter", "MAX_BAR_CLASSES"]

#: Above this many classes, the bar chart keeps only clean and the headline attack.
MAX_BAR_CLASSES = 20


def _pct(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else 100 * v for v in values]


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return Path(path)


def _title(metrics: Mapping[str, Any]) -> str:
    run, ev = metrics["run"], metrics["evaluated"]
    epoch = f", epoch {ev['epoch']}" if ev.get("epoch") is not None else ""
    eps, n = eps_text(metrics["settings"]["eps"]), metrics["data"]["n_samples"]
    return f"{run['strategy']} on {run['dataset']} ({ev.get('selection', '')}{epoch}, eps={eps}, {n} samples)"


def plot_classwise(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars per class: clean accuracy and robust accuracy under each attack, with
    each class's exact 95% interval as an error bar (when the metrics have intervals).

    The legend gives each series' average and worst class over classes. With more
    than :data:`MAX_BAR_CLASSES` classes only clean and the headline attack are drawn,
    as horizontal bars (one row per class) so every class name stays readable.
    """
    names = metrics["data"]["class_names"]
    attacks = list(metrics["attacks"])
    many = len(names) > MAX_BAR_CLASSES
    if many and attacks:
        attacks = [headline_attack(attacks)]
    series = [("clean", metrics["clean"]["acc"], metrics["clean"]["summary"]["acc"], metrics["clean"].get("ci"))]
    for a in attacks:
        e = metrics["attacks"][a]
        series.append((a, e["robust_acc"], e["summary"]["robust_acc"], e.get("ci")))
    n, k = len(names), len(series)
    width = 0.8 / k
    fig = Figure(figsize=(9.0, max(6.0, 0.22 * n)) if many else (max(8.0, 0.22 * n * (k + 1)), 4.8))
    ax = fig.add_subplot()
    colors = ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, (label, values, s, ci) in enumerate(series):
        offsets = [c + (i - (k - 1) / 2) * width for c in range(n)]
        style = dict(color=colors[i % len(colors)], hatch="//" if label == WORST_CASE else None, edgecolor="white",
                     label=f"{label} (avg {100 * s['avg']:.1f}, worst {100 * s['worst']:.1f})")
        if ci:
            style["error_kw"] = dict(elinewidth=0.8, capsize=1.5, ecolor="#333333")
            bars = _pct(values)
            low = [b - 100 * lo[0] if lo else 0.0 for b, lo in zip(bars, ci)]
            high = [100 * lo[1] - b if lo else 0.0 for b, lo in zip(bars, ci)]
            style["xerr" if many else "yerr"] = [low, high]
        if many:
            ax.barh(offsets, _pct(values), width, **style)
        else:
            ax.bar(offsets, _pct(values), width, **style)
    if many:
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize="small")
        ax.set_ylim(n - 0.4, -0.6)
        ax.set_xlim(0, 105)
        ax.set_ylabel("class")
        ax.set_xlabel("accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xticks(range(n))
        rotate = n > 12 or max(len(str(c)) for c in names) > 6
        ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(0, 105)
        ax.set_xlabel("class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(f"Per-class clean and robust accuracy (bars: exact 95% intervals): {_title(metrics)}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="accuracy (%)")
    return _save(fig, path)


def plot_confusion(metrics: Mapping[str, Any], attack: str, path: str | Path) -> Path:
    """Heatmap of true class (rows) against the class predicted on ``attack``'s adversarial
    examples (columns), each row as shares of the class's samples; counts written in the
    cells up to 20 classes. The diagonal is the robust accuracy."""
    names = metrics["data"]["class_names"]
    counts = torch.tensor(metrics["attacks"][attack]["confusion"], dtype=torch.float64)
    share = counts / counts.sum(1, keepdim=True).clamp_min(1)
    n = len(names)
    side = min(14.0, max(5.0, 0.45 * n + 2))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(100 * share.numpy(), cmap="viridis", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="share of the true class's samples (%)", fraction=0.046, pad=0.04)
    if n <= MAX_BAR_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize="x-small",
                            color="black" if share[i, j] > 0.6 else "white")
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=45 if max(len(str(c)) for c in names) > 3 else 0, ha="right")
        ax.set_yticks(range(n))
        ax.set_yticklabels(names)
    ax.set_xlabel(f"predicted class under {attack}")
    ax.set_ylabel("true class")
    ax.set_title(f"Adversarial confusion ({attack}): {_title(metrics)}", fontsize="small")
    return _save(fig, path)


def _curve_series(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[int], list[float], list[float]]]:
    """``(label, epochs, avg %, worst %)`` for train, validation and test entries."""
    found: dict[str, tuple[list[int], list[float], list[float]]] = {}

    def add(label: str, epoch: int, acc: Sequence[float | None]) -> None:
        values = [float("nan") if v is None else v for v in acc]
        s = summarize(torch.tensor(values, dtype=torch.float64), higher_is_worse=False)
        e, a, w = found.setdefault(label, ([], [], []))
        e.append(epoch)
        a.append(100 * s["avg"])
        w.append(100 * s["worst"])

    for entry in history:
        epoch = int(entry["epoch"])
        if entry.get("train", {}).get("robust_acc") is not None:
            add("train (training adversarial examples)", epoch, entry["train"]["robust_acc"])
        for split in ("val", "test"):
            if entry.get(split):
                attack = next(iter(entry[split]["robust_acc"]), None)
                if attack is not None:
                    label = "validation" if split == "val" else "test"
                    add(f"{label} {attack}", epoch, entry[split]["robust_acc"][attack])
    return [(label, *values) for label, values in found.items()]


def plot_curves(
    history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "", best_epoch: int | None = None
) -> Path:
    """Average (solid) and worst-class (dashed) robust accuracy per epoch, per split.

    ``history`` holds the lines of ``metrics.jsonl``: ``train`` (accuracy on the
    training adversarial examples), ``val`` and ``test`` (the first attack of
    each). ``best_epoch`` draws a vertical marker.
    """
    series = _curve_series(history)
    if not series:
        raise ConfigError("the run has no epoch with per-class accuracies to plot (metrics.jsonl is empty).")
    fig = Figure(figsize=(8.0, 4.8))
    ax = fig.add_subplot()
    colors = ["#2ca02c", "#ff7f0e", "#1f77b4", "#d62728", "#9467bd"]
    for i, (label, epochs, avg, worst) in enumerate(series):
        color = colors[i % len(colors)]
        ax.plot(epochs, avg, "-o", color=color, markersize=4, label=f"{label}: average")
        ax.plot(epochs, worst, "--s", color=color, markersize=4, label=f"{label}: worst class")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="black", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
    last = max(e for _, epochs, _, _ in series for e in epochs)
    ax.set_xlim(0.5, last + 0.5)
    if last <= 20:
        ax.set_xticks(range(1, last + 1))
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Average and worst-class robust accuracy per epoch")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(fig, path)


def plot_scatter(
    points: Sequence[tuple[str, float, float]], path: str | Path, *, attack: str, title: str = ""
) -> Path:
    """Average (x) vs worst-class (y) robust accuracy in %, one labelled point per run."""
    fig = Figure(figsize=(7.0, 5.6))
    ax = fig.add_subplot()
    for i, (label, avg, worst) in enumerate(points):
        ax.scatter([avg], [worst], s=48, color=f"C{i % 10}", zorder=3)
        ax.annotate(label, (avg, worst), textcoords="offset points", xytext=(6, 6), fontsize="small")
    xs = [p[1] for p in points]
    ys = [p[2] for p in points]
    pad = 5.0
    ax.set_xlim(max(-2.0, min(xs) - pad), min(100.0, max(xs) + pad) + pad)
    ax.set_ylim(max(-2.0, min(ys) - pad), min(102.0, max(ys) + pad))
    ax.set_xlabel(f"average robust accuracy over classes (%, {attack})")
    ax.set_ylabel(f"worst-class robust accuracy (%, {attack})")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Robust fairness under {attack}: better runs lie up and to the right")
    return _save(fig, path)
