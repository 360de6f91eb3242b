"""Speed suite: fairdefense's trainer against ART's, each strategy's overhead, the
(K+1)-pass floor, FAAL's weight solver against cvxpy, and peak memory.

    python benchmarks/speed.py                       # CPU, embedded digits + SmallCNN (< 15 min, 2 cores)
    python benchmarks/speed.py --quick               # small sizes, prints only: checks that every part runs
    python benchmarks/speed.py --device cuda --workload synthetic32   # PreAct-ResNet-18 on random 32x32 images

Writes the ``speed`` section of ``docs/benchmarks.md`` and ``docs/benchmarks.json``
(``--md``/``--json`` elsewhere). Every comparison is measured side by side in one
run: the variants of a section take turns inside each repeat (the order rotated
each repeat, so slow drift of a shared machine hits all alike), and each figure is
the median over repeats of the ratio measured within a repeat. Sections:

1. ``art``: fairdefense's :class:`~fairdefense.Trainer` (no plugin) against ART
   1.20's ``AdversarialTrainerMadryPGD`` and ``AdversarialTrainerTRADESPyTorch``:
   same data, model and initial weights, optimizer, batch size, radius, step and
   number of attack steps; seconds per epoch (wall time of ``fit`` / epochs) and
   the final clean and PGD-20 accuracy (fairdefense's evaluator for both).
2. ``strategies``: each strategy's training time per epoch (``train_time`` of
   ``metrics.jsonl``: the batches only, validation excluded) over the bare trainer
   with the same objective, in the second epoch, when every per-batch hook is live.
3. ``floor``: seconds per PGD-AT batch over ``(K + 1)`` natural forward-backward
   training steps on the same batches.
4. ``faal``: FAAL's closed-form class-weight solve per batch against cvxpy
   rebuilding and solving the authors' problem each batch (C = 10).
5. ``memory``: peak memory of training and of evaluation as the number of samples
   grows, each measured in a fresh subprocess (CPU: peak RSS from ``getrusage``
   minus the RSS before the work; CUDA: ``torch.cuda.max_memory_allocated``).

Where a target is missed, the section is profiled with ``torch.profiler`` and the
operators that account for the difference are listed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fairdefense
from fairdefense.data import load_dataset
from fairdefense.reports.markdown import pct

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DOCS,
    interleaved,
    load_average,
    machine_info,
    median,
    paired_ratios,
    replace_section,
    sync,
    write_json,
)

__all__ = [
    "TARGETS",
    "STRATEGIES",
    "Workload",
    "Settings",
    "load_workload",
    "compare_with_art",
    "strategy_overhead",
    "floor_efficiency",
    "faal_solver",
    "memory_scaling",
    "memory_probe",
    "EpochProfiler",
    "profile_difference",
    "render_markdown",
    "run_suite",
    "main",
]

#: The targets each section is checked against.
TARGETS = {
    "art_speedup": 2.0,          # ART seconds per epoch / ours, at least
    "strategy_overhead": 1.03,   # strategy seconds per epoch / bare trainer, at most
    "floor_efficiency": 1.15,    # PGD-AT batch / ((K + 1) natural steps), at most
    "faal_speedup": 100.0,       # cvxpy seconds per solve / closed form, at least
}

#: Strategies timed against the bare trainer: (label, objective, plugins, plugin options).
#: CFA's calibration starts at epoch 0 so that it is live in the timed (second) epoch.
STRATEGIES: tuple[tuple[str, str, tuple[str, ...], dict[str, dict[str, Any]]], ...] = (
    ("PGD-AT", "at", (), {}),
    ("TRADES", "trades", (), {}),
    ("faal", "at", ("faal",), {}),
    ("faal (TRADES)", "trades", ("faal",), {}),
    ("awp", "at", ("awp",), {}),
    ("faal+awp", "at", ("faal", "awp"), {}),
    ("ema", "at", ("ema",), {}),
    ("cfa (AT: CCM, FAWA)", "at", ("cfa",), {"cfa": {"ccr": False, "begin": 0}}),
    ("cfa (TRADES: CCM, CCR, FAWA)", "trades", ("cfa",), {"cfa": {"begin": 0}}),
    ("bat", "trades", ("bat",), {}),
    ("wat", "trades", ("wat",), {}),
    ("frl (rwrm)", "trades", ("frl",), {}),
    ("baseline-reweight", "at", ("baseline-reweight",), {}),
)
_BASE = {"at": "PGD-AT", "trades": "TRADES"}


# --------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """Data and model of a benchmark: tensors in ``[0, 1]``, a registered model name."""

    name: str
    train: TensorDataset
    test: TensorDataset
    class_names: list[str]
    input_shape: tuple[int, ...]
    model: str
    eps: float
    eps_step: float

    def make_model(self, seed: int) -> nn.Module:
        """The model, initialised under ``seed`` (the same weights for every trainer)."""
        torch.manual_seed(seed)
        return fairdefense.create_model(self.model, len(self.class_names), self.input_shape)

    def arrays(self, split: str = "train") -> tuple[Any, Any]:
        """``(x, y)`` of a split as numpy arrays (float32, int64), as ART takes them."""
        x, y = (self.train if split == "train" else self.test).tensors
        return x.numpy().astype("float32"), y.numpy()


def load_workload(name: str, *, train_limit: int | None = None, test_limit: int | None = None) -> Workload:
    """``"digits"`` (the embedded default: 8x8 digits, SmallCNN, eps 0.2) or ``"synthetic32"``
    (random 32x32 RGB images with random labels, PreAct-ResNet-18, eps 8/255: a stand-in for
    CIFAR-10's cost, not its accuracy). Limits take the first N samples of a split."""
    if name == "digits":
        bundle = load_dataset("digits")
        train, test = bundle.train.tensors, bundle.test.tensors
        classes, shape, model, eps = bundle.class_names, bundle.input_shape, "small_cnn", 0.2
    elif name == "synthetic32":
        g = torch.Generator().manual_seed(0)
        n_train, n_test = train_limit or 2560, test_limit or 512
        train = (torch.rand(n_train, 3, 32, 32, generator=g), torch.randint(0, 10, (n_train,), generator=g))
        test = (torch.rand(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g))
        classes, shape, model, eps = [str(k) for k in range(10)], (3, 32, 32), "preact_resnet18", 8 / 255
    else:
        raise fairdefense.ConfigError(f"unknown workload {name!r}; use 'digits' or 'synthetic32'.")
    train = tuple(t[:train_limit] for t in train) if train_limit else train
    test = tuple(t[:test_limit] for t in test) if test_limit else test
    return Workload(name, TensorDataset(*train), TensorDataset(*test), list(classes), tuple(shape), model, eps, eps / 4)


@dataclass
class Settings:
    """Shared settings: device, optimizer, batch, attack, repeats and epochs per section."""

    device: str = "cpu"
    batch_size: int = 32
    lr: float = 0.1
    attack_steps: int = 10
    repeats: int = 3
    art_epochs: int = 2
    art_accuracy_epochs: int = 12
    natural_passes: int = 3
    faal_calls: int = 300
    cvxpy_calls: int = 30
    memory_steps: int = 2
    memory_multiples: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"eval": (1, 4, 16), "train": (1, 2, 4)}
    )
    profile: bool = True

    def config(self, w: Workload, *, objective: str, epochs: int, seed: int, plugins: Sequence[str] = (),
               options: dict[str, dict[str, Any]] | None = None, **extra: Any) -> fairdefense.TrainConfig:
        """A training config with this benchmark's settings (constant lr, no test evaluation)."""
        return fairdefense.TrainConfig(
            dataset=w.name, model=w.model, objective=objective, epochs=epochs, batch_size=self.batch_size,
            lr=self.lr, momentum=0.9, weight_decay=5e-4, schedule="constant", eps=w.eps, eps_step=w.eps_step,
            attack_steps=self.attack_steps, seed=seed, device=self.device, plugins=tuple(plugins),
            plugin_options=dict(options or {}), **extra,
        )


def _trainer(w: Workload, config: fairdefense.TrainConfig, data: TensorDataset | None = None,
             extra_plugins: Sequence[Any] = ()) -> fairdefense.Trainer:
    return fairdefense.Trainer(w.make_model(config.seed), w.train if data is None else data, w.class_names, config,
                               extra_plugins, progress=False)


def _accuracy(model: nn.Module, w: Workload, device: str) -> dict[str, float]:
    report = fairdefense.evaluate(model, DataLoader(w.test, batch_size=256), w.class_names, ["pgd20"],
                                  eps=w.eps, device=device)
    s = report.summary()
    return {"clean_avg": s["clean_acc"]["avg"], "clean_worst": s["clean_acc"]["worst"],
            "pgd20_avg": s["pgd20/robust_acc"]["avg"], "pgd20_worst": s["pgd20/robust_acc"]["worst"]}


# --------------------------------------------------------------------- profiling
class EpochProfiler(fairdefense.FairnessPlugin):
    """Records ``torch.profiler`` events during the batches of one epoch (``on_epoch_start``
    to ``on_epoch_end``: validation and test evaluation are left out)."""

    name = "benchmark-epoch-profiler"

    def __init__(self, epoch: int, device: str) -> None:
        super().__init__()
        self.epoch, self.device = epoch, device
        self.profiler: torch.profiler.profile | None = None
        self.wall = 0.0

    def on_epoch_start(self, epoch: fairdefense.EpochInfo) -> None:
        if epoch.epoch == self.epoch:
            self.profiler = torch.profiler.profile(activities=_activities(self.device))
            self.profiler.start()
            self.wall = time.perf_counter()

    def on_epoch_end(self, epoch: fairdefense.EpochInfo, train_stats: fairdefense.ClassStats) -> None:
        if epoch.epoch == self.epoch and self.profiler is not None:
            sync(self.device)
            self.wall = time.perf_counter() - self.wall
            self.profiler.stop()


def _activities(device: str) -> list:
    acts = [torch.profiler.ProfilerActivity.CPU]
    return acts + [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else acts


def _op_times(prof: torch.profiler.profile) -> dict[str, tuple[int, float, float]]:
    """Operator -> (calls, self CPU ms, self device ms)."""
    return {e.key: (e.count, e.self_cpu_time_total / 1e3, getattr(e, "self_device_time_total", 0.0) / 1e3)
            for e in prof.key_averages()}


def _profiled(run: Callable[[], None], device: str) -> tuple[dict[str, tuple[int, float, float]], float]:
    with torch.profiler.profile(activities=_activities(device)) as prof:
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        wall = time.perf_counter() - start
    return _op_times(prof), wall


def profile_difference(variant: tuple[dict, float], base: tuple[dict, float] | None, top: int = 8) -> dict[str, Any]:
    """Summarise two profiles ``(operator times, wall seconds)``: the operators whose self
    time grew most from ``base`` to ``variant`` (or the costliest, without a base), and
    the wall time not spent inside any operator (Python, the data loader, hook logic)."""
    ops_v, wall_v = variant
    ops_b, wall_b = base if base is not None else ({}, 0.0)

    def total(ops: dict) -> float:
        return sum(c + d for _, c, d in ops.values())

    rows = []
    for name in set(ops_v) | set(ops_b):
        cv, tv, dv = ops_v.get(name, (0, 0.0, 0.0))
        cb, tb, db = ops_b.get(name, (0, 0.0, 0.0))
        rows.append({"op": name, "calls": cv, "base_calls": cb, "ms": tv + dv, "base_ms": tb + db,
                     "extra_ms": tv + dv - tb - db})
    rows.sort(key=lambda r: r["extra_ms"], reverse=True)
    return {
        "wall_ms": 1e3 * wall_v, "base_wall_ms": 1e3 * wall_b,
        "op_ms": total(ops_v), "base_op_ms": total(ops_b),
        "outside_ops_ms": 1e3 * wall_v - total(ops_v), "base_outside_ops_ms": 1e3 * wall_b - total(ops_b),
        "top_ops": rows[:top],
    }


# --------------------------------------------------------------------- 1. ART
ART_VARIANTS = ("fairdefense PGD-AT", "ART MadryPGD", "fairdefense TRADES", "ART TRADES")


def _fit_ours(w: Workload, s: Settings, objective: str, seed: int, epochs: int) -> tuple[nn.Module, float]:
    trainer = _trainer(w, s.config(w, objective=objective, epochs=epochs, seed=seed))
    sync(s.device)
    start = time.perf_counter()
    trainer.fit()
    sync(s.device)
    return trainer.model, time.perf_counter() - start


def _art_classifier(w: Workload, s: Settings, seed: int):
    from art.estimators.classification import PyTorchClassifier

    model = w.make_model(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9, weight_decay=5e-4)
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), w.input_shape, len(w.class_names), optimizer=optimizer,
                             clip_values=(0.0, 1.0), device_type="gpu" if s.device == "cuda" else "cpu")


def _fit_art(w: Workload, s: Settings, kind: str, seed: int, epochs: int) -> tuple[nn.Module, float]:
    """ART's trainer; its PGD attacks whole training batches (ART's attack default is 32 samples
    per call, which would split a larger batch) from one uniform random start."""
    import numpy as np
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainerMadryPGD, AdversarialTrainerTRADESPyTorch

    x, y = w.arrays()
    clf = _art_classifier(w, s, seed)
    np.random.seed(seed)
    if kind == "madry":
        trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=epochs, batch_size=s.batch_size, eps=w.eps,
                                             eps_step=w.eps_step, max_iter=s.attack_steps, num_random_init=1)
        trainer.attack.set_params(batch_size=s.batch_size, verbose=False)
        fit = lambda: trainer.fit(x, y)  # noqa: E731
    else:
        attack = ProjectedGradientDescent(clf, eps=w.eps, eps_step=w.eps_step, max_iter=s.attack_steps,
                                          num_random_init=1, batch_size=s.batch_size, verbose=False)
        trainer = AdversarialTrainerTRADESPyTorch(clf, attack, beta=6.0)
        fit = lambda: trainer.fit(x, y, batch_size=s.batch_size, nb_epochs=epochs)  # noqa: E731
    sync(s.device)
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # ART's trainers draw progress bars
        fit()
    sync(s.device)
    return clf.model, time.perf_counter() - start


_ART_FITS: dict[str, Callable[..., tuple[nn.Module, float]]] = {
    "fairdefense PGD-AT": lambda w, s, seed, e: _fit_ours(w, s, "at", seed, e),
    "ART MadryPGD": lambda w, s, seed, e: _fit_art(w, s, "madry", seed, e),
    "fairdefense TRADES": lambda w, s, seed, e: _fit_ours(w, s, "trades", seed, e),
    "ART TRADES": lambda w, s, seed, e: _fit_art(w, s, "trades", seed, e),
}


def compare_with_art(w: Workload, s: Settings) -> dict[str, Any]:
    """Seconds per epoch (``repeats`` interleaved runs of ``art_epochs`` epochs) and final
    accuracy (one run of ``art_accuracy_epochs`` epochs, seed 0) of ours vs ART's trainers."""
    times: dict[str, list[float]] = {name: [] for name in ART_VARIANTS}
    for r, name in interleaved(ART_VARIANTS, s.repeats):
        _, seconds = _ART_FITS[name](w, s, r, s.art_epochs)
        times[name].append(seconds / s.art_epochs)
    n_batches = -(-len(w.train) // s.batch_size)
    variants = {}
    for name in ART_VARIANTS:
        model, seconds = _ART_FITS[name](w, s, 0, s.art_accuracy_epochs)
        variants[name] = {
            "seconds_per_epoch": times[name], "median_seconds_per_epoch": median(times[name]),
            "median_seconds_per_batch": median(times[name]) / n_batches,
            "accuracy_run_seconds_per_epoch": seconds / s.art_accuracy_epochs, **_accuracy(model, w, s.device),
        }
    pairs = {}
    for ours, art in (("fairdefense PGD-AT", "ART MadryPGD"), ("fairdefense TRADES", "ART TRADES")):
        ratios = paired_ratios(times[art], times[ours])
        speedup = median(ratios)
        pairs[art] = {
            "ours": ours, "speedups": ratios, "speedup": speedup,
            "accuracy_run_speedup": variants[art]["accuracy_run_seconds_per_epoch"]
            / variants[ours]["accuracy_run_seconds_per_epoch"],
            "target": TARGETS["art_speedup"], "met": speedup >= TARGETS["art_speedup"],
        }
    result = {"epochs_per_run": s.art_epochs, "accuracy_epochs": s.art_accuracy_epochs,
              "batches_per_epoch": n_batches, "variants": variants, "pairs": pairs}
    if s.profile and not all(p["met"] for p in pairs.values()):
        result["profile"] = {
            "ART MadryPGD vs fairdefense PGD-AT (one epoch)": profile_difference(
                _profiled(lambda: _fit_art(w, s, "madry", 0, 1), s.device),
                _profiled(lambda: _fit_ours(w, s, "at", 0, 1), s.device)),
        }
    return result


# --------------------------------------------------------------------- 2. strategies
def _strategy_epoch(w: Workload, s: Settings, label: str, seed: int) -> dict[str, float]:
    _, objective, plugins, options = next(v for v in STRATEGIES if v[0] == label)
    # select_best holds out the same per-class validation split for every variant, so all train on the same batches
    config = s.config(w, objective=objective, epochs=2, seed=seed, plugins=plugins, options=options, select_best=True)
    second = _trainer(w, config).fit().history[1]
    return {"train_time": second["train_time"], "epoch_time": second["time"], "attack_steps": second["attack_steps"]}


def strategy_overhead(w: Workload, s: Settings, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Second-epoch training time of each strategy over the bare trainer with its objective."""
    labels = list(labels or [v[0] for v in STRATEGIES])
    objective = {v[0]: v[1] for v in STRATEGIES}
    needed = list(dict.fromkeys([_BASE[objective[label]] for label in labels] + labels))
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in needed}
    for r, label in interleaved(needed, s.repeats):
        runs[label].append(_strategy_epoch(w, s, label, seed=r))
    rows = {}
    for label in needed:
        base = _BASE[objective[label]]
        times = [x["train_time"] for x in runs[label]]
        ratios = paired_ratios(times, [x["train_time"] for x in runs[base]])
        ratio = median(ratios)
        rows[label] = {
            "objective": objective[label], "base": base, "train_time": times, "median_train_time": median(times),
            "median_validation_and_eval_time": median([x["epoch_time"] - x["train_time"] for x in runs[label]]),
            "attack_steps": median([x["attack_steps"] for x in runs[label]]), "ratios": ratios, "ratio": ratio,
            "target": TARGETS["strategy_overhead"],
            "met": None if label == base else ratio <= TARGETS["strategy_overhead"],
        }
    result: dict[str, Any] = {"timed_epoch": 2, "rows": rows}
    missed = [label for label, row in rows.items() if row["met"] is False]
    if s.profile and missed:
        result["profile"] = {label: _profile_strategy(w, s, label) for label in missed}
    return result


def _profile_strategy(w: Workload, s: Settings, label: str) -> dict[str, Any]:
    def epoch(which: str) -> tuple[dict, float]:
        _, objective, plugins, options = next(v for v in STRATEGIES if v[0] == which)
        profiler = EpochProfiler(epoch=1, device=s.device)
        config = s.config(w, objective=objective, epochs=2, seed=0, plugins=plugins, options=options, select_best=True)
        _trainer(w, config, extra_plugins=[profiler]).fit()
        return _op_times(profiler.profiler), profiler.wall

    base = _BASE[next(v[1] for v in STRATEGIES if v[0] == label)]
    return profile_difference(epoch(label), epoch(base))


# --------------------------------------------------------------------- 3. floor
def _natural_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: str) -> None:
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()


def floor_efficiency(w: Workload, s: Settings) -> dict[str, Any]:
    """Seconds per PGD-AT batch of the trainer over ``(K + 1)`` natural training steps.

    Both run over the same full batches (the training set cut to a multiple of the
    batch size). The natural step is what a plain training loop does per batch:
    forward, mean cross-entropy, backward, SGD step, read the loss.
    """
    n_batches = len(w.train) // s.batch_size
    if n_batches < 1:
        raise fairdefense.ConfigError(f"the floor needs at least one full batch of {s.batch_size} samples.")
    x, y = w.train.tensors
    data = TensorDataset(x[: n_batches * s.batch_size], y[: n_batches * s.batch_size])
    k = s.attack_steps
    at_batch, nat_batch = [], []

    def natural(seed: int) -> float:
        model = w.make_model(seed).to(s.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(data, batch_size=s.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
        _natural_epoch(model, loader, optimizer, s.device)  # warm-up
        sync(s.device)
        start = time.perf_counter()
        for _ in range(s.natural_passes):
            _natural_epoch(model, loader, optimizer, s.device)
        sync(s.device)
        return (time.perf_counter() - start) / (s.natural_passes * n_batches)

    for r, name in interleaved(("PGD-AT", "natural"), s.repeats):
        if name == "PGD-AT":
            history = _trainer(w, s.config(w, objective="at", epochs=1, seed=r), data).fit().history
            at_batch.append(history[0]["train_time"] / n_batches)
        else:
            nat_batch.append(natural(r))
    ratios = [a / ((k + 1) * n) for a, n in zip(at_batch, nat_batch)]
    efficiency = median(ratios)
    result: dict[str, Any] = {
        "attack_steps": k, "batches": n_batches, "at_seconds_per_batch": median(at_batch),
        "natural_seconds_per_batch": median(nat_batch), "ratios": ratios, "efficiency": efficiency,
        "target": TARGETS["floor_efficiency"], "met": efficiency <= TARGETS["floor_efficiency"],
    }
    if s.profile and not result["met"]:
        def one_at_epoch() -> None:
            _trainer(w, s.config(w, objective="at", epochs=1, seed=0), data).fit()

        def k1_natural_epochs() -> None:
            model = w.make_model(0).to(s.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=0.9)
            loader = DataLoader(data, batch_size=s.batch_size, shuffle=True)
            for _ in range(k + 1):
                _natural_epoch(model, loader, optimizer, s.device)

        result["profile"] = {f"one PGD-AT epoch vs {k + 1} natural epochs": profile_difference(
            _profiled(one_at_epoch, s.device), _profiled(k1_natural_epochs, s.device))}
    return result


# --------------------------------------------------------------------- 4. FAAL solver
def _cvxpy_weights(a, r: float):
    """The authors' per-batch problem, rebuilt and solved: max a.p s.t. p in the simplex, KL(U || p) <= r."""
    import cvxpy as cp
    import numpy as np

    c = len(a)
    p = cp.Variable(c, nonneg=True)
    problem = cp.Problem(cp.Maximize(a @ p), [cp.sum(p) == 1, cp.sum(cp.kl_div(np.full(c, 1.0 / c), p)) <= r])
    problem.solve()
    return p.value, problem.solver_stats.solver_name


def faal_solver(s: Settings, *, num_classes: int = 10, batch: int = 128, r: float = 0.5) -> dict[str, Any]:
    """Median seconds per batch of FAAL's closed-form solve vs cvxpy (the authors' way), interleaved."""
    from fairdefense_plugins.faal import class_margin_sums, solve_dro_weights

    g = torch.Generator().manual_seed(0)
    instances = []
    for _ in range(s.cvxpy_calls):
        logits = torch.randn(batch, num_classes, generator=g) * 3
        y = torch.randint(0, num_classes, (batch,), generator=g)
        instances.append(class_margin_sums(logits, y, num_classes).to(s.device))
    per_round = max(1, s.faal_calls // s.cvxpy_calls)
    ours, theirs, gaps, solver = [], [], [], ""
    solve_dro_weights(instances[0], r)  # warm-up
    for a in instances:
        sync(s.device)
        for _ in range(per_round):
            start = time.perf_counter()
            p = solve_dro_weights(a, r)
            sync(s.device)
            ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        p_ref, solver = _cvxpy_weights(a.cpu().double().numpy(), r)  # the authors' code copies to the host
        theirs.append(time.perf_counter() - start)
        gaps.append(float((a.double().cpu() @ torch.as_tensor(p_ref)) - (a.double() @ p.double()).cpu()))
    speedup = median(theirs) / median(ours)
    result: dict[str, Any] = {
        "num_classes": num_classes, "batch": batch, "r": r, "calls": len(ours), "cvxpy_calls": len(theirs),
        "cvxpy_solver": solver, "ours_seconds": median(ours), "cvxpy_seconds": median(theirs),
        "speedup": speedup, "max_objective_gap_cvxpy_minus_ours": max(gaps),
        "target": TARGETS["faal_speedup"], "met": speedup >= TARGETS["faal_speedup"],
    }
    if s.profile and not result["met"]:
        def solves() -> None:
            for a in instances:
                solve_dro_weights(a, r)

        ops, wall = _profiled(solves, s.device)
        prof = profile_difference((ops, wall), None)
        prof["operator_calls_per_solve"] = sum(calls for calls, _, _ in ops.values()) / len(instances)
        result["profile"] = {f"{len(instances)} closed-form solves": prof}
    return result


# --------------------------------------------------------------------- 5. memory
def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_probe(mode: str, samples: int, workload: str, s: Settings) -> dict[str, Any]:
    """In this process: evaluate (``mode="eval"``, PGD-``memory_steps`` on the test split) or
    train one epoch (``"train"``) on ``samples`` samples (the split repeated), and return
    the peak memory above what the process held before (data and model already loaded).

    On CPU the kernel's peak-RSS mark is reset just before the work (``/proc/self/clear_refs``)
    and read after it (``VmHWM``); where the reset is not allowed, the lifetime peak
    (``getrusage``) is used and the row says so.
    """
    w = load_workload(workload)
    x, y = (w.test if mode == "eval" else w.train).tensors
    idx = torch.arange(samples) % len(x)
    data = TensorDataset(x[idx], y[idx])
    model = w.make_model(0).to(s.device)
    before = _status_mib("VmRSS")
    reset = _reset_peak_rss()
    if s.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if s.device == "cuda" else 0
    if mode == "eval":
        fairdefense.evaluate(model, DataLoader(data, batch_size=s.batch_size), w.class_names,
                             [f"pgd{s.memory_steps}"], eps=w.eps, device=s.device)
    else:
        config = replace(s, attack_steps=s.memory_steps).config(w, objective="at", epochs=1, seed=0)
        fairdefense.Trainer(model, data, w.class_names, config, progress=False).fit()
    peak = _status_mib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"mode": mode, "samples": samples, "data_mib": (x[:1].numel() * 4 + 8) * samples / 2**20,
           "rss_before_mib": before, "peak_rss_mib": peak, "peak_above_before_mib": peak - before,
           "peak_since": "reset before the work" if reset else "process start"}
    if s.device == "cuda":
        out["gpu_peak_above_before_mib"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
    return out


def memory_scaling(w: Workload, s: Settings) -> dict[str, Any]:
    """Peak memory of evaluation (test split) and training (training split) on 1x, 2x, ... the
    split (``memory_multiples``, the samples repeated), one fresh subprocess each."""
    rows = []
    for mode, multiples in s.memory_multiples.items():
        for k in multiples:
            n = k * len(w.test if mode == "eval" else w.train)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", mode, "--samples", str(n),
                   "--workload", w.name, "--device", s.device, "--batch-size", str(s.batch_size),
                   "--memory-steps", str(s.memory_steps)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory probe {mode} n={n} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    key = "gpu_peak_above_before_mib" if s.device == "cuda" else "peak_above_before_mib"
    growth = {}
    for mode in s.memory_multiples:
        own = [row for row in rows if row["mode"] == mode]
        growth[mode] = own[-1][key] - own[0][key]
    return {"measure": key, "attack_steps": s.memory_steps, "rows": rows, "growth_mib": growth}


# --------------------------------------------------------------------- report
def _f(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _met(flag: bool | None) -> str:
    return "-" if flag is None else ("met" if flag else "**missed**")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from fairdefense.reports.markdown import markdown_table

    return markdown_table(header, rows)


def _profile_md(title: str, p: dict[str, Any]) -> str:
    base = p["base_wall_ms"] > 0
    lines = [f"Profile, {title}: wall {p['wall_ms']:.0f} ms"
             + (f" vs {p['base_wall_ms']:.0f} ms" if base else "")
             + f"; inside operators {p['op_ms']:.0f} ms" + (f" vs {p['base_op_ms']:.0f} ms" if base else "")
             + f"; outside operators (Python, data loading, hook logic) {p['outside_ops_ms']:.0f} ms"
             + (f" vs {p['base_outside_ops_ms']:.0f} ms" if base else "") + ".", ""]
    if "operator_calls_per_solve" in p:
        lines[2:2] = [f"{p['operator_calls_per_solve']:.0f} operator calls per solve (nested calls included); the "
                      "profiler itself slows every call, so compare the unprofiled time above with this count.", ""]
    if base:
        rows = [[f"`{r['op']}`", r["calls"], r["base_calls"], _f(r["ms"], 1), _f(r["base_ms"], 1), _f(r["extra_ms"], 1)]
                for r in p["top_ops"]]
        lines.append(_table(["operator", "calls", "base calls", "self ms", "base self ms", "extra ms"], rows))
    else:
        rows = [[f"`{r['op']}`", r["calls"], _f(r["ms"], 2)] for r in p["top_ops"]]
        lines.append(_table(["operator", "calls", "self ms"], rows))
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    """The generated part of ``docs/benchmarks.md`` from :func:`run_suite`'s results."""
    m, s = results["machine"], results["settings"]
    out = [
        f"Measured {results['finished']} with `{results['command']}` ({results['minutes']:.1f} min).",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['torch_threads']} torch thread(s), "
        f"device `{m['device']}`{' (' + m['gpu'] + ')' if m['gpu'] else ''}; torch {m['torch']}, Python {m['python']}, "
        f"ART {m['art']}, fairdefense {m['fairdefense']}. Load average (1/5/15 min) before: "
        f"{'/'.join(str(v) for v in results['load_before'])}, after: {'/'.join(str(v) for v in results['load_after'])}"
        f" (the machine has {m['usable_cores']} cores; a load above that means other processes shared them).",
        "",
        f"Workload `{results['workload']}`: model `{s['model']}`, {s['train_samples']} training samples, batch "
        f"{s['batch_size']}, SGD lr {s['lr']} (constant), momentum 0.9, weight decay 5e-4, L-inf eps {s['eps']:.4g}, "
        f"step {s['eps_step']:.4g}, {s['attack_steps']} attack steps; {s['repeats']} repeats, variants interleaved.",
    ]
    if "art" in results:
        a = results["art"]
        out += ["", "### 1. fairdefense vs ART", "",
                f"Timing: {s['repeats']} interleaved runs of {a['epochs_per_run']} epochs per trainer, the same "
                f"initial weights for all four in a run (seed = repeat), {a['batches_per_epoch']} batches per epoch; "
                "seconds per epoch = wall time of `fit` / epochs, median over runs; the ratio is the median of the "
                f"per-run ratios. Accuracy: one further run of {a['accuracy_epochs']} epochs per trainer (seed 0), "
                "scored on the test split by fairdefense's PGD-20 (the same evaluator for every model); its seconds "
                "per epoch are a second, longer timing reading.", ""]
        rows = []
        for name, v in a["variants"].items():
            pair = next((p for art, p in a["pairs"].items() if art == name), None)
            rows.append([name, _f(v["median_seconds_per_epoch"]), _f(1e3 * v["median_seconds_per_batch"], 1),
                         f"{pair['speedup']:.2f}x" if pair else "1 (reference)", _met(pair["met"]) if pair else "-",
                         _f(v["accuracy_run_seconds_per_epoch"]),
                         f"{pair['accuracy_run_speedup']:.2f}x" if pair else "-",
                         pct(v["clean_avg"]), pct(v["clean_worst"]), pct(v["pgd20_avg"]), pct(v["pgd20_worst"])])
        out.append(_table(["trainer", "s / epoch", "ms / batch", "ART / ours (target >= 2x)", "target",
                           "s / epoch (accuracy run)", "ART / ours (accuracy run)", "clean avg %", "clean worst %",
                           "PGD-20 avg %", "PGD-20 worst %"], rows))
        for title, p in a.get("profile", {}).items():
            out += ["", _profile_md(title, p)]
    if "strategies" in results:
        st = results["strategies"]
        out += ["", "### 2. Strategy overhead", "",
                "Training seconds of the second epoch (`train_time` in `metrics.jsonl`: the batches only; "
                "validation and test evaluation excluded and listed separately), median over repeats; ratio = "
                "median over repeats of strategy / bare trainer with the same objective in the same repeat. "
                "Every variant holds out the same validation split, so all train on the same batches. "
                "`attack steps` is the mean number of attack steps per batch.", ""]
        rows = [[label, r["objective"], _f(r["median_train_time"]), _f(r["median_validation_and_eval_time"]),
                 _f(r["attack_steps"], 1), "1 (reference)" if r["met"] is None else f"{r['ratio']:.3f}x",
                 _met(r["met"])] for label, r in st["rows"].items()]
        out.append(_table(["strategy", "objective", "train s / epoch", "validation s / epoch", "attack steps",
                           "vs bare (target <= 1.03x)", "target"], rows))
        for title, p in st.get("profile", {}).items():
            out += ["", _profile_md(f"second epoch of {title} vs the bare trainer", p)]
    if "floor" in results:
        f = results["floor"]
        out += ["", "### 3. Efficiency against the (K+1)-pass floor", "",
                f"PGD-AT with K = {f['attack_steps']}: {1e3 * f['at_seconds_per_batch']:.1f} ms per batch (trainer, "
                f"`train_time` / batches); natural training step {1e3 * f['natural_seconds_per_batch']:.2f} ms per "
                f"batch; efficiency = AT batch / ((K+1) x natural step) = **{f['efficiency']:.3f}** (target <= "
                f"{f['target']}: {_met(f['met'])}; per repeat: {', '.join(f'{x:.3f}' for x in f['ratios'])})."]
        for title, p in f.get("profile", {}).items():
            out += ["", _profile_md(title, p)]
    if "faal" in results:
        fa = results["faal"]
        out += ["", "### 4. FAAL's weight solve vs cvxpy", "",
                f"C = {fa['num_classes']}, batch {fa['batch']}, r = {fa['r']}: closed form "
                f"{1e3 * fa['ours_seconds']:.3f} ms per batch (median of {fa['calls']}), cvxpy "
                f"({fa['cvxpy_solver']}, problem rebuilt every batch as in the authors' code) "
                f"{1e3 * fa['cvxpy_seconds']:.2f} ms (median of {fa['cvxpy_calls']}): **{fa['speedup']:.0f}x** "
                f"(target >= {fa['target']:.0f}x: {_met(fa['met'])}). Largest objective gap cvxpy - closed form: "
                f"{fa['max_objective_gap_cvxpy_minus_ours']:.1e}."]
        for title, p in fa.get("profile", {}).items():
            out += ["", _profile_md(title, p)]
    if "memory" in results:
        me = results["memory"]
        gpu = me["measure"].startswith("gpu")
        out += ["", "### 5. Peak memory", "",
                f"Each row is a fresh process working on the split repeated to that many samples, PGD-"
                f"{me['attack_steps']} (memory does not depend on the number of steps: each step's graph is freed). "
                + ("GPU: `torch.cuda.max_memory_allocated` above the allocation before the work." if gpu else
                   "CPU: the kernel's peak-RSS mark (`VmHWM`) is reset just before the work and read after it; "
                   "the last column is that peak minus the RSS before the work (data and model already loaded)."),
                ""]
        rows = [[r["mode"], r["samples"], _f(r["data_mib"], 2), _f(r["rss_before_mib"], 0), _f(r["peak_rss_mib"], 0),
                 _f(r[me["measure"]], 1)] for r in me["rows"]]
        out.append(_table(["work", "samples", "data MiB", "RSS before MiB", "peak RSS MiB", "peak above before MiB"],
                          rows))
        out += ["", "Growth of the peak from the smallest to the largest size: "
                + ", ".join(f"{mode} {g:+.1f} MiB" for mode, g in me["growth_mib"].items()) + "."]
    return "\n".join(out)


# --------------------------------------------------------------------- driver
SECTIONS = ("art", "strategies", "floor", "faal", "memory")


def run_suite(workload: str, s: Settings, sections: Sequence[str] = SECTIONS, *, train_limit: int | None = None,
              test_limit: int | None = None, command: str = "") -> dict[str, Any]:
    """Run the chosen sections and return everything :func:`render_markdown` and the JSON need."""
    w = load_workload(workload, train_limit=train_limit, test_limit=test_limit)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "command": command, "workload": workload, "machine": machine_info(s.device), "load_before": load_average(),
        "targets": TARGETS,
        "settings": {**asdict(s), "model": w.model, "train_samples": len(w.train), "test_samples": len(w.test),
                     "eps": w.eps, "eps_step": w.eps_step},
    }
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "art": lambda: compare_with_art(w, s),
        "strategies": lambda: strategy_overhead(w, s),
        "floor": lambda: floor_efficiency(w, s),
        "faal": lambda: faal_solver(s),
        "memory": lambda: memory_scaling(load_workload(workload), s),
    }
    for name in sections:
        t0 = time.perf_counter()
        print(f"[speed] {name} ...", flush=True)
        results[name] = steps[name]()
        print(f"[speed] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    results["load_after"] = load_average()
    results["minutes"] = (time.perf_counter() - start) / 60
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--workload", choices=["digits", "synthetic32"], default="digits")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, two repeats, no profiles, nothing written: checks that everything runs")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--repeats", type=int, help="repeats per comparison (default 3; --quick 2)")
    p.add_argument("--batch-size", type=int, help="default: 32 on digits (its training default), 128 on synthetic32")
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on shared machines)")
    p.add_argument("--md", type=Path, default=DOCS / "benchmarks.md",
                   help="markdown file whose speed section is rewritten")
    p.add_argument("--json", type=Path, default=DOCS / "benchmarks.json")
    p.add_argument("--no-write", action="store_true", help="print the markdown instead of writing files")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the markdown sections from the results stored in --json")
    p.add_argument("--probe", choices=["eval", "train"], help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--memory-steps", type=int, default=2, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("speed.py: --device cuda but torch sees no GPU.")
    batch = args.batch_size or (32 if args.workload == "digits" else 128)
    s = Settings(device=args.device, batch_size=batch, attack_steps=args.attack_steps, memory_steps=args.memory_steps)
    if args.probe:
        print(json.dumps(memory_probe(args.probe, args.samples, args.workload, s)))
        return 0
    if args.render_only:
        for key, stored in json.loads(args.json.read_text()).items():
            _write_section(args.md, key, render_markdown(stored))
        print(f"rewrote the speed sections of {args.md} from {args.json}")
        return 0
    limits: dict[str, int | None] = {"train_limit": None, "test_limit": None}
    if args.quick:
        s = replace(s, repeats=2, art_epochs=1, art_accuracy_epochs=1, natural_passes=1, faal_calls=40, cvxpy_calls=4,
                    memory_multiples={"eval": (1, 2), "train": (1, 2)}, profile=False)
        limits = {"train_limit": 8 * batch, "test_limit": 64}
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run_suite(args.workload, s, args.sections, command=command.strip(), **limits)
    text = render_markdown(results)
    print(text)
    if args.no_write or args.quick:
        return 0
    key = f"{args.device}-{args.workload}"
    stored = json.loads(args.json.read_text()) if args.json.exists() else {}
    stored[key] = results
    write_json(args.json, stored)
    _write_section(args.md, key, text)
    print(f"\nwrote {args.md} (section speed-{key}) and {args.json} (key {key!r})")
    return 0


def _write_section(md: Path, key: str, text: str) -> None:
    replace_section(md, f"speed-{key}", f"## Speed: `{key}`\n\n{text}")


if __name__ == "__main__":
    sys.exit(main())
