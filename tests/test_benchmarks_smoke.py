"""The benchmark scripts' building blocks at minimal sizes (benchmarks/speed.py, quality.py, _common.py).

Nothing here times anything or asserts a speed: the suites themselves check their targets.
"""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats as scipy_stats

import fairdefense
from fairdefense.metrics import ClassReport
from fairdefense.reports import build_metrics, save_metrics

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"fairdefense_bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


common = _load("_common")
speed = _load("speed")
quality = _load("quality")

TINY = dict(repeats=1, attack_steps=1, batch_size=32, art_epochs=1, art_accuracy_epochs=1, natural_passes=1,
            faal_calls=4, cvxpy_calls=2, profile=False)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return speed.load_workload("digits", train_limit=64, test_limit=32), speed.Settings(**TINY)


# ----------------------------------------------------------------------------- _common
def test_interleaved_rotates_the_order_each_repeat():
    assert list(common.interleaved(["a", "b", "c"], 3)) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]


def test_median_and_paired_ratios():
    assert common.median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert math.isnan(common.median([]))
    assert common.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]
    with pytest.raises(ValueError):
        common.paired_ratios([1.0], [1.0, 2.0])


def test_replace_section_keeps_the_hand_written_text(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# Title\n\nintro\n\n<!-- s:begin -->\nold\n<!-- s:end -->\n\nafter\n")
    common.replace_section(path, "s", "new table")
    assert path.read_text() == "# Title\n\nintro\n\n<!-- s:begin -->\nnew table\n<!-- s:end -->\n\nafter\n"
    common.replace_section(path, "t", "second")
    assert path.read_text().endswith("after\n\n<!-- t:begin -->\nsecond\n<!-- t:end -->\n")
    common.replace_section(tmp_path / "new.md", "s", "x")
    assert (tmp_path / "new.md").read_text() == "<!-- s:begin -->\nx\n<!-- s:end -->\n"


def test_write_json_turns_nan_into_null(tmp_path):
    common.write_json(tmp_path / "x.json", {"a": [1.0, float("nan")], "b": {"c": float("nan")}})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1.0, None], "b": {"c": None}}


# ----------------------------------------------------------------------------- speed.py
def test_workloads():
    w = speed.load_workload("digits", train_limit=64, test_limit=32)
    assert (len(w.train), len(w.test), w.input_shape, w.model, w.eps) == (64, 32, (1, 8, 8), "small_cnn", 0.2)
    x, y = w.arrays()
    assert x.dtype.name == "float32" and x.shape == (64, 1, 8, 8) and y.shape == (64,)
    s = speed.load_workload("synthetic32", train_limit=8, test_limit=4)
    assert s.train.tensors[0].shape == (8, 3, 32, 32) and s.model == "preact_resnet18"
    assert s.eps == pytest.approx(8 / 255) and s.eps_step == pytest.approx(2 / 255)
    first = [w.make_model(seed).state_dict()["features.0.weight"] for seed in (3, 3, 4)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    with pytest.raises(fairdefense.ConfigError):
        speed.load_workload("cifar")


def test_profile_difference_by_hand():
    variant = ({"conv": (4, 10.0, 0.0), "mul": (2, 3.0, 0.0)}, 0.020)
    base = ({"conv": (4, 9.0, 0.0), "add": (1, 1.0, 0.0)}, 0.012)
    p = speed.profile_difference(variant, base)
    assert [r["op"] for r in p["top_ops"]] == ["mul", "conv", "add"]
    assert [r["extra_ms"] for r in p["top_ops"]] == [3.0, 1.0, -1.0]
    assert p["op_ms"] == 13.0 and p["base_op_ms"] == 10.0
    assert p["outside_ops_ms"] == pytest.approx(7.0) and p["base_outside_ops_ms"] == pytest.approx(2.0)


def test_epoch_profiler_records_exactly_one_epoch(tiny):
    w, s = tiny
    profiler = speed.EpochProfiler(epoch=1, device="cpu")
    config = s.config(w, objective="at", epochs=2, seed=0)
    fairdefense.Trainer(w.make_model(0), w.train, w.class_names, config, [profiler], progress=False).fit()
    calls = {e.key: e.count for e in profiler.profiler.key_averages()}
    # one epoch: 2 batches x (1 attack step + 1 training forward) x 3 conv layers
    assert calls["aten::convolution"] == 2 * 2 * 3
    assert profiler.wall > 0


def test_strategy_overhead_rows(tiny):
    _, s = tiny
    w = speed.load_workload("digits", train_limit=200, test_limit=32)  # select_best: every class held out
    out = speed.strategy_overhead(w, s, labels=["faal", "bat"])
    rows = out["rows"]
    assert set(rows) == {"PGD-AT", "TRADES", "faal", "bat"}
    assert rows["faal"]["base"] == "PGD-AT" and rows["bat"]["base"] == "TRADES"
    assert rows["faal"]["ratio"] == pytest.approx(rows["faal"]["train_time"][0] / rows["PGD-AT"]["train_time"][0])
    assert rows["PGD-AT"]["met"] is None and rows["faal"]["met"] == (rows["faal"]["ratio"] <= 1.03)
    assert rows["faal"]["attack_steps"] == 1.0 and 0 <= rows["bat"]["attack_steps"] <= 1.0


def test_floor_efficiency_is_the_ratio_of_its_parts(tiny):
    w, s = tiny
    f = speed.floor_efficiency(w, s)
    assert f["batches"] == 2 and len(f["ratios"]) == 1
    assert f["efficiency"] == pytest.approx(f["at_seconds_per_batch"] / (2 * f["natural_seconds_per_batch"]))


def test_faal_solver_agrees_with_cvxpy(tiny):
    pytest.importorskip("cvxpy")
    _, s = tiny
    f = speed.faal_solver(s)
    assert f["calls"] == 4 and f["cvxpy_calls"] == 2
    assert abs(f["max_objective_gap_cvxpy_minus_ours"]) < 1e-4  # both find the same optimum
    assert f["speedup"] == pytest.approx(f["cvxpy_seconds"] / f["ours_seconds"])


def test_compare_with_art_runs_all_four_trainers(tiny):
    pytest.importorskip("art")
    w, s = tiny
    a = speed.compare_with_art(w, s)
    assert set(a["variants"]) == set(speed.ART_VARIANTS)
    for v in a["variants"].values():
        assert 0.0 <= v["pgd20_worst"] <= v["pgd20_avg"] <= 1.0 and v["median_seconds_per_epoch"] > 0
    times = {name: v["seconds_per_epoch"][0] for name, v in a["variants"].items()}
    assert a["pairs"]["ART MadryPGD"]["speedup"] == pytest.approx(times["ART MadryPGD"] / times["fairdefense PGD-AT"])
    assert a["pairs"]["ART TRADES"]["speedup"] == pytest.approx(times["ART TRADES"] / times["fairdefense TRADES"])


def test_memory_probe_reports_the_peak_above_the_start(tiny):
    _, s = tiny
    row = speed.memory_probe("eval", 48, "digits", s)
    assert row["samples"] == 48 and row["data_mib"] == pytest.approx(48 * (64 * 4 + 8) / 2**20)
    assert row["peak_rss_mib"] >= row["rss_before_mib"] > 0
    assert row["peak_above_before_mib"] == pytest.approx(row["peak_rss_mib"] - row["rss_before_mib"])


def test_render_markdown_states_targets(tiny):
    w, s = tiny
    results = {
        "command": "python benchmarks/speed.py", "workload": "digits", "machine": common.machine_info("cpu"),
        "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0], "minutes": 0.1, "finished": "now",
        "settings": {"model": "small_cnn", "train_samples": 64, "batch_size": 32, "lr": 0.1, "eps": 0.2,
                     "eps_step": 0.05, "attack_steps": 1, "repeats": 1},
        "floor": {"attack_steps": 1, "at_seconds_per_batch": 0.01, "natural_seconds_per_batch": 0.004,
                  "efficiency": 1.25, "target": 1.15, "met": False, "ratios": [1.25]},
    }
    text = speed.render_markdown(results)
    assert "**1.250**" in text and "(target <= 1.15: **missed**" in text and "K = 1:" in text


# ----------------------------------------------------------------------------- quality.py
def test_milestones_and_fine_tune_epochs():
    assert quality.milestones(30) == (15, 22)   # round(22.5) = 22, as the trainer's scheduler rounds
    assert quality.milestones(2) == (1, 2)
    frl, faal_ft = quality._BY_NAME["frl"], quality._BY_NAME["faal-ft"]
    assert quality.fine_tune_epochs(frl, 30) == 40 and quality.fine_tune_epochs(frl, 2) == 3
    assert quality.fine_tune_epochs(faal_ft, 30) == 2 and quality.fine_tune_epochs(faal_ft, 2) == 1


def test_plan_adds_baselines_and_orders_them_first(tmp_path):
    runs = quality.plan(["frl", "faal-at"], [0, 1], 2, 30, tmp_path)
    keys = [r.key for r in runs]
    assert set(keys[:4]) == {"trades-f0-s0", "trades-f1-s0", "trades-f0-s1", "trades-f1-s1"}
    assert len(keys) == 12 and {"faal-at-f1-s1", "frl-f0-s1"} <= set(keys)
    frl = next(r for r in runs if r.key == "frl-f1-s1")
    args = quality.train_args(frl)
    assert frl.needs == "trades-f1-s1"
    assert args[args.index("--init") + 1] == str((tmp_path / "trades-f1-s1" / "last.pt").resolve())
    assert args[args.index("--fold") + 1] == "1/2" and args[args.index("--seed") + 1] == "1"
    assert args[args.index("--epochs") + 1] == "40"
    assert args[-3:] == ["--out", str((tmp_path / "frl-f1-s1").resolve()), "--no-progress"]
    faal = quality.train_args(next(r for r in runs if r.key == "faal-at-f0-s0"))
    assert "faal.begin=15" in faal and "faal.late_epoch=22" in faal and "ema.begin=15" in faal
    # AutoAttack on the first fold of every seed only
    assert {r.key for r in runs if "autoattack" in r.attacks} == {
        f"{n}-f0-s{s}" for n in ("trades", "faal-at", "frl") for s in (0, 1)}
    assert all("autoattack" not in r.attacks for r in quality.plan(["at"], [0], 2, 3, tmp_path, autoattack_folds=0))
    with pytest.raises(SystemExit):
        quality.plan(["nope"], [0], 2, 2, tmp_path)
    with pytest.raises(SystemExit, match="--folds"):
        quality.plan(["at"], [0], 1, 2, tmp_path)


def test_unfinished_runs_resume_from_any_checkpoint_or_start_afresh(tmp_path):
    fresh, started, interrupted, halfway = quality.plan(["at", "bat", "trades", "cfa-at"], [0], 2, 3, tmp_path)[:4]
    assert quality.training_args(fresh) == quality.train_args(fresh)
    started.out.mkdir(parents=True)
    (started.out / "config.json").write_text("{}")  # stopped before its first checkpoint
    assert quality.training_args(started) == quality.train_args(started) + ["--overwrite"]
    for run in (interrupted, halfway):  # a checkpoint, with or without history lines
        run.out.mkdir(parents=True)
        (run.out / "last.pt").write_bytes(b"")
    (halfway.out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    for run in (interrupted, halfway):
        args = quality.training_args(run)
        assert args[:2] == ["train", "--resume"] and args[2].endswith(f"{run.key}/last.pt")
        assert args[args.index("--epochs") + 1] == "3" and "--fold" not in args


def test_autoattack_on_chosen_seeds_and_machines_recorded_per_run(tmp_path, monkeypatch):
    runs = quality.plan(["at"], [0, 1, 2], 2, 2, tmp_path, autoattack_seeds=[1])
    assert {r.key for r in runs if "autoattack" in r.attacks} == {"at-f0-s1"}
    machine = {"A": {"cpu": "A", "usable_cores": 2, "torch": "2.14", "fairdefense": "0.2.0"},
               "B": {"cpu": "B", "usable_cores": 16, "torch": "2.11", "fairdefense": "0.2.0"}}
    by_key = {r.key: r for r in runs}
    # at-f0-s1 trained on B, then resumed on A: its last entry counts; fold 1 of seed 2 has no record
    for key, where in [("at-f0-s0", "A"), ("at-f1-s0", "A"), ("at-f0-s1", "B"), ("at-f1-s1", "B"),
                       ("at-f0-s1", "A"), ("at-f0-s2", "B")]:
        monkeypatch.setattr(quality, "machine_info", lambda device, m=machine[where]: {**m, "load_average": []})
        by_key[key].out.mkdir(parents=True, exist_ok=True)
        quality.record_machine(by_key[key].out)
    assert [e["cpu"] for e in json.loads((by_key["at-f0-s1"].out / "machine.json").read_text())] == ["B", "A"]
    found = quality.machines(runs)
    assert [(m["cpu"], m["usable_cores"], m["seeds"], m["runs"]) for m in found] == [("A", 2, [0, 1], 3),
                                                                                     ("B", 16, [1, 2], 2)]


def _fake_run(run, epochs_done: int, attacks, robust=(0.5, 0.0), counts=(2, 2), fold=None, sha256="ab12") -> None:
    run.out.mkdir(parents=True)
    (run.out / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "time": 1.0}) + "\n"
                                                   for e in range(1, epochs_done + 1)))
    report = ClassReport(class_names=["a", "b"], counts=torch.tensor(counts),
                         clean_acc=torch.tensor([1.0, 0.5], dtype=torch.float64),
                         robust_acc={a: torch.tensor(robust, dtype=torch.float64) for a in attacks})
    metrics = build_metrics(report, config={"objective": "at", "plugins": [],
                                            "fold": fold or f"{run.fold}/{run.folds}"},
                            evaluated={"epoch": epochs_done}, eps=0.2, norm="linf", seed=0,
                            samples={"first_n": None, "sha256": sha256})
    save_metrics(metrics, run.out / "metrics.json")


def test_finished_runs_are_recognised(tmp_path):
    done, short, other, wrong_fold, by_trainer = quality.plan(["at", "bat", "trades", "cfa-at", "ema-at"], [0], 2,
                                                              3, tmp_path, autoattack_folds=0)[:5]
    _fake_run(done, 3, ["pgd20"])
    _fake_run(short, 2, ["pgd20"])
    _fake_run(other, 3, ["cw20"])
    _fake_run(wrong_fold, 3, ["pgd20"], fold="1/2")
    _fake_run(by_trainer, 3, ["pgd20"], sha256=None)  # the trainer's end-of-run evaluation records no hash
    assert quality.is_trained(done) and quality.is_evaluated(done)
    assert not quality.is_trained(short) and not quality.is_evaluated(short)
    assert quality.is_trained(other) and not quality.is_evaluated(other)  # evaluated without PGD-20
    assert not quality.is_evaluated(wrong_fold)  # scored on another fold
    assert quality.is_trained(by_trainer) and not quality.is_evaluated(by_trainer)
    collected = quality.collect([done, short, other, wrong_fold, by_trainer])
    assert list(collected) == ["at"]
    unit = collected["at"]["units"][(0, 0)]
    assert (unit["clean_avg"], unit["clean_worst"], unit["pgd20_avg"], unit["pgd20_worst"]) == (0.75, 0.5, 0.25, 0.0)
    assert unit["correct"]["pgd20"] == [1, 0] and unit["counts"] == [2, 2]


def _unit(avg, worst, correct=None, counts=(10, 10)):
    return {"clean_avg": 0.9, "clean_worst": 0.8, "pgd20_avg": avg, "pgd20_worst": worst, "counts": list(counts),
            "correct": {"clean": [9, 8], "pgd20": correct or [round(10 * worst), round(10 * (2 * avg - worst))]}}


def test_aggregate_by_hand():
    # two folds x two seeds; class counts 10 + 10 per fold
    at = {(0, 0): _unit(0.50, 0.3), (1, 0): _unit(0.60, 0.3), (0, 1): _unit(0.55, 0.2), (1, 1): _unit(0.45, 0.4)}
    good = {(0, 0): _unit(0.55, 0.5), (1, 0): _unit(0.55, 0.4), (0, 1): _unit(0.50, 0.4), (1, 1): _unit(0.50, 0.5)}
    collected = {"at": {"units": at, "folds": 2, "train_minutes": [1.0, 3.0]},
                 "good": {"units": good, "folds": 2, "train_minutes": [2.0]}}
    rows = quality.aggregate(collected)
    # pooled per seed (counts summed over the folds), by hand. at seed 0: class 0 correct 3 + 3 = 6 of 20,
    # class 1 7 + 9 = 16 of 20 -> avg 0.55, worst 0.30; seed 1: class 0 2 + 4 = 6, class 1 9 + 5 = 14 -> 0.5, 0.3
    assert rows["at"]["pooled"]["pgd20"]["0"]["avg"] == pytest.approx(0.55)
    assert rows["at"]["mean"]["pgd20_worst"] == pytest.approx(0.30)
    assert rows["at"]["mean"]["pgd20_avg"] == pytest.approx(0.525)
    assert rows["at"]["std"]["pgd20_avg"] == pytest.approx(statistics.stdev([0.55, 0.5]))
    assert rows["at"]["train_minutes"] == 2.0 and rows["at"]["units"] == 4
    # paired over the four (fold, seed) units, in points: worst differences 20, 10, 20, 10
    worst = rows["good"]["vs_at"]["worst"]
    ref = scipy_stats.ttest_rel([50, 40, 40, 50], [30, 30, 20, 40])
    assert worst["n"] == 4 and worst["mean_diff"] == pytest.approx(15.0)
    assert worst["p_value"] == pytest.approx(ref.pvalue) and worst["significant"] == (ref.pvalue < 0.05)
    assert rows["good"]["vs_at"]["avg"]["mean_diff"] == pytest.approx(0.0, abs=1e-9)
    assert rows["good"]["meets_target"] is True  # pooled worst 0.45 vs 0.30, avg equal
    assert rows["at"]["vs_at"] == {}
    assert quality._holm({"a": 0.01, "b": 0.04, "c": 0.03}, 0.05) == {"a"}  # 0.01 < 0.05/3; 0.03 > 0.05/2


def test_power_table_matches_a_simulated_t_test():
    table = quality.power_table({"worst": 9.3, "avg": 1.8}, (15,))
    assert table[0][0] == "15" and float(table[0][1]) == pytest.approx(7.2, abs=0.1)


def test_scheduler_waits_for_baselines_and_skips_after_failures(tmp_path, monkeypatch):
    runs = quality.plan(["frl", "faal-ft"], [0], 2, 2, tmp_path, autoattack_folds=0)
    started = []

    def fake(run, env, logs):
        started.append(run.key)
        assert env["OMP_NUM_THREADS"] == "1"
        if run.needs:
            assert run.needs in started
        return run.key != "at-f0-s0"

    monkeypatch.setattr(quality, "_execute", fake)
    failed = quality.run_all(runs, jobs=2, logs=tmp_path / "logs")
    assert set(started) == {"at-f0-s0", "at-f1-s0", "trades-f0-s0", "trades-f1-s0", "frl-f0-s0", "frl-f1-s0",
                            "faal-ft-f1-s0"}
    assert failed == {"at-f0-s0": "see its log", "faal-ft-f0-s0": "its baseline at-f0-s0 failed"}


def test_the_suite_end_to_end_on_fake_runs(tmp_path, monkeypatch):
    """main(): plan, run (each run's execution faked: it writes what train + evaluate would), skip
    finished runs on a second call, aggregate, and write the page, the JSON and the figure."""
    executed = []
    real_execute = quality._execute

    def fake(run, env, logs):
        executed.append(run.key)
        better = run.config.name == "bat"
        _fake_run(run, quality.target_epochs(run), run.attacks,
                  robust=(0.5, 0.6 if better else 0.1 * (1 + run.fold)), counts=(10, 10))
        return True

    monkeypatch.setattr(quality, "_execute", fake)
    out = tmp_path / "docs"
    argv = ["--epochs", "2", "--folds", "2", "--seeds", "0", "1", "--only", "at", "bat", "--jobs", "2",
            "--runs", str(tmp_path / "runs"), "--md", str(out / "results.md"), "--json", str(out / "results.json"),
            "--figure", str(out / "leaderboard.png")]
    assert quality.main(argv) == 0
    assert len(executed) == 8
    text = (out / "results.md").read_text()
    assert "Not the full suite" in text and "## Power analysis" in text
    assert "Significantly higher worst-class PGD-20 robust accuracy than PGD-AT" in text
    better = text.split("Significantly higher")[1].split("\n")[0]
    assert "`bat`" in better and "after Holm's correction over the rows: `bat`." in better
    data = json.loads((out / "results.json").read_text())
    assert data["results"]["bat"]["vs_at"]["worst"]["n"] == 4
    assert "fairdefense train --plugin bat --fold 0/2 --epochs 2 --seed 0" in text
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumable: the real _execute starts no process for a finished run
    monkeypatch.setattr(quality.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was started again"))
    for run in quality.plan(["at", "bat"], [0, 1], 2, 2, tmp_path / "runs"):
        assert real_execute(run, {}, tmp_path / "logs") and run.log == []


def test_one_seed_of_the_whole_protocol_is_called_part_of_the_suite(tmp_path, monkeypatch):
    def fake(run, env, logs):
        _fake_run(run, quality.target_epochs(run), run.attacks, counts=(10, 10))
        return run.key != "wat-f3-s1"

    monkeypatch.setattr(quality, "_execute", fake)
    out = tmp_path / "docs"
    files = ["--md", str(out / "results.md"), "--json", str(out / "results.json"), "--figure", str(out / "l.png")]
    assert quality.main(["--seeds", "0", "--runs", str(tmp_path / "runs"), *files]) == 0
    text = (out / "results.md").read_text()
    assert "**Part of the full suite**: seed(s) 0 of the protocol's 0, 1, 2" in text
    assert "Not the full suite" not in text and "power of 5 units per row" in text
    assert quality.main(["--seeds", "1", "--runs", str(tmp_path / "runs"), *files]) == 1  # a failed run
    assert "Not the full suite" in (out / "results.md").read_text()


def test_rank_agreement_by_hand():
    pgd = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    assert quality.rank_agreement(pgd, dict(pgd)) == "PGD-20 and AutoAttack rank every row the same."
    aa = {"a": 4, "b": 1, "c": 2, "d": 3, "e": 5}  # d^2 = 9 + 1 + 1 + 1 = 12; rho = 1 - 72 / 120 = 0.4
    text = quality.rank_agreement(pgd, aa)
    assert "rho = 0.40" in text and "`a` (1 -> 4)." in text and "3 more move 1-2 places" in text
