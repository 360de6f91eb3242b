"""Quality suite: every strategy against PGD-AT and TRADES on the embedded digits, several seeds.

    python benchmarks/quality.py                                    # everything: seeds 0 1 2, 30 epochs, 2 jobs
    python benchmarks/quality.py --epochs 2 --seeds 0 --only at bat # a smoke run
    python benchmarks/quality.py --aggregate-only                   # rewrite the docs from finished runs

Each configuration runs through the real command line, ``fairdefense train ... --out
runs/quality/<name>-s<seed> --no-progress``, then ``fairdefense evaluate`` scores the
run's evaluation weights (EMA/FAWA averages where a plugin supplies them) on the test
split under PGD-20 and, unless ``--autoattack off``, AutoAttack. Runs go ``--jobs`` at
a time, each in its own process with one CPU thread. A run whose ``metrics.jsonl``
already holds its last epoch is not trained again, one with a checkpoint but fewer
epochs is resumed (``--resume``), and one with a matching ``metrics.json`` is not
evaluated again: the suite can be stopped and restarted. Fine-tuning rows start from
the same seed's baseline checkpoint and wait for it.

The results (mean and standard deviation over seeds of average and worst-class clean
and robust accuracy) go to ``docs/results.md``, ``docs/results.json`` and the
average-vs-worst scatter ``docs/leaderboard.png``, with the exact command of every row.

Cost on 2 CPU cores (42 runs): a 30-epoch run trains in about 2.5-4 CPU minutes (FRL's 40
fine-tuning epochs about as long), and AutoAttack adds about 3.5 CPU minutes per run:
roughly 2-2.5 hours with ``--jobs 2``, about half of that with ``--autoattack off``.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, REPO, load_average, machine_info, write_json  # noqa: E402

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_SEEDS",
    "CONFIGS",
    "Config",
    "Run",
    "milestones",
    "plan",
    "train_args",
    "is_trained",
    "is_evaluated",
    "run_all",
    "collect",
    "aggregate",
    "render_results",
    "plot_leaderboard",
    "main",
]

#: The digits' training defaults: 30 epochs (the lr divided by 10 at 50% and 75%); three seeds.
DEFAULT_EPOCHS = 30
DEFAULT_SEEDS = (0, 1, 2)
#: Attacks per ``--autoattack`` choice (``fairdefense evaluate --attacks``; clean is always measured).
ATTACK_SETS = {"standard": ("pgd20", "autoattack"), "off": ("pgd20",)}


@dataclass(frozen=True)
class Config:
    """One row of the suite.

    ``args`` are ``fairdefense train`` arguments; ``{begin}`` and ``{late}`` in them are
    replaced by the epochs (from 0) at which the lr is first and second divided by 10
    (FAAL's from-scratch schedule is tied to those). ``init_from`` names the baseline
    whose checkpoint (same seed) a fine-tuning row starts from; ``ft_epochs`` its epochs.
    """

    name: str
    args: tuple[str, ...]
    what: str
    init_from: str | None = None
    ft_epochs: int | None = None


_FAAL_SCRATCH = ("-o", "faal.begin={begin}", "-o", "faal.r=0.25", "-o", "faal.late_epoch={late}",
                 "-o", "faal.r_late=0.5", "--plugin", "ema", "-o", "ema.begin={begin}")

CONFIGS: tuple[Config, ...] = (
    Config("at", (), "PGD-AT (Madry et al.): `fairdefense train` with no options."),
    Config("trades", ("--objective", "trades"), "TRADES (Zhang et al.), beta 6."),
    Config("bat", ("--plugin", "bat"),
           "BAT (TRADES; early-stopped boundary iterates, one extra step, uniform-target KL, alpha 1): the code's "
           "defaults; attack step eps/4 (the paper's 2/255 at 8/255)."),
    Config("cfa-at", ("--plugin", "cfa", "--objective", "at", "-o", "cfa.ccr=false"),
           "CFA with PGD-AT: CCM + FAWA (CCR exists only for TRADES), the code's options (lambda1 0.5, "
           "calibration from epoch 10, decay 0.88, threshold 0.24); FAWA weights evaluated."),
    Config("cfa-trades", ("--plugin", "cfa"),
           "CFA with TRADES: CCM + CCR + FAWA, the code's options; FAWA weights evaluated."),
    Config("ema-at", ("--plugin", "ema"),
           "AT + EMA (CFA paper's baseline): decay 0.88 from the first epoch; averaged weights evaluated."),
    Config("faal-at", ("--plugin", "faal") + _FAAL_SCRATCH,
           "FAAL with PGD-AT from scratch, the paper's schedule scaled to the run: class weighting from the first "
           "lr decay with r 0.25, r 0.5 from the second, EMA (decay 0.88) from the first; EMA weights evaluated."),
    Config("faal-trades", ("--plugin", "faal", "--objective", "trades") + _FAAL_SCRATCH,
           "FAAL with TRADES from scratch, same schedule as faal-at."),
    Config("faal-awp", ("--plugin", "faal", "--plugin", "awp", "-o", "awp.begin={begin}") + _FAAL_SCRATCH,
           "FAAL-AWP (PGD-AT) from scratch: faal-at plus AWP (gamma 0.005, proxy lr 0.1, the FAAL code's) from the "
           "first lr decay. Not a paper setting (the paper fine-tunes FAAL-AWP: see faal-awp-ft)."),
    Config("wat", ("--plugin", "wat"), "WAT (TRADES, beta 6, Hedge eta 0.1, validation PGD-10) from scratch, as "
           "the code trains it."),
    Config("baseline-reweight", ("--plugin", "baseline-reweight"),
           "Baseline Reweight (FRL paper; PGD-AT, tau 0.07, alpha 0.05, validation PGD-20)."),
    Config("frl", ("--plugin", "frl", "--lr", "0.001", "--schedule", "constant"),
           "FRL (Reweight+Remargin, the code's options: tau 0.07, beta 1.5, validation PGD-20) fine-tuning the same "
           "seed's TRADES model for 40 epochs at constant lr 1e-3, the FRL recipe (the paper fine-tunes a "
           "pre-trained robust model for 40 epochs at lr 1e-3; the recipes in docs/recipes.md start from PGD-AT, "
           "the model of FRL's Table 2). FRL's validation split (10% of each class) was part of the baseline's "
           "training data, as the authors' split of CIFAR-10's training set was for their pre-trained model.",
           init_from="trades", ft_epochs=40),
    Config("faal-ft", ("--plugin", "faal", "--lr", "0.01"),
           "FAAL's paper setting: fine-tune the same seed's PGD-AT model for 2 epochs, lr 0.01 then 0.001, r 0.5.",
           init_from="at", ft_epochs=2),
    Config("faal-awp-ft", ("--plugin", "faal", "--plugin", "awp", "--lr", "0.01"),
           "FAAL-AWP as the paper fine-tunes it: faal-ft plus AWP (gamma 0.005, proxy lr 0.1).",
           init_from="at", ft_epochs=2),
)
_BY_NAME = {c.name: c for c in CONFIGS}


def milestones(epochs: int) -> tuple[int, int]:
    """The epochs (from 0) from which the default multistep schedule has divided the lr by 10
    once and twice (milestones at 50% and 75% of the epochs, as the trainer rounds them)."""
    first, second = (max(1, int(round(m * epochs))) for m in (0.5, 0.75))
    return first, second


def fine_tune_epochs(config: Config, epochs: int) -> int:
    """A fine-tuning row's epochs: its own count at the default ``--epochs``, shortened in
    proportion (rounded up) when ``--epochs`` is smaller, for smoke runs."""
    assert config.ft_epochs is not None
    return max(1, math.ceil(config.ft_epochs * min(1.0, epochs / DEFAULT_EPOCHS)))


@dataclass
class Run:
    """One configuration at one seed: its folder, commands and dependency."""

    config: Config
    seed: int
    epochs: int
    root: Path
    attacks: tuple[str, ...]
    needs: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.config.name}-s{self.seed}"

    @property
    def out(self) -> Path:
        return self.root / self.key


def _shown(path: Path) -> str:
    """A path as the commands show it: relative to the repository (where they run) if inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def train_args(run: Run) -> list[str]:
    """The ``fairdefense train`` arguments of ``run`` (without the program name)."""
    c = run.config
    begin, late = milestones(run.epochs)
    args = [a.format(begin=begin, late=late) for a in c.args]
    epochs = run.epochs if c.init_from is None else fine_tune_epochs(c, run.epochs)
    if c.init_from is not None:
        args += ["--init", _shown(run.root / f"{c.init_from}-s{run.seed}" / "last.pt")]
    return ["train", *args, "--epochs", str(epochs), "--seed", str(run.seed), "--out", _shown(run.out), "--no-progress"]


def evaluate_args(run: Run) -> list[str]:
    """The ``fairdefense evaluate`` arguments of ``run``."""
    return ["evaluate", _shown(run.out), "--attacks", ",".join(("clean",) + run.attacks), "--no-progress"]


def target_epochs(run: Run) -> int:
    return run.epochs if run.config.init_from is None else fine_tune_epochs(run.config, run.epochs)


def is_trained(run: Run) -> bool:
    """Whether ``metrics.jsonl`` holds the run's last epoch."""
    from fairdefense.reports import read_history

    history = read_history(run.out)
    return bool(history) and history[-1]["epoch"] >= target_epochs(run)


def is_evaluated(run: Run) -> bool:
    """Whether ``metrics.json`` scores the last epoch under every attack of the suite."""
    from fairdefense.reports import load_metrics

    path = run.out / "metrics.json"
    if not path.is_file():
        return False
    metrics = load_metrics(path)
    return metrics["evaluated"]["epoch"] == target_epochs(run) and set(run.attacks) <= set(metrics["attacks"])


def plan(names: Sequence[str], seeds: Sequence[int], epochs: int, root: Path, attacks: Sequence[str]) -> list[Run]:
    """The runs for ``names`` x ``seeds``, baselines that fine-tuning rows need added, those first."""
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise SystemExit(f"quality.py: unknown configuration(s) {unknown}; choose from {', '.join(_BY_NAME)}.")
    wanted = list(dict.fromkeys(names))
    for name in list(wanted):
        dep = _BY_NAME[name].init_from
        if dep and dep not in wanted:
            wanted.insert(0, dep)
    ordered = [c.name for c in CONFIGS if c.name in wanted]
    runs = []
    for seed in seeds:
        for name in ordered:
            c = _BY_NAME[name]
            needs = f"{c.init_from}-s{seed}" if c.init_from else None
            runs.append(Run(c, seed, epochs, root, tuple(attacks), needs=needs))
    # baselines that others fine-tune from go first, so that the fine-tuning rows can start early
    needed = {r.needs for r in runs if r.needs}
    return sorted(runs, key=lambda r: (r.key not in needed, runs.index(r)))


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "fairdefense.cli", *args]


def shell_line(args: Sequence[str]) -> str:
    """How a user types the command: ``fairdefense train ...``."""
    return " ".join(["fairdefense", *args])


def _execute(run: Run, env: dict[str, str], logs: Path) -> bool:
    """Train (or resume, or skip) and evaluate (or skip) one run; False on failure."""
    logs.mkdir(parents=True, exist_ok=True)
    steps = []
    if not is_trained(run):
        args = train_args(run)
        if (run.out / "last.pt").is_file() and (run.out / "metrics.jsonl").is_file():
            args = ["train", "--resume", _shown(run.out / "last.pt"), "--epochs", str(target_epochs(run)),
                    "--no-progress"]
        steps.append(("train", args))
    if not is_trained(run) or not is_evaluated(run):
        steps.append(("evaluate", evaluate_args(run)))
    for what, args in steps:
        start = time.perf_counter()
        with open(logs / f"{run.key}.{what}.log", "w") as log:
            done = subprocess.run(_command(args), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
        seconds = time.perf_counter() - start
        run.log.append(f"{what} {seconds:.0f} s (exit {done.returncode})")
        if done.returncode != 0:
            print(f"[quality] {run.key}: {what} failed (exit {done.returncode}); see {logs / f'{run.key}.{what}.log'}",
                  flush=True)
            return False
    print(f"[quality] {run.key}: " + (", ".join(run.log) if run.log else "already done"), flush=True)
    return True


def run_all(runs: Sequence[Run], jobs: int, logs: Path) -> dict[str, str]:
    """Run everything, ``jobs`` at a time, each fine-tuning run after its baseline.
    Returns ``{run key: reason}`` for the runs that failed or could not start."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(runs), {}
    done: set[str] = set()
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for run in list(pending):
                if len(running) >= jobs:
                    break
                if run.needs in failed:
                    pending.remove(run)
                    failed[run.key] = f"its baseline {run.needs} failed"
                elif run.needs is None or run.needs in done:
                    pending.remove(run)
                    print(f"[quality] start {run.key}", flush=True)
                    running[pool.submit(_execute, run, env, logs)] = run
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                if _ok(future):
                    done.add(run.key)
                else:
                    failed[run.key] = "see its log"
    return failed


def _ok(future: Future) -> bool:
    try:
        return bool(future.result())
    except Exception as exc:  # a crash inside the runner thread: report it, keep the others going
        print(f"[quality] runner error: {exc!r}", flush=True)
        return False


# --------------------------------------------------------------------- aggregation
def _values(metrics: dict[str, Any], attacks: Sequence[str]) -> dict[str, float]:
    out = {"clean_avg": metrics["clean"]["summary"]["acc"]["avg"],
           "clean_worst": metrics["clean"]["summary"]["acc"]["worst"]}
    for attack in attacks:
        if attack in metrics["attacks"]:
            s = metrics["attacks"][attack]["summary"]["robust_acc"]
            out[f"{attack}_avg"], out[f"{attack}_worst"] = s["avg"], s["worst"]
    return out


def collect(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Per-seed values of every evaluated run, grouped by configuration (in suite order)."""
    from fairdefense.reports import load_metrics, read_history

    grouped: dict[str, dict[str, Any]] = {}
    for run in runs:
        if not (is_trained(run) and is_evaluated(run)):
            continue
        metrics = load_metrics(run.out / "metrics.json")
        entry = grouped.setdefault(run.config.name, {"seeds": [], "per_seed": [], "train_minutes": []})
        entry["seeds"].append(run.seed)
        entry["per_seed"].append(_values(metrics, run.attacks))
        entry["train_minutes"].append(sum(e["time"] for e in read_history(run.out)) / 60)
    order = [c.name for c in CONFIGS]
    return {name: grouped[name] for name in order if name in grouped}


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; ``None`` for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(collected: dict[str, dict[str, Any]], headline: str) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every value; the headline robust accuracy's change vs ``at``
    (difference of the means) and whether it meets the target (worst class +10 points
    with at most 1 point of average lost)."""
    rows = {}
    for name, entry in collected.items():
        keys = entry["per_seed"][0].keys()
        stats = {k: _mean_std([v[k] for v in entry["per_seed"]]) for k in keys}
        rows[name] = {"n_seeds": len(entry["seeds"]), "seeds": entry["seeds"],
                      "mean": {k: m for k, (m, _) in stats.items()}, "std": {k: s for k, (_, s) in stats.items()},
                      "train_minutes": statistics.fmean(entry["train_minutes"])}
    base = rows.get("at")
    for name, row in rows.items():
        if base is None or f"{headline}_avg" not in row["mean"] or f"{headline}_avg" not in base["mean"]:
            row["vs_at"] = None
            continue
        d_avg = row["mean"][f"{headline}_avg"] - base["mean"][f"{headline}_avg"]
        d_worst = row["mean"][f"{headline}_worst"] - base["mean"][f"{headline}_worst"]
        row["vs_at"] = {"attack": headline, "avg": d_avg, "worst": d_worst,
                        "meets_target": name != "at" and d_worst >= 0.10 and d_avg >= -0.01}
    return rows


def _cell(row: dict[str, Any], key: str) -> str:
    m, s = row["mean"].get(key), row["std"].get(key)
    if m is None:
        return "n/a"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def plot_leaderboard(rows: dict[str, dict[str, Any]], headline: str, path: Path, title: str) -> Path:
    """Average (x) vs worst-class (y) robust accuracy, one point per configuration (mean over
    seeds), error bars one standard deviation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.add_subplot()
    for i, (name, row) in enumerate(rows.items()):
        x, y = row["mean"].get(f"{headline}_avg"), row["mean"].get(f"{headline}_worst")
        if x is None:
            continue
        xerr, yerr = row["std"].get(f"{headline}_avg"), row["std"].get(f"{headline}_worst")
        ax.errorbar([100 * x], [100 * y], xerr=None if xerr is None else [100 * xerr],
                    yerr=None if yerr is None else [100 * yerr], fmt="o", color=f"C{i % 10}", capsize=3, zorder=3)
        ax.annotate(name, (100 * x, 100 * y), textcoords="offset points", xytext=(6, 5), fontsize="small")
    ax.set_xlabel(f"average robust accuracy over classes (%, {headline})")
    ax.set_ylabel(f"worst-class robust accuracy (%, {headline})")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def render_results(rows: dict[str, dict[str, Any]], runs: Sequence[Run], info: dict[str, Any]) -> str:
    """``docs/results.md``: protocol, the table, the target, the scatter, the commands."""
    from fairdefense.reports.markdown import markdown_table

    headline, attacks = info["headline"], info["attacks"]
    full = info["full"]
    lines = ["# Results: robust fairness on the embedded digits", "",
             "Generated by `benchmarks/quality.py`; do not edit by hand (rerun it, or "
             "`python benchmarks/quality.py --aggregate-only` to rebuild this page from finished runs).", ""]
    if not full:
        lines += ["> **Not the full suite.** These figures come from a reduced run "
                  f"({info['scope']}); what it left out is not measured here. "
                  f"The full run: `{info['full_command']}`.", ""]
    lines += [
        "## Protocol", "",
        "- Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), the fixed stratified test split "
        "(359 images, 35-37 per class); the rest trains (a plugin that validates holds out 10% of each class).",
        "- Model and training: `fairdefense train` defaults on the digits: SmallCNN, SGD lr 0.1, momentum 0.9, "
        f"weight decay 5e-4, batch 32, {info['epochs']} epochs with the lr divided by 10 at 50% and 75%, L-inf "
        "eps 0.2 (pixel units in [0, 1]), PGD-10 with step eps/4 during training. Fine-tuning rows say what they "
        "change.",
        f"- Seeds: {', '.join(str(s) for s in info['seeds'])} (the seed sets the initial weights, the data order and "
        "the validation split; the test split is fixed). A fine-tuning row starts from the same seed's baseline.",
        "- Evaluation: `fairdefense evaluate RUN --attacks " + ",".join(("clean",) + tuple(attacks))
        + "` on the run's last checkpoint, with the weights a plugin supplies for evaluation (EMA, CFA's FAWA) "
        "where there are any. PGD-20: CE loss, step eps/4, uniform random start, evaluation seed 0."
        + (" AutoAttack: the standard version (APGD-CE, APGD-T and FAB-T with 9 target classes, Square with 5,000 "
           "queries; `fairdefense.autoattack`), seed 0." if "autoattack" in attacks
           else " AutoAttack was not run (`--autoattack off`)."),
        "- Per-class accuracy, summarised over classes: average (unweighted mean over the 10 classes) and worst "
        "class. Each cell: mean ± sample standard deviation (ddof 1) over seeds, in %.",
        f"- Target: raise worst-class robust accuracy ({headline}) by at least 10 points over PGD-AT while losing at "
        "most 1 point of average robust accuracy (differences of the means over seeds).",
        f"- Each run: one process, one CPU thread, {info['jobs']} at a time. Machine: {info['machine']['cpu']}, "
        f"{info['machine']['usable_cores']} cores, torch {info['machine']['torch']}; load average before/after: "
        + (f"{info['load_before']} / {info['load_after']}." if info["load_before"] is not None
           else "not recorded (page rebuilt with `--aggregate-only`)."),
        "",
        "## Results", "",
    ]
    header = ["configuration", "seeds", "clean avg", "clean worst", "PGD-20 avg", "PGD-20 worst"]
    if "autoattack" in attacks:
        header += ["AA avg", "AA worst"]
    header += [f"Δ avg vs AT ({headline})", f"Δ worst vs AT ({headline})", "target", "train min / run"]
    table = []
    for name, row in rows.items():
        cells = [f"`{name}`", row["n_seeds"], _cell(row, "clean_avg"), _cell(row, "clean_worst"),
                 _cell(row, "pgd20_avg"), _cell(row, "pgd20_worst")]
        if "autoattack" in attacks:
            cells += [_cell(row, "autoattack_avg"), _cell(row, "autoattack_worst")]
        vs = row["vs_at"]
        cells += ["-" if vs is None or name == "at" else f"{100 * vs['avg']:+.1f}",
                  "-" if vs is None or name == "at" else f"{100 * vs['worst']:+.1f}",
                  "-" if vs is None or name == "at" else ("**met**" if vs["meets_target"] else "not met"),
                  f"{row['train_minutes']:.1f}"]
        table.append(cells)
    lines.append(markdown_table(header, table) if table else "_No finished run yet._")
    meeting = [n for n, r in rows.items() if r["vs_at"] and r["vs_at"]["meets_target"]]
    lines += ["", "Meets the target: " + (", ".join(f"`{n}`" for n in meeting) if meeting else "none") + ".",
              "", f"![average vs worst-class robust accuracy]({info['figure']})", "",
              "## Configurations and commands", "",
              "Each row's runs, exactly as `quality.py` ran them (`fairdefense` is `python -m fairdefense.cli`; "
              "OMP_NUM_THREADS=1):", ""]
    by_config: dict[str, list[Run]] = {}
    for run in runs:
        by_config.setdefault(run.config.name, []).append(run)
    for c in CONFIGS:
        if c.name not in by_config:
            continue
        lines += [f"### `{c.name}`", "", c.what, "", "```"]
        for run in sorted(by_config[c.name], key=lambda r: r.seed):
            lines += [shell_line(train_args(run)), shell_line(evaluate_args(run))]
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------- driver
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of the from-scratch rows")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one CPU thread each)")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"configurations to run: {', '.join(_BY_NAME)}")
    p.add_argument("--autoattack", choices=sorted(ATTACK_SETS), default="standard",
                   help="also evaluate with AutoAttack (default; a few CPU minutes per run) or not")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "quality",
                   help="where the run folders go (default: runs/quality in the repository)")
    p.add_argument("--aggregate-only", action="store_true", help="train and evaluate nothing; rebuild the docs")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    p.add_argument("--md", type=Path, default=DOCS / "results.md")
    p.add_argument("--json", type=Path, default=DOCS / "results.json")
    p.add_argument("--figure", type=Path, default=DOCS / "leaderboard.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    attacks = ATTACK_SETS[args.autoattack]
    names = args.only or [c.name for c in CONFIGS]
    runs = plan(names, args.seeds, args.epochs, args.runs.resolve(), attacks)
    if args.dry_run:
        for run in runs:
            print(shell_line(train_args(run)) + "\n" + shell_line(evaluate_args(run)))
        return 0
    load_before = None if args.aggregate_only else load_average()
    failed: dict[str, str] = {}
    if not args.aggregate_only:
        failed = run_all(runs, args.jobs, args.runs / "logs")
    headline = "autoattack" if "autoattack" in attacks else "pgd20"
    collected = collect(runs)
    rows = aggregate(collected, headline)
    full = (args.epochs == DEFAULT_EPOCHS and sorted(args.seeds) == list(DEFAULT_SEEDS)
            and set(names) >= set(_BY_NAME) and args.autoattack == "standard" and not failed)
    scope = (f"{args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}, "
             f"configurations {' '.join(dict.fromkeys(r.config.name for r in runs))}, AutoAttack {args.autoattack}")
    title = f"Digits, {headline}: mean over seeds {', '.join(map(str, args.seeds))} (bars: 1 std)"
    info = {"headline": headline, "attacks": attacks, "epochs": args.epochs, "seeds": args.seeds, "jobs": args.jobs,
            "full": full, "scope": scope, "full_command": "python benchmarks/quality.py",
            "machine": machine_info("cpu"), "load_before": load_before,
            "load_after": None if args.aggregate_only else load_average(),
            "figure": os.path.relpath(args.figure, args.md.parent)}
    if rows:
        plot_leaderboard(rows, headline, args.figure, title + ("" if full else " - reduced run"))
    text = render_results(rows, runs, info)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text)
    write_json(args.json, {
        "settings": {k: v for k, v in info.items() if k != "figure"}, "failed": failed,
        "runs": {run.key: {"train": shell_line(train_args(run)), "evaluate": shell_line(evaluate_args(run)),
                           "folder": _shown(run.out)} for run in runs},
        "results": {name: {**row, "per_seed": collected[name]["per_seed"]} for name, row in rows.items()},
    })
    print(text)
    print(f"wrote {args.md}, {args.json}" + (f", {args.figure}" if rows else ""))
    if failed:
        print(f"[quality] failed: {failed}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
