"""Quality suite: every strategy against PGD-AT and TRADES on the embedded digits, k-fold x seeds.

    python benchmarks/quality.py --jobs 16                          # everything: 5 folds x seeds 0 1 2, 30 epochs
    python benchmarks/quality.py --epochs 2 --folds 2 --seeds 0 --only at bat   # a smoke run
    python benchmarks/quality.py --aggregate-only                   # rewrite the docs from finished runs

Protocol (``docs/results.md`` states it with the power analysis behind it): the 1,797
digits are split into ``--folds`` stratified folds (``fairdefense train --fold I/K``);
each configuration trains once per fold and seed on the other folds and is scored on
its own fold, so every image is scored once per configuration and seed. Each run goes
through the real command line, ``fairdefense train ... --fold I/K --out
runs/quality/<name>-f<I>-s<seed> --no-progress``, then ``fairdefense evaluate`` scores
the run's evaluation weights (EMA/FAWA averages where a plugin supplies them) under
PGD-20 and, on the first ``--autoattack-folds`` folds of every seed (or of the
``--autoattack-seeds``), AutoAttack.

Runs go ``--jobs`` at a time, each in its own process with one CPU thread. A run whose
``metrics.jsonl`` already holds its last epoch is not trained again, one with a
checkpoint but fewer epochs is resumed (``--resume``), and one with a matching
``metrics.json`` is not evaluated again: the suite can be stopped and restarted, or run
in parts (``--only``, ``--seeds``), on several machines (copy the run folders together;
each records the machine that trained it in ``machine.json``), and aggregated at the
end. Fine-tuning rows start from the same fold and seed's baseline checkpoint and wait
for it.

A configuration is one line in :data:`CONFIGS` (its ``fairdefense train`` arguments).

Results: per configuration, figures pooled over the folds (every image once) with mean
and standard deviation over seeds; the paired t-test against PGD-AT over the (fold,
seed) units on average and worst-class robust accuracy; AutoAttack on the first folds
and where it ranks rows differently from PGD-20. They go to ``docs/results.md``,
``docs/results.json`` and the scatter ``docs/leaderboard.png``.

Cost (measured): a 30-epoch run trains in 67-86 s on one core of a 2-core AMD EPYC (2
runs at a time) and in 120-160 s on one core of a 16-core Xeon (16 at a time); FRL's 40
fine-tuning epochs take about 1.3 times as long; AutoAttack on a 360-image fold adds
100-160 s. 20 rows x 5 folds x 3 seeds = 300 runs: about 7 core-hours (with AutoAttack
on fold 0 of every seed, 60 runs, 2.5 more), about 45 minutes with ``--jobs 16``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, REPO, load_average, machine_info, write_json  # noqa: E402

from fairdefense.reports.leaderboard import format_test  # noqa: E402
from fairdefense.stats import bootstrap_summaries, detectable_difference, paired_t_test  # noqa: E402

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_SEEDS",
    "DEFAULT_FOLDS",
    "DESIGN_SD",
    "CONFIGS",
    "Config",
    "Run",
    "milestones",
    "plan",
    "train_args",
    "training_args",
    "is_trained",
    "is_evaluated",
    "record_machine",
    "run_all",
    "collect",
    "machines",
    "aggregate",
    "power_table",
    "rank_agreement",
    "render_results",
    "plot_leaderboard",
    "main",
]

#: The digits' training defaults: 30 epochs (the lr divided by 10 at 50% and 75%).
DEFAULT_EPOCHS = 30
#: Seeds and folds from the power analysis (docs/results.md): 5 folds x 3 seeds = 15 paired units.
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_FOLDS = 5
#: Standard deviation (percentage points) of the per-unit difference to PGD-AT, measured on the
#: previous suite (14 rows x 3 seeds, PGD-20, one fixed 359-image test split, the size of one of 5
#: folds; commit 8f0b0be, RMS over the 13 rows): worst class 9.3, average 1.8.
DESIGN_SD = {"worst": 9.3, "avg": 1.8}
#: The significance level of the marks in docs/results.md.
ALPHA = 0.05


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
    Config("mart", ("--objective", "mart"),
           "MART (Wang et al., ICLR 2020), beta 6: boosted CE on the CE-PGD example (start x + 0.001 N(0, I)) + "
           "beta KL(f(x) || f(x')) (1 - f(x)_y), as yisenwang/MART's mart_loss."),
    Config("fat", ("--objective", "fat"),
           "FAT (Zhang et al., ICML 2020): PGD-AT on early-stopped PGD (tau 1, uniform start)."),
    Config("faal-mart", ("--plugin", "faal", "--objective", "mart") + _FAAL_SCRATCH,
           "FAAL with MART from scratch (the FAAL paper's FAAL-MART rows), same schedule as faal-at."),
    Config("fat-cfa", ("--plugin", "cfa", "--objective", "fat", "-o", "cfa.ccr=false"),
           "FAT + CFA (CCM + FAWA; the CFA paper's FAT+CFA rows), tau 1, the code's CFA options."),
    Config("dafa-trades", ("--plugin", "dafa", "--objective", "trades", "-o", "dafa.tau={warmup}"),
           "DAFA with TRADES (beta 6): uniform weights for the warm-up (the code warms up 70 epochs, 70% of its "
           "high-lr phase; here 70% of the epochs before the first lr decay: 10 of 30), then fixed class weights "
           "from the last warm-up epoch's training adversarial softmax (lam 1, the current code's formula) on the "
           "natural CE, the attack radius and the step."),
    Config("dafa-at", ("--plugin", "dafa", "--objective", "at", "-o", "dafa.tau={warmup}"),
           "DAFA with PGD-AT: as dafa-trades; W_y weights the adversarial CE and scales radius and step."),
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
    """One configuration at one fold and seed: its folder, commands and dependency."""

    config: Config
    fold: int
    folds: int
    seed: int
    epochs: int
    root: Path
    attacks: tuple[str, ...]
    needs: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return unit_key(self.config.name, self.fold, self.seed)

    @property
    def out(self) -> Path:
        return self.root / self.key


def unit_key(name: str, fold: int, seed: int) -> str:
    """The folder name of a configuration's run on one fold and seed."""
    return f"{name}-f{fold}-s{seed}"


def _shown(path: Path) -> str:
    """A path as the commands show it: relative to the repository (where they run) if inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def train_args(run: Run) -> list[str]:
    """The ``fairdefense train`` arguments of ``run`` (without the program name)."""
    c = run.config
    begin, late = milestones(run.epochs)
    warmup = max(1, round(0.7 * begin))  # DAFA's warm-up: 70% of the high-lr phase, as its code's 70 of 100
    args = [a.format(begin=begin, late=late, warmup=warmup) for a in c.args]
    epochs = run.epochs if c.init_from is None else fine_tune_epochs(c, run.epochs)
    if c.init_from is not None:
        args += ["--init", _shown(run.root / unit_key(c.init_from, run.fold, run.seed) / "last.pt")]
    return ["train", *args, "--fold", f"{run.fold}/{run.folds}", "--epochs", str(epochs), "--seed", str(run.seed),
            "--out", _shown(run.out), "--no-progress"]


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
    """Whether ``metrics.json`` scores the last epoch of the run's fold under every attack of the
    run, written by ``fairdefense evaluate`` (it records the scored samples' SHA-256; the
    trainer's own end-of-run evaluation does not)."""
    from fairdefense.reports import load_metrics

    path = run.out / "metrics.json"
    if not path.is_file():
        return False
    metrics = load_metrics(path)
    return (metrics["evaluated"]["epoch"] == target_epochs(run) and set(run.attacks) <= set(metrics["attacks"])
            and metrics["data"].get("fold") == f"{run.fold}/{run.folds}" and bool(metrics["data"].get("sha256")))


def plan(
    names: Sequence[str], seeds: Sequence[int], folds: int, epochs: int, root: Path, *, autoattack_folds: int = 1,
    autoattack_seeds: Sequence[int] | None = None,
) -> list[Run]:
    """The runs for ``names`` x folds x ``seeds``, baselines that fine-tuning rows need added and
    ordered first; PGD-20 everywhere, AutoAttack too on folds ``0 .. autoattack_folds - 1`` of
    the ``autoattack_seeds`` (default: every seed)."""
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise SystemExit(f"quality.py: unknown configuration(s) {unknown}; choose from {', '.join(_BY_NAME)}.")
    if folds < 2:
        raise SystemExit(f"quality.py: --folds must be >= 2, got {folds}.")
    wanted = list(dict.fromkeys(names))
    for name in list(wanted):
        dep = _BY_NAME[name].init_from
        if dep and dep not in wanted:
            wanted.insert(0, dep)
    ordered = [c.name for c in CONFIGS if c.name in wanted]
    runs = []
    for seed in seeds:
        for fold in range(folds):
            with_aa = fold < autoattack_folds and (autoattack_seeds is None or seed in autoattack_seeds)
            attacks = ("pgd20", "autoattack") if with_aa else ("pgd20",)
            for name in ordered:
                c = _BY_NAME[name]
                needs = unit_key(c.init_from, fold, seed) if c.init_from else None
                runs.append(Run(c, fold, folds, seed, epochs, root, attacks, needs=needs))
    # baselines that others fine-tune from go first, so that the fine-tuning rows can start early
    needed = {r.needs for r in runs if r.needs}
    return sorted(runs, key=lambda r: (r.key not in needed, runs.index(r)))


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "fairdefense.cli", *args]


def shell_line(args: Sequence[str]) -> str:
    """How a user types the command: ``fairdefense train ...``."""
    return " ".join(["fairdefense", *args])


def training_args(run: Run) -> list[str]:
    """How to bring an unfinished run to its last epoch: resume from its checkpoint (also one
    an interrupted first epoch left, without history), start afresh over a folder an
    interrupted start left without checkpoint (``--overwrite``), or start."""
    if (run.out / "last.pt").is_file():
        return ["train", "--resume", _shown(run.out / "last.pt"), "--epochs", str(target_epochs(run)), "--no-progress"]
    if run.out.is_dir() and any(run.out.iterdir()):
        return train_args(run) + ["--overwrite"]
    return train_args(run)


def _execute(run: Run, env: dict[str, str], logs: Path) -> bool:
    """Train (or resume, or skip) and evaluate (or skip) one run; False on failure."""
    logs.mkdir(parents=True, exist_ok=True)
    steps = []
    if not is_trained(run):
        steps.append(("train", training_args(run)))
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
        if what == "train":
            record_machine(run.out)
    print(f"[quality] {run.key}: " + (", ".join(run.log) if run.log else "already done"), flush=True)
    return True


def record_machine(folder: Path) -> None:
    """Append what this machine is (CPU, cores, torch, fairdefense) to ``folder/machine.json``:
    the suite may train its runs in parts on different machines, and the page says which."""
    path = folder / "machine.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    info = machine_info("cpu")
    history.append({k: info[k] for k in ("cpu", "usable_cores", "torch", "fairdefense")})
    write_json(path, history)


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
def _values(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's summaries (fractions) and per-class correct counts."""
    out: dict[str, Any] = {"clean_avg": metrics["clean"]["summary"]["acc"]["avg"],
                           "clean_worst": metrics["clean"]["summary"]["acc"]["worst"],
                           "counts": metrics["data"]["counts"], "correct": {"clean": metrics["clean"]["correct"]}}
    for attack, entry in metrics["attacks"].items():
        s = entry["summary"]["robust_acc"]
        out[f"{attack}_avg"], out[f"{attack}_worst"] = s["avg"], s["worst"]
        out["correct"][attack] = entry["correct"]
    return out


def collect(runs: Sequence[Run]) -> dict[str, dict[str, Any]]:
    """Every evaluated run's values by configuration (in suite order): ``units`` maps
    ``(fold, seed)`` to the run's values; ``folds`` is the fold count."""
    from fairdefense.reports import load_metrics, read_history

    grouped: dict[str, dict[str, Any]] = {}
    for run in runs:
        if not (is_trained(run) and is_evaluated(run)):
            continue
        entry = grouped.setdefault(run.config.name, {"units": {}, "folds": run.folds, "train_minutes": []})
        entry["units"][(run.fold, run.seed)] = _values(load_metrics(run.out / "metrics.json"))
        entry["train_minutes"].append(sum(e["time"] for e in read_history(run.out)) / 60)
    order = [c.name for c in CONFIGS]
    return {name: grouped[name] for name in order if name in grouped}


def machines(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The machines that trained ``runs`` (from each run's ``machine.json``, its last entry):
    CPU, usable cores, torch and fairdefense versions, with the seeds and the number of runs
    each trained, in order of first appearance; runs without a record are not counted."""
    found: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        path = run.out / "machine.json"
        if not path.is_file():
            continue
        last = json.loads(path.read_text())[-1]
        entry = found.setdefault(tuple(sorted(last.items())), {**last, "seeds": set(), "runs": 0})
        entry["seeds"].add(run.seed)
        entry["runs"] += 1
    return [{**e, "seeds": sorted(e["seeds"])} for e in found.values()]


def _pooled(units: dict[tuple[int, int], dict[str, Any]], seed: int, folds: int, attack: str) -> dict[str, Any]:
    """One seed's figures over all folds (every image once): summaries of the summed per-class
    counts, with bootstrap intervals; ``None`` values when a fold is missing."""
    parts = [units.get((f, seed)) for f in range(folds)]
    if any(p is None or attack not in p["correct"] for p in parts):
        return {"avg": None, "worst": None, "ci": None}
    counts = [sum(col) for col in zip(*(p["counts"] for p in parts))]
    correct = [sum(col) for col in zip(*(p["correct"][attack] for p in parts))]
    acc = [k / n for k, n in zip(correct, counts) if n]
    return {"avg": statistics.fmean(acc), "worst": min(acc), "ci": bootstrap_summaries(correct, counts)}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; ``None`` for a single value or none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _holm(pvalues: dict[str, float], alpha: float) -> set[str]:
    """The names whose p-value stays significant after Holm's step-down correction."""
    kept = set()
    for i, (name, p) in enumerate(sorted(pvalues.items(), key=lambda kv: kv[1])):
        if p >= alpha / (len(pvalues) - i):
            break
        kept.add(name)
    return kept


def aggregate(collected: dict[str, dict[str, Any]], alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Per configuration: figures pooled over folds per seed (mean and std over seeds, the
    bootstrap interval of each seed), AutoAttack and PGD-20 on the units AutoAttack ran, and
    against ``at`` the paired t-test over shared (fold, seed) units of average and worst-class
    PGD-20 robust accuracy (percentage points), ``significant`` at ``alpha`` and ``holm`` after
    Holm's correction over the rows; ``meets_target``: worst class +10 points with at most 1
    point of average lost (mean differences)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, entry in collected.items():
        units, folds = entry["units"], entry["folds"]
        seeds = sorted({s for _, s in units})
        row: dict[str, Any] = {"units": len(units), "seeds": seeds, "folds": folds,
                               "train_minutes": statistics.fmean(entry["train_minutes"]), "mean": {}, "std": {},
                               "pooled": {}}
        for attack in ("clean", "pgd20"):
            per_seed = {s: _pooled(units, s, folds, attack) for s in seeds}
            row["pooled"][attack] = {str(s): v for s, v in per_seed.items()}
            for stat in ("avg", "worst"):
                done = [v[stat] for v in per_seed.values() if v[stat] is not None]
                row["mean"][f"{attack}_{stat}"], row["std"][f"{attack}_{stat}"] = _mean_std(done)
        aa_units = [u for u, v in units.items() if "autoattack" in v["correct"]]
        row["aa_units"] = len(aa_units)
        for attack in ("autoattack", "pgd20"):
            for stat in ("avg", "worst"):
                row["mean"][f"aa_units_{attack}_{stat}"] = _mean_std([units[u][f"{attack}_{stat}"]
                                                                     for u in aa_units])[0]
        rows[name] = row
    base = collected.get("at")
    for name, row in rows.items():
        row["vs_at"] = {}
        if base is None or name == "at":
            continue
        shared = sorted(set(collected[name]["units"]) & set(base["units"]))
        for stat in ("avg", "worst"):
            a = [100 * base["units"][u][f"pgd20_{stat}"] for u in shared]
            b = [100 * collected[name]["units"][u][f"pgd20_{stat}"] for u in shared]
            if shared:
                test = paired_t_test(a, b)
                row["vs_at"][stat] = {**test.to_dict(), "significant": test.significant(alpha)}
        m, bm = row["mean"], rows["at"]["mean"]
        if m["pgd20_avg"] is not None and bm["pgd20_avg"] is not None:
            row["meets_target"] = m["pgd20_worst"] - bm["pgd20_worst"] >= 0.10 and m["pgd20_avg"] - bm["pgd20_avg"] >= -0.01
    for stat in ("avg", "worst"):
        pvalues = {n: r["vs_at"][stat]["p_value"] for n, r in rows.items()
                   if stat in r["vs_at"] and r["vs_at"][stat]["p_value"] is not None}
        held = _holm(pvalues, alpha)
        for n, r in rows.items():
            if stat in r["vs_at"]:
                r["vs_at"][stat]["holm"] = n in held
    return rows


def power_table(sd: dict[str, float], units: Sequence[int], alpha: float = ALPHA) -> list[list[str]]:
    """Rows ``[units, detectable worst, detectable avg]``: the smallest true difference (points)
    a paired t-test at ``alpha`` detects with 80% power over that many units."""
    return [[str(n), f"{detectable_difference(sd['worst'], n, alpha=alpha):.1f}",
             f"{detectable_difference(sd['avg'], n, alpha=alpha):.1f}"] for n in units]


def _realised_sd(rows: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """RMS over rows of the standard deviation of the per-unit differences to PGD-AT."""
    sds = {stat: [r["vs_at"][stat]["std_diff"] for r in rows.values()
                  if stat in r["vs_at"] and r["vs_at"][stat]["std_diff"] is not None] for stat in ("avg", "worst")}
    if not sds["worst"]:
        return None
    return {stat: math.sqrt(statistics.fmean(v * v for v in values)) for stat, values in sds.items()}


def _cell(row: dict[str, Any], key: str, attack: str | None = None) -> str:
    m, s = row["mean"].get(key), row["std"].get(key)
    if m is None:
        return "n/a"
    text = f"{100 * m:.1f}"
    if s is not None:
        return text + f" ± {100 * s:.1f}"
    if attack is not None and len(row["seeds"]) == 1:
        ci = row["pooled"][attack][str(row["seeds"][0])]["ci"]
        if ci:
            stat = key.rsplit("_", 1)[1]
            return text + f" [{100 * ci[stat][0]:.1f}, {100 * ci[stat][1]:.1f}]"
    return text


def _ranks(rows: dict[str, dict[str, Any]], attack: str) -> dict[str, int]:
    """Rank (1 = best) by worst-class robust accuracy on the AutoAttack units."""
    scored = [(n, r["mean"][f"aa_units_{attack}_worst"]) for n, r in rows.items()
              if r["mean"].get("aa_units_autoattack_worst") is not None]
    return {n: i for i, (n, _) in enumerate(sorted(scored, key=lambda t: -t[1]), 1)}


def rank_agreement(first: dict[str, int], second: dict[str, int], far: int = 3) -> str:
    """A sentence on how two rankings of the same rows (1 = best) agree: Spearman's rho
    (``1 - 6 sum d^2 / (n (n^2 - 1))``, ranks without ties), the rows that move ``far`` or
    more places, and how many move less."""
    if first == second:
        return "PGD-20 and AutoAttack rank every row the same."
    n = len(first)
    rho = 1 - 6 * sum((first[k] - second[k]) ** 2 for k in first) / (n * (n * n - 1))
    moved = sorted((k for k in first if abs(first[k] - second[k]) >= far), key=lambda k: -abs(first[k] - second[k]))
    near = sum(1 for k in first if 0 < abs(first[k] - second[k]) < far)
    text = f"PGD-20 and AutoAttack rank the rows' worst class with Spearman's rho = {rho:.2f}. "
    text += ("Rows that move " + str(far) + " or more places (PGD-20 -> AutoAttack): " + ", ".join(
        f"`{k}` ({first[k]} -> {second[k]})" for k in moved) + "." if moved else f"No row moves {far} or more places.")
    return text + (f" {near} more move 1-{far - 1} places (neighbours and ties)." if near else "")


def plot_leaderboard(rows: dict[str, dict[str, Any]], headline: str, path: Path, title: str) -> Path:
    """Average (x) vs worst-class (y) PGD-20 robust accuracy pooled over folds, one point per
    configuration (mean over seeds); error bars one standard deviation over seeds, or the
    95% bootstrap interval with a single seed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.add_subplot()
    for i, (name, row) in enumerate(rows.items()):
        x, y = row["mean"].get(f"{headline}_avg"), row["mean"].get(f"{headline}_worst")
        if x is None:
            continue
        err = {}
        for axis, stat, centre in (("xerr", "avg", x), ("yerr", "worst", y)):
            s = row["std"].get(f"{headline}_{stat}")
            ci = row["pooled"][headline][str(row["seeds"][0])]["ci"] if len(row["seeds"]) == 1 else None
            if s is not None:
                err[axis] = [100 * s]
            elif ci:
                err[axis] = [[100 * (centre - ci[stat][0])], [100 * (ci[stat][1] - centre)]]
        ax.errorbar([100 * x], [100 * y], fmt="o", color=f"C{i % 10}", capsize=3, zorder=3, **err)
        ax.annotate(name, (100 * x, 100 * y), textcoords="offset points", xytext=(6, 5), fontsize="small")
    ax.set_xlabel(f"average robust accuracy over classes (%, {headline})")
    ax.set_ylabel(f"worst-class robust accuracy (%, {headline})")
    ax.grid(alpha=0.3)
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def render_results(rows: dict[str, dict[str, Any]], runs: Sequence[Run], info: dict[str, Any]) -> str:
    """``docs/results.md``: protocol, power analysis, the table with significance marks,
    AutoAttack against PGD-20, the closing note and the commands."""
    from fairdefense.reports.markdown import markdown_table

    folds, seeds, alpha = info["folds"], info["seeds"], info["alpha"]
    n_units = folds * len(seeds)
    lines = ["# Results: robust fairness on the embedded digits", "",
             "Generated by `benchmarks/quality.py`; do not edit by hand (rerun it, or "
             "`python benchmarks/quality.py --aggregate-only` to rebuild this page from finished runs).", ""]
    if info["coverage"] == "part":
        lines += [f"> **Part of the full suite**: seed(s) {', '.join(map(str, seeds))} of the protocol's "
                  f"{', '.join(map(str, DEFAULT_SEEDS))}, every row and fold ({info['scope']}). The figures are "
                  f"real runs of the protocol, with the power of {n_units} units per row (see the power analysis). "
                  f"The rest: `{info['full_command']}` (it skips finished runs).", ""]
    elif info["coverage"] == "reduced":
        lines += ["> **Not the full suite.** These figures come from a reduced run "
                  f"({info['scope']}); they are not results. The full run: `{info['full_command']}`.", ""]
    lines += [
        "## Protocol", "",
        f"- Data: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, 174-183 per class) in {folds} "
        "stratified folds (`fairdefense train --fold I/K`, fold seed 0: every fold holds the floor or ceiling of a "
        f"fifth of each class). Each configuration trains once per fold and seed on the other {folds - 1} folds "
        "(a plugin that validates holds out 10% of each class of them) and is scored on its own fold, so every "
        "image is scored once per configuration and seed: about 180 test images per class instead of 36.",
        "- Model and training: `fairdefense train` defaults on the digits: SmallCNN, SGD lr 0.1, momentum 0.9, "
        f"weight decay 5e-4, batch 32, {info['epochs']} epochs with the lr divided by 10 at 50% and 75%, L-inf "
        "eps 0.2 (pixel units in [0, 1]), PGD-10 with step eps/4 during training. Fine-tuning rows start from the "
        "same fold and seed's baseline and say what they change.",
        f"- Seeds: {', '.join(str(s) for s in seeds)} (initial weights, data order, validation split).",
        "- Evaluation: `fairdefense evaluate RUN --attacks clean,pgd20[,autoattack]` on the run's last checkpoint, "
        "with the weights a plugin supplies for evaluation (EMA, CFA's FAWA) where there are any. PGD-20: CE loss, "
        "step eps/4, uniform random start, evaluation seed 0, every fold. AutoAttack (the standard version: "
        "APGD-CE, APGD-T and FAB-T with 9 target classes, Square with 5,000 queries) on the first "
        f"{info['autoattack_folds']} fold(s) of "
        + ("every seed." if info["autoattack_seeds"] is None
           else f"seed(s) {', '.join(map(str, info['autoattack_seeds']))}."),
        "- Figures: per class, then average over the 10 classes and worst class. *Pooled*: the per-class counts "
        "of the folds are summed (each image once) before taking average and worst, per seed; a cell is the mean "
        "± standard deviation (ddof 1) over seeds, or with one seed the value and its 95% stratified bootstrap "
        "interval over the images (2,000 resamples, seed 0), in %.",
        f"- Significance: Δ is the mean over the (fold, seed) units both rows ran of the per-unit difference to "
        "PGD-AT (`at`) of the fold's average or worst-class PGD-20 robust accuracy, with its 95% interval and the "
        f"two-sided paired t-test's p-value (n - 1 degrees of freedom). `*`: p < {alpha:g}; `*†`: still significant "
        "after Holm's correction over the rows. The folds' training sets overlap, so the units are not fully "
        "independent and the test is somewhat liberal (Dietterich 1998; Nadeau & Bengio 2003).",
        f"- Target: raise worst-class robust accuracy (PGD-20, pooled) by at least 10 points over PGD-AT while "
        "losing at most 1 point of average robust accuracy (differences of the means).",
        "- Each run: one process, one CPU thread, as many at a time as the machine has cores. Trained on: "
        + ("; ".join(f"{m['cpu']} ({m['usable_cores']} cores), torch {m['torch']}, fairdefense {m['fairdefense']}: "
                     f"{m['runs']} runs, seed(s) {', '.join(map(str, m['seeds']))}" for m in info["machines"])
           or "not recorded")
        + ". Load average of the machine that wrote this page, before/after: "
        + (f"{info['load_before']} / {info['load_after']}." if info["load_before"] is not None
           else "not recorded (page rebuilt with `--aggregate-only`)."),
        "",
        "## Power analysis: why 5 folds and 3 seeds", "",
        "The previous suite (14 rows x 3 seeds, one fixed 359-image test split, commit 8f0b0be; its page: "
        "`git show 8f0b0be:docs/results.md`) measured how much "
        "the per-seed difference to PGD-AT varies: standard deviation "
        f"{DESIGN_SD['worst']} points for worst-class and {DESIGN_SD['avg']} for average PGD-20 robust accuracy "
        "(RMS over its 13 rows). One fold of 5 has the size of that test split (359-360 images), so a (fold, seed) "
        "unit carries about that noise. The smallest true difference a paired t-test at 0.05 detects with 80% "
        "power (noncentral t, `fairdefense.stats.detectable_difference`):", "",
        markdown_table(["units (folds x seeds)", "worst class (points)", "average (points)"],
                       power_table(DESIGN_SD, (3, 5, 10, 15, 20, 30))), "",
        "Three seeds on the fixed split (n = 3) could detect only about 30 points of worst-class difference; 5 "
        "folds x 3 seeds (n = 15) detect about 7 points, below the 10-point target, at 15 runs per row (5 folds x 1 "
        "seed: about 16 points; 5 x 5: about 5.4 points for 25 runs). Worst-class comparisons need many more units "
        "than average ones because the minimum over 10 classes of ~36-image estimates is 5 times noisier than "
        "their mean.",
    ]
    realised = _realised_sd(rows)
    if realised is not None:
        lines += ["", f"Realised in this run: standard deviation of the per-unit differences to PGD-AT "
                      f"{realised['worst']:.1f} points (worst class) and {realised['avg']:.1f} (average); with "
                      f"{n_units} units the detectable differences are "
                      f"{detectable_difference(realised['worst'], max(2, n_units)):.1f} and "
                      f"{detectable_difference(realised['avg'], max(2, n_units)):.1f} points."]
    lines += ["", "## Results", ""]
    header = ["configuration", "units", "clean avg", "clean worst", "PGD-20 avg", "PGD-20 worst",
              "Δ avg vs AT", "Δ worst vs AT", "AA avg", "AA worst", "worst rank PGD-20 / AA", "target",
              "train min / run"]
    pgd_rank, aa_rank = _ranks(rows, "pgd20"), _ranks(rows, "autoattack")
    table = []
    for name, row in rows.items():
        aa_avg, aa_worst = row["mean"].get("aa_units_autoattack_avg"), row["mean"].get("aa_units_autoattack_worst")
        table.append([
            f"`{name}`", row["units"], _cell(row, "clean_avg", "clean"), _cell(row, "clean_worst", "clean"),
            _cell(row, "pgd20_avg", "pgd20"), _cell(row, "pgd20_worst", "pgd20"),
            format_test(row["vs_at"].get("avg")), format_test(row["vs_at"].get("worst")),
            "n/a" if aa_avg is None else f"{100 * aa_avg:.1f}", "n/a" if aa_worst is None else f"{100 * aa_worst:.1f}",
            f"{pgd_rank[name]} / {aa_rank[name]}" if name in aa_rank else "-",
            "-" if "meets_target" not in row else ("**met**" if row["meets_target"] else "not met"),
            f"{row['train_minutes']:.1f}",
        ])
    lines.append(markdown_table(header, table) if table else "_No finished run yet._")
    lines += ["", "AA: AutoAttack, mean over the units it ran (the first fold(s) of the seeds it ran on); the ranks "
                  "order the rows by worst-class accuracy on those same units under PGD-20 and under AutoAttack. "
                  "Train min / run: mean training time of the row's runs (`metrics.jsonl`), on the machines listed "
                  "under Protocol."]
    if aa_rank:
        lines += ["", rank_agreement(pgd_rank, aa_rank)]
    better = [n for n, r in rows.items() if r["vs_at"].get("worst", {}).get("significant")
              and r["vs_at"]["worst"]["mean_diff"] > 0]
    worse = [n for n, r in rows.items() if r["vs_at"].get("worst", {}).get("significant")
             and r["vs_at"]["worst"]["mean_diff"] < 0]
    unclear = [n for n, r in rows.items() if n != "at" and n not in better and n not in worse]
    held = lambda names: [n for n in names if rows[n]["vs_at"]["worst"].get("holm")]  # noqa: E731
    meeting = [n for n, r in rows.items() if r.get("meets_target")]
    fmt = lambda names: ", ".join(f"`{n}`" for n in names) if names else "none"  # noqa: E731
    lines += [
        "", "## Which strategies beat PGD-AT on the worst class", "",
        f"- Significantly higher worst-class PGD-20 robust accuracy than PGD-AT (p < {alpha:g}, paired t-test over "
        f"the units): {fmt(better)}; of these, still significant after Holm's correction over the rows: "
        f"{fmt(held(better))}.",
        f"- Significantly lower: {fmt(worse)}; after Holm's correction: {fmt(held(worse))}.",
        f"- No significant difference (or no test): {fmt(unclear)}.",
        f"- Meets the target (+10 worst, at most -1 average): {fmt(meeting)}.",
        "", f"![average vs worst-class robust accuracy]({info['figure']})", "",
        "## Configurations and commands", "",
        "Each row's command for fold 0 and seed 0, exactly as `quality.py` runs it (`fairdefense` is "
        "`python -m fairdefense.cli`; OMP_NUM_THREADS=1); the other units change `--fold I/K`, `--seed` and the "
        "folder (`<name>-f<I>-s<seed>`).", "",
    ]
    first: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.fold, r.seed)):
        first.setdefault(run.config.name, run)
    for c in CONFIGS:
        if c.name in first:
            run = first[c.name]
            lines += [f"### `{c.name}`", "", c.what, "", "```", shell_line(train_args(run)),
                      shell_line(evaluate_args(run)), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------- driver
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="k of the k-fold protocol (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of the from-scratch rows")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each one process with one CPU thread")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"configurations to run: {', '.join(_BY_NAME)}")
    p.add_argument("--autoattack-folds", type=int, default=1,
                   help="AutoAttack on folds 0 .. N-1 of every seed (default 1; 0: PGD-20 only)")
    p.add_argument("--autoattack-seeds", type=int, nargs="+", metavar="SEED",
                   help="AutoAttack only on these seeds' first folds (default: every seed)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="significance level of the marks (default 0.05)")
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
    names = args.only or [c.name for c in CONFIGS]
    runs = plan(names, args.seeds, args.folds, args.epochs, args.runs.resolve(), autoattack_folds=args.autoattack_folds,
                autoattack_seeds=args.autoattack_seeds)
    if args.dry_run:
        for run in runs:
            print(shell_line(train_args(run)) + "\n" + shell_line(evaluate_args(run)))
        return 0
    load_before = None if args.aggregate_only else load_average()
    failed: dict[str, str] = {}
    if not args.aggregate_only:
        failed = run_all(runs, args.jobs, args.runs / "logs")
    collected = collect(runs)
    rows = aggregate(collected, args.alpha)
    complete = sum(len(c["units"]) for c in collected.values()) == len(runs)
    protocol = (args.epochs == DEFAULT_EPOCHS and args.folds == DEFAULT_FOLDS and set(names) >= set(_BY_NAME)
                and args.autoattack_folds >= 1 and not failed and complete)
    full = protocol and set(args.seeds) >= set(DEFAULT_SEEDS)
    coverage = "full" if full else "part" if protocol else "reduced"
    scope = (f"{args.epochs} epochs, {args.folds} folds, seeds {' '.join(map(str, args.seeds))}, "
             f"configurations {' '.join(dict.fromkeys(r.config.name for r in runs))}, "
             f"AutoAttack on {args.autoattack_folds} fold(s)"
             + ("" if args.autoattack_seeds is None else f" of seed(s) {' '.join(map(str, args.autoattack_seeds))}"))
    title = (f"Digits, PGD-20 pooled over {args.folds} folds: mean over seeds {', '.join(map(str, args.seeds))} "
             "(bars: 1 std, or 95% bootstrap interval with one seed)")
    info = {"attacks": ("pgd20", "autoattack"), "epochs": args.epochs, "seeds": args.seeds, "folds": args.folds,
            "autoattack_folds": args.autoattack_folds, "autoattack_seeds": args.autoattack_seeds,
            "machines": machines(runs), "alpha": args.alpha, "jobs": args.jobs, "coverage": coverage,
            "scope": scope, "full_command": "python benchmarks/quality.py --jobs 16",
            "machine": machine_info("cpu"), "load_before": load_before,
            "load_after": None if args.aggregate_only else load_average(),
            "figure": os.path.relpath(args.figure, args.md.parent)}
    if rows:
        plot_leaderboard(rows, "pgd20", args.figure, title + (" - reduced run" if coverage == "reduced" else ""))
    text = render_results(rows, runs, info)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(text)
    write_json(args.json, {
        "settings": {k: v for k, v in info.items() if k != "figure"}, "failed": failed,
        "runs": {run.key: {"train": shell_line(train_args(run)), "evaluate": shell_line(evaluate_args(run)),
                           "folder": _shown(run.out)} for run in runs},
        "results": {name: {**row, "per_unit": {f"f{f}-s{s}": {k: v for k, v in vals.items() if k != "correct"}
                                               for (f, s), vals in collected[name]["units"].items()}}
                    for name, row in rows.items()},
    })
    print(text)
    print(f"wrote {args.md}, {args.json}" + (f", {args.figure}" if rows else ""))
    if failed:
        print(f"[quality] failed: {failed}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
