"""fairdefense compare: leaderboard values and order, CSV, scatter, the attack choice."""
import csv
import json

import matplotlib.image
import pytest
import torch

import fairdefense
from fairdefense import ConfigError
from fairdefense.cli import main
from fairdefense.metrics import ClassReport
from fairdefense.reports import build_metrics, leaderboard, save_metrics, write_leaderboard

NAMES = [str(i) for i in range(10)]


def synthetic_run(folder, plugins, robust, clean=0.9, extra=None):
    """A run folder holding only a metrics.json, with known per-class accuracies."""
    folder.mkdir()
    acc = {"pgd5": torch.tensor(robust, dtype=torch.float64)}
    if extra is not None:
        acc["cw5"] = torch.tensor(extra, dtype=torch.float64)
    report = ClassReport(NAMES, torch.full((10,), 36), torch.full((10,), clean, dtype=torch.float64), acc)
    config = {"dataset": "digits", "objective": "at", "plugins": plugins, "epochs": 1, "eps": 0.2}
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
    rows, files = write_leaderboard([good, fair], tmp_path)
    assert rows[0]["run"] == "fair" and "cw5_avg" in rows[0]  # both have cw5 too; pgd5 leads (first shared)
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


def test_cli_compare(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "bat+ema" in out and "baseline (at)" in out
    assert {p.name for p in tmp_path.iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.png"}
    assert main(["compare", str(tmp_path / "nope")]) == 2
