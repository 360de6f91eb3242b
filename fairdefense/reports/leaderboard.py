"""Compare runs: a leaderboard (Markdown and CSV), seeds grouped with paired tests, and a scatter.

Each run contributes its ``metrics.json`` (or, without one, its last test
evaluation during training). Runs are ranked by average + worst-class robust
accuracy under one attack, CFA's checkpoint rule; values are percentages.

Runs whose configuration differs only by ``seed`` (and, for the k-fold protocol,
the fold they test on) form one *configuration*: its mean and standard deviation
over runs, and, against the baseline configuration, a paired t-test
(:func:`fairdefense.stats.paired_t_test`) of the per-unit differences of average
and worst-class robust accuracy over the units (seed, fold) both have.
"""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from fairdefense.errors import ConfigError
from fairdefense.reports.markdown import markdown_table
from fairdefense.reports.plots import plot_scatter
from fairdefense.reports.runs import run_metrics
from fairdefense.reports.schema import headline_attack
from fairdefense.stats import paired_t_test

__all__ = [
    "leaderboard",
    "group_runs",
    "leaderboard_markdown",
    "groups_markdown",
    "format_test",
    "write_leaderboard",
    "configuration_key",
    "LEADERBOARD_FILES",
    "ALPHA",
]

#: The files :func:`write_leaderboard` writes.
LEADERBOARD_FILES = ("leaderboard.md", "leaderboard.csv", "leaderboard-configurations.csv", "leaderboard.png")
#: Default significance level of the paired tests.
ALPHA = 0.05
#: ``run`` fields that vary between the runs of one configuration.
_UNIT_KEYS = ("seed", "fold", "dir")


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _name(target: Path) -> str:
    return target.parent.name if target.is_file() else target.name


def configuration_key(metrics: Mapping[str, Any]) -> str:
    """What makes runs one configuration: the run's settings except seed, fold and folder,
    the fold count, the evaluated weights and the evaluation's radius and attacks (as JSON)."""
    run = {k: v for k, v in metrics["run"].items() if k not in _UNIT_KEYS}
    fold = metrics["run"].get("fold")
    ev = metrics["evaluated"]
    return json.dumps({"run": run, "folds": fold.split("/")[1] if fold else None, "selection": ev.get("selection"),
                       "weights_used": ev.get("weights_used"), "eps": metrics["settings"]["eps"],
                       "attacks": sorted(metrics["settings"].get("attacks", {}))}, sort_keys=True, default=str)


def _unit(metrics: Mapping[str, Any]) -> tuple[Any, Any]:
    return metrics["run"].get("seed"), metrics["run"].get("fold")


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
            "seed": m["run"].get("seed"),
            "fold": m["run"].get("fold"),
            "configuration": configuration_key(m),
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
        row["input_order"] = len(rows)
        rows.append(row)
    rows.sort(key=lambda r: -((r["robust_avg"] or 0.0) + (r["robust_worst"] or 0.0)))
    return attack, [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def _labels(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A readable name per configuration: the strategy, with the settings that tell apart
    configurations sharing a strategy."""
    configs = list(dict.fromkeys(r["configuration"] for r in rows))
    strategy = {r["configuration"]: r["strategy"] for r in rows}
    labels = {}
    for key in configs:
        same = [k for k in configs if strategy[k] == strategy[key]]
        if len(same) == 1:
            labels[key] = strategy[key]
            continue
        mine, others = json.loads(key), [json.loads(k) for k in same if k != key]
        flat = {**mine["run"], **{k: v for k, v in mine.items() if k != "run"}}
        differ = [k for k, v in flat.items() if any({**o["run"], **o}.get(k) != v for o in others)]
        labels[key] = f"{strategy[key]} (" + ", ".join(f"{k}={flat[k]}" for k in differ if k != "strategy") + ")"
    return labels


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_runs(
    rows: Sequence[dict[str, Any]], baseline: str | None = None, alpha: float = ALPHA
) -> list[dict[str, Any]]:
    """Configurations from :func:`leaderboard`'s rows, best first: runs, units, mean and std
    (ddof 1) of clean and robust average and worst, and for every configuration but the
    baseline a paired t-test against it on the units (seed, fold) both ran, for ``avg``
    and ``worst`` robust accuracy, in percentage points, ``significant`` at ``alpha``.

    ``baseline`` names a configuration (its label) or a run folder in it; default the
    configuration of the first run given.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), e.g. 0.05, got {alpha}.")
    labels = _labels(rows)
    by_config: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["input_order"]):
        by_config.setdefault(row["configuration"], []).append(row)
    if baseline is None:
        base_key = next(iter(by_config))
    else:
        found = [k for k in by_config if labels[k] == baseline or any(r["run"] == baseline for r in by_config[k])]
        if not found:
            raise ConfigError(f"no configuration or run named {baseline!r}; choose one of "
                              f"{sorted(set(labels.values()))} (or a run folder's name).")
        base_key = found[0]
    base_units = {(r["seed"], r["fold"]): r for r in by_config[base_key]}
    groups = []
    for key, members in by_config.items():
        group: dict[str, Any] = {"configuration": labels[key], "baseline": key == base_key, "runs": len(members),
                                 "units": sorted((str(r["seed"]), str(r["fold"])) for r in members)}
        for value in ("clean_avg", "clean_worst", "robust_avg", "robust_worst"):
            group[f"{value}_mean"], group[f"{value}_std"] = _mean_std([r[value] for r in members])
        group["tests"] = {}
        if key != base_key:
            shared = [(base_units[u], r) for r in members if (u := (r["seed"], r["fold"])) in base_units]
            for value in ("avg", "worst"):
                if shared:
                    test = paired_t_test([b[f"robust_{value}"] for b, _ in shared],
                                         [r[f"robust_{value}"] for _, r in shared])
                    group["tests"][value] = {**test.to_dict(), "significant": test.significant(alpha)}
        groups.append(group)
    groups.sort(key=lambda g: -(g["robust_avg_mean"] + g["robust_worst_mean"]))
    return groups


def format_test(test: Mapping[str, Any] | None) -> str:
    """A paired test as a table cell, in points: ``+11.0 [-2.8, +24.8] p=0.076 *`` (``*``: significant,
    ``*†``: still significant after a Holm correction, when ``test["holm"]`` says so), the
    difference alone when no test was possible, ``-`` for none."""
    if not test:
        return "-"
    if test["p_value"] is None:
        return f"{test['mean_diff']:+.1f} (n={test['n']}, no test)"
    mark = " *†" if test.get("holm") else (" *" if test["significant"] else "")
    return f"{test['mean_diff']:+.1f} [{test['ci'][0]:+.1f}, {test['ci'][1]:+.1f}] p={test['p_value']:.3f}{mark}"


def groups_markdown(attack: str, groups: Sequence[dict[str, Any]], alpha: float = ALPHA) -> str:
    """The configurations table: mean ± std over runs, and the paired tests against the baseline."""
    base = next(g["configuration"] for g in groups if g["baseline"])

    def ms(g: Mapping[str, Any], key: str) -> str:
        std = g[f"{key}_std"]
        return f"{g[f'{key}_mean']:.1f}" + ("" if std is None else f" ± {std:.1f}")

    body = [[g["configuration"] + (" (baseline)" if g["baseline"] else ""), g["runs"], ms(g, "clean_avg"),
             ms(g, "clean_worst"), ms(g, "robust_avg"), ms(g, "robust_worst"),
             format_test(g["tests"].get("avg")), format_test(g["tests"].get("worst"))] for g in groups]
    header = ["configuration", "runs", "clean avg", "clean worst", f"{attack} avg", f"{attack} worst",
              f"Δ avg vs {base}", f"Δ worst vs {base}"]
    title = (f"Configurations (runs differing only by seed or fold grouped): mean ± std (ddof 1) over runs, %. "
             f"Δ: mean per-unit difference to {base} over the units (seed, fold) both ran, with its 95% interval "
             f"and the two-sided paired t-test's p-value; * significant at alpha = {alpha:g}. "
             f"Not corrected for testing several configurations.")
    return title + "\n\n" + markdown_table(header, body, align="lr" + "r" * (len(header) - 2)) + "\n"


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
    runs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    attack: str | None = None,
    *,
    baseline: str | None = None,
    alpha: float = ALPHA,
) -> tuple[str, dict[str, Path]]:
    """The leaderboard's Markdown (configurations with paired tests when a configuration has
    several runs, then one row per run); with ``out_dir``, also :data:`LEADERBOARD_FILES`
    there. Returns the Markdown and ``{file name: path}`` (empty without ``out_dir``)."""
    attack, rows = leaderboard(runs, attack)
    groups = group_runs(rows, baseline, alpha)
    text = leaderboard_markdown(attack, rows)
    if len(groups) < len(rows):
        text = groups_markdown(attack, groups, alpha) + "\n" + text
    if out_dir is None:
        return text, {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "leaderboard.md"
    md.write_text(text)
    csv_path = out / "leaderboard.csv"
    fields = [k for k in rows[0] if k not in ("configuration", "input_order")]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    groups_path = out / "leaderboard-configurations.csv"
    with open(groups_path, "w", newline="") as f:
        flat = [{**{k: v for k, v in g.items() if k not in ("tests", "units")},
                 **{f"d_{v}_{k}": t.get(k) for v, t in g["tests"].items() for k in ("mean_diff", "p_value", "ci",
                                                                                    "n", "significant")}}
                for g in groups]
        names = list(dict.fromkeys(k for g in flat for k in g))
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(flat)
    labels = [r["strategy"] for r in rows]
    points = [
        (f"{r['strategy']} ({r['run']})" if labels.count(r["strategy"]) > 1 else r["strategy"],
         r["robust_avg"], r["robust_worst"])
        for r in rows
    ]
    png = plot_scatter(points, out / "leaderboard.png", attack=attack)
    return text, {"leaderboard.md": md, "leaderboard.csv": csv_path,
                  "leaderboard-configurations.csv": groups_path, "leaderboard.png": png}
