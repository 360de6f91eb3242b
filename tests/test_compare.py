"""fairdefense compare: leaderboard values and order, CSV, scatter, the attack choice."""
import csv
import json

import matplotlib.image
import pytest
import torch
from scipy import stats as st

import fairdefense
from fairdefense import ConfigError
from fairdefense.cli import main
from fairdefense.metrics import ClassReport
from fairdefense.reports import build_metrics, group_runs, leaderboard, save_metrics, write_leaderboard

NAMES = [str(i) for i in range(10)]


def synthetic_run(folder, plugins, robust, clean=0.9, extra=None, seed=0, epochs=1):
    """A run folder holding only a metrics.json, with known per-class accuracies."""
    folder.mkdir()
    acc = {"pgd5": torch.tensor(robust, dtype=torch.float64)}
    if extra is not None:
        acc["cw5"] = torch.tensor(extra, dtype=torch.float64)
    report = ClassReport(NAMES, torch.full((10,), 36), torch.full((10,), clean, dtype=torch.float64), acc)
    config = {"dataset": "digits", "objective": "at", "plugins": plugins, "epochs": epochs, "eps": 0.2, "seed": seed}
    m = build_metrics(report, config=config, evaluated={"checkpoint": str(folder / "last.pt"), "selection": "last",
                                                        "epoch": 1, "weights_used": "trained"},
                      eps=0.2, norm="linf", seed=0)
    save_metrics(m, folder / "metrics.json")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fairdefense.train(epochs=1, attack_steps=2, batch_size=256, device="cpu", eval_attacks=("pgd5",),
                      progress=False, out=str(root / "base"))
    good = synthetic_run(root / "good", ["cfa"], [0.6] * 9 + [0.4], extra=[0.5] * 10)
    fair = synthetic_run(root / "fair", ["bat", "ema"], [0.5] * 10, extra=[0.45] * 10)
    return root / "base", good, fair


def test_leaderboard_values_and_order(runs):
    base, good, fair = runs
    attack, rows = leaderboard([base, good, fair])
    assert attack == "pgd5"  # the only attack all three share
    test = json.loads((base / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    acc = test["robust_acc"]["pgd5"]
    by_run = {r["run"]: r for r in rows}
    assert by_run["base"]["strategy"] == "baseline (at)"
    assert by_run["base"]["selection"] == "training"
    assert by_run["base"]["robust_avg"] == round(100 * sum(acc) / 10, 2)
    assert by_run["base"]["robust_worst"] == round(100 * min(acc), 2)
    assert by_run["base"]["clean_worst"] == round(100 * min(test["clean_acc"]), 2)
    g = by_run["good"]
    assert (g["strategy"], g["robust_avg"], g["robust_worst"], g["robust_gap"]) == ("cfa", 58.0, 40.0, 20.0)
    assert g["robust_std"] == pytest.approx(6.0)  # population std of nine 0.6 and one 0.4
    assert (g["boundary_error_avg"], g["boundary_error_worst"]) == (32.0, 50.0)
    assert by_run["fair"]["strategy"] == "bat+ema"
    # ranked by average + worst: fair 100 > good 98 > base
    assert [r["run"] for r in rows] == ["fair", "good", "base"] and [r["rank"] for r in rows] == [1, 2, 3]


def test_files_and_the_shared_attack(runs, tmp_path):
    _, good, fair = runs
    _, rows = leaderboard([good, fair])
    text, files = write_leaderboard([good, fair], tmp_path)
    assert rows[0]["run"] == "fair" and "cw5_avg" in rows[0]  # both have cw5 too; pgd5 leads (first shared)
    assert text == files["leaderboard.md"].read_text() and "Configurations" not in text  # one run each
    with open(files["leaderboard.csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["fair", "good"]
    assert float(table[1]["robust_avg"]) == 58.0 and float(table[0]["cw5_worst"]) == 45.0
    md = files["leaderboard.md"].read_text()
    assert "| 2 | good | cfa | 90.0 | 90.0 | 58.0 | 40.0 | 20.0 |" in md and "pgd5 avg" in md
    image = matplotlib.image.imread(files["leaderboard.png"])
    assert image.shape[0] > 300 and image.shape[1] > 300
    attack, ranked = leaderboard([good, fair], attack="cw5")
    assert attack == "cw5" and [r["run"] for r in ranked] == ["good", "fair"]  # under cw5: 50+50 > 45+45


def test_missing_attack_names_the_run(runs):
    base, good, _ = runs
    with pytest.raises(ConfigError, match="'cw5' is missing from .*base"):
        leaderboard([base, good], attack="cw5")
    with pytest.raises(ConfigError, match="at least one run"):
        leaderboard([])


def test_cli_compare_prints_and_writes_only_where_asked(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "bat+ema" in out and "baseline (at)" in out
    assert list(tmp_path.iterdir()) == []  # nothing written without --out
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "lb")]) == 0
    assert {p.name for p in (tmp_path / "lb").iterdir()} == {"leaderboard.md", "leaderboard.csv",
                                                            "leaderboard-configurations.csv", "leaderboard.png"}
    assert main(["compare", str(tmp_path / "nope")]) == 2


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Two configurations x three seeds (worst class is class 9), plus a 2-epoch AT at seed 0."""
    root = tmp_path_factory.mktemp("seeded")
    at_worst, cfa_worst = [0.30, 0.35, 0.25], [0.42, 0.40, 0.41]
    at_avg, cfa_avg = [0.50, 0.52, 0.48], [0.51, 0.50, 0.50]
    folders = []
    for seed in range(3):
        for name, plugins, worst, avg in (("at", [], at_worst, at_avg), ("cfa", ["cfa"], cfa_worst, cfa_avg)):
            rest = (10 * avg[seed] - worst[seed]) / 9
            folders.append(synthetic_run(root / f"{name}-s{seed}", plugins, [rest] * 9 + [worst[seed]], seed=seed))
    folders.append(synthetic_run(root / "at-long", [], [0.5] * 10, epochs=2))
    return folders, (at_worst, cfa_worst, at_avg, cfa_avg)


def test_seeds_are_grouped_and_tested_against_the_baseline(seeded):
    folders, (at_worst, cfa_worst, at_avg, cfa_avg) = seeded
    _, rows = leaderboard(folders)
    groups = {g["configuration"]: g for g in group_runs(rows)}
    assert set(groups) == {"baseline (at) (epochs=1)", "baseline (at) (epochs=2)", "cfa"}
    base = groups["baseline (at) (epochs=1)"]
    assert base["baseline"] and base["runs"] == 3 and base["tests"] == {}
    assert base["robust_worst_mean"] == pytest.approx(100 * sum(at_worst) / 3)
    assert base["robust_worst_std"] == pytest.approx(100 * st.tstd(at_worst))
    cfa = groups["cfa"]["tests"]
    ref = st.ttest_rel([100 * v for v in cfa_worst], [100 * v for v in at_worst])
    assert cfa["worst"]["test"] == "paired t-test" and cfa["worst"]["n"] == 3
    assert cfa["worst"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert cfa["worst"]["mean_diff"] == pytest.approx(100 * (sum(cfa_worst) - sum(at_worst)) / 3)
    assert cfa["worst"]["significant"] == (ref.pvalue < 0.05)
    assert cfa["avg"]["p_value"] == pytest.approx(st.ttest_rel(cfa_avg, at_avg).pvalue, rel=1e-6)
    # one shared unit (seed 0) with the 2-epoch run: a difference but no test
    assert groups["baseline (at) (epochs=2)"]["tests"]["worst"]["p_value"] is None
    strict = {g["configuration"]: g for g in group_runs(rows, alpha=ref.pvalue / 2)}
    assert not strict["cfa"]["tests"]["worst"]["significant"]
    lax = {g["configuration"]: g for g in group_runs(rows, alpha=min(0.99, ref.pvalue * 2))}
    assert lax["cfa"]["tests"]["worst"]["significant"]
    other = {g["configuration"]: g for g in group_runs(rows, baseline="cfa-s1")}
    assert other["cfa"]["baseline"] and other["baseline (at) (epochs=1)"]["tests"]["worst"]["mean_diff"] < 0
    with pytest.raises(ConfigError, match="no configuration or run named 'nope'"):
        group_runs(rows, baseline="nope")


def test_cli_marks_significance_at_the_chosen_level(seeded, capsys):
    folders, _ = seeded
    assert main(["compare", *map(str, folders), "--alpha", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "Configurations" in out and "alpha = 0.2" in out and "paired t-test" in out
    line = next(x for x in out.splitlines() if x.startswith("| cfa |"))
    assert line.count(" *") == 1  # worst class significant at 0.2, the average not

