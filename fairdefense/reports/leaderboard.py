"""Compare runs: a leaderboard (Markdown and CSV) and an average-vs-worst scatter.

Each run contributes its ``metrics.json`` (or, without one, its last test
evaluation during training). Runs are ranked by average + worst-class robust
accuracy under one attack, CFA's checkpoint rule; values are percentages.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from fairdefense.errors import ConfigError
from fairdefense.reports.markdown import markdown_table
from fairdefense.reports.plots import plot_scatter
from fairdefense.reports.runs import run_metrics
from fairdefense.reports.schema import headline_attack

__all__ = ["leaderboard", "leaderboard_markdown", "write_leaderboard", "LEADERBOARD_FILES"]

#: The files :func:`write_leaderboard` writes.
LEADERBOARD_FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard.png")


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _name(target: Path) -> str:
    return target.parent.name if target.is_file() else target.name


def leaderboard(runs: Sequence[str | Path], attack: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """``(attack, rows)``: one row per run, best first.

    ``attack`` defaults to the strongest attack every run has (the worst case over
    attacks, else AutoAttack, else the first). Each row has the run's name,
    strategy, data and weights, clean and robust accuracy (average, worst, gap,
    std), boundary error (average, worst) under ``attack`` and average/worst robust
    accuracy under every other shared attack, all in %.
    """
    if not runs:
        raise ConfigError("give at least one run folder to compare.")
    entries = [(Path(r), run_metrics(r)) for r in runs]
    shared = [a for a in entries[0][1]["attacks"] if all(a in m["attacks"] for _, m in entries)]
    if attack is None:
        if not shared:
            raise ConfigError("these runs share no attack; evaluate them with the same --attacks first.")
        attack = headline_attack(shared)
    missing = [str(p) for p, m in entries if attack not in m["attacks"]]
    if missing:
        raise ConfigError(
            f"attack {attack!r} is missing from {', '.join(missing)}; evaluate them with it "
            f"(fairdefense evaluate RUN --attacks {attack}) or pick one of {shared}."
        )
    rows = []
    for path, m in entries:
        s = m["attacks"][attack]["summary"]
        row: dict[str, Any] = {
            "run": _name(path),
            "strategy": m["run"]["strategy"],
            "dataset": m["run"]["dataset"],
            "objective": m["run"]["objective"],
            "selection": m["evaluated"].get("selection"),
            "epoch": m["evaluated"].get("epoch"),
            "weights_used": m["evaluated"].get("weights_used"),
            "n_samples": m["data"]["n_samples"],
            "eps": m["settings"]["eps"],
            "clean_avg": _pct(m["clean"]["summary"]["acc"]["avg"]),
            "clean_worst": _pct(m["clean"]["summary"]["acc"]["worst"]),
            "robust_avg": _pct(s["robust_acc"]["avg"]),
            "robust_worst": _pct(s["robust_acc"]["worst"]),
            "robust_gap": _pct(s["robust_acc"]["gap"]),
            "robust_std": _pct(s["robust_acc"]["std"]),
            "boundary_error_avg": _pct(s["boundary_error"]["avg"]),
            "boundary_error_worst": _pct(s["boundary_error"]["worst"]),
        }
        for other in shared:
            if other != attack:
                o = m["attacks"][other]["summary"]["robust_acc"]
                row[f"{other}_avg"], row[f"{other}_worst"] = _pct(o["avg"]), _pct(o["worst"])
        rows.append(row)
    rows.sort(key=lambda r: -((r["robust_avg"] or 0.0) + (r["robust_worst"] or 0.0)))
    return attack, [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def leaderboard_markdown(attack: str, rows: Sequence[dict[str, Any]]) -> str:
    """The leaderboard as Markdown: a title line and a table."""
    fixed = ["rank", "run", "strategy", "clean_avg", "clean_worst", "robust_avg", "robust_worst", "robust_gap",
             "robust_std", "boundary_error_avg", "boundary_error_worst"]
    extra = [k for k in rows[0] if k.endswith(("_avg", "_worst")) and k not in fixed] if rows else []
    header = ["#", "run", "strategy", "clean avg", "clean worst", f"{attack} avg", f"{attack} worst", "gap", "std",
              "boundary err avg", "boundary err worst", *(k.replace("_", " ") for k in extra)]
    body = [[("n/a" if r[k] is None else r[k]) for k in fixed + extra] for r in rows]
    title = (f"Leaderboard: robust accuracy (%) under {attack}, ranked by average + worst class; "
             f"boundary error (%) = clean - robust accuracy.")
    return title + "\n\n" + markdown_table(header, body, align="rll" + "r" * (len(header) - 3)) + "\n"


def write_leaderboard(
    runs: Sequence[str | Path], out_dir: str | Path = ".", attack: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Write :data:`LEADERBOARD_FILES` into ``out_dir``; returns the rows and ``{file name: path}``."""
    attack, rows = leaderboard(runs, attack)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "leaderboard.md"
    md.write_text(leaderboard_markdown(attack, rows))
    csv_path = out / "leaderboard.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labels = [r["strategy"] for r in rows]
    points = [
        (f"{r['strategy']} ({r['run']})" if labels.count(r["strategy"]) > 1 else r["strategy"],
         r["robust_avg"], r["robust_worst"])
        for r in rows
    ]
    png = plot_scatter(points, out / "leaderboard.png", attack=attack)
    return rows, {"leaderboard.md": md, "leaderboard.csv": csv_path, "leaderboard.png": png}
