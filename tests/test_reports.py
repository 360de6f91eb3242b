"""Report files: metrics.json (schema, values), report.md, classwise.png and curves.png for a short run."""
import hashlib
import json
import shutil

import matplotlib.image
import pytest
import numpy as np
import torch
from scipy import stats as st

import fairdefense
from fairdefense import ConfigError, evaluate_checkpoint
from fairdefense.cli import main
from fairdefense.metrics import WORST_CASE, ClassReport
from fairdefense.reports import (
    REPORT_FILES,
    SCHEMA_VERSION,
    build_metrics,
    evaluate_run,
    load_metrics,
    report_from_metrics,
    resolve_checkpoint,
    save_metrics,
    write_run_report,
)
from fairdefense.reports.markdown import render_report, weak_class_lines
from fairdefense.reports.plots import _curve_series
from fairdefense.reports.schema import eps_text


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of EMA training on the digits, keeping best.pt (so there are val and test lines)."""
    out = tmp_path_factory.mktemp("run")
    result = fairdefense.train(plugins=["ema"], epochs=2, attack_steps=2, batch_size=256, device="cpu",
                               select_best=True, val_steps=2, eval_attacks=("pgd5",), progress=False, out=str(out))
    return out, result


def lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_png(path, min_height=250, min_width=500):
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_height and image.shape[1] >= min_width


def test_training_report_holds_the_final_test_evaluation(run):
    run_dir, result = run
    files = write_run_report(run_dir)
    assert sorted(files) == sorted(REPORT_FILES)
    m = load_metrics(run_dir / "metrics.json")
    test = lines(run_dir)[-1]["test"]
    assert m["schema_version"] == SCHEMA_VERSION == 2
    assert m["run"]["strategy"] == "ema" and m["run"]["dataset"] == "digits" and m["run"]["epochs"] == 2
    ev = m["evaluated"]
    assert (ev["selection"], ev["epoch"], ev["weights_used"]) == ("training", 2, "plugin")
    assert ev["checkpoint"].endswith("last.pt") and ev["best_epoch"] == result.best_epoch
    assert m["data"]["counts"] == test["counts"] and m["data"]["n_samples"] == sum(test["counts"]) == 359
    assert m["clean"]["acc"] == test["clean_acc"]
    pgd = m["attacks"]["pgd5"]
    acc = test["robust_acc"]["pgd5"]
    assert pgd["robust_acc"] == acc
    for c in range(10):
        assert pgd["boundary_error"][c] == pytest.approx(test["clean_acc"][c] - acc[c])
        assert pgd["robust_error"][c] == pytest.approx(1 - acc[c])
    assert pgd["summary"]["robust_acc"]["avg"] == pytest.approx(sum(acc) / 10)
    assert pgd["summary"]["robust_acc"]["worst"] == min(acc)
    assert pgd["summary"]["robust_error"]["worst"] == pytest.approx(1 - min(acc))
    assert m["settings"]["attacks"]["pgd5"]["step_size"] == pytest.approx(m["settings"]["eps"] / 4)
    text = (run_dir / "report.md").read_text()

    def cell(a, n):  # value [exact 95% interval], computed with scipy from the count
        ci = st.binomtest(round(a * n), n).proportion_ci(method="exact")
        return f"{100 * a:.1f} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"

    for c in range(10):
        n = test["counts"][c]
        assert f"| {c} | {n} | {cell(test['clean_acc'][c], n)} | {cell(acc[c], n)} |" in text
        assert pgd["correct"][c] == round(acc[c] * n)
    for entry, key in ((pgd, "robust_acc"), (m["clean"], "acc")):
        for stat in ("avg", "worst"):
            lo, hi = entry["summary_ci"][key][stat]
            assert lo <= entry["summary"][key][stat] <= hi
    assert m["stats"]["resamples"] == 2000 and m["stats"]["class_interval"] == "clopper-pearson"
    assert len(pgd["confusion"]) == 10 and [sum(r) for r in pgd["confusion"]] == test["counts"]
    assert [pgd["confusion"][c][c] for c in range(10)] == pgd["correct"]
    assert "![classwise](classwise.png)" in text and "![curves](curves.png)" in text
    assert "## Where the weak classes go under pgd5" in text
    assert_png(run_dir / "classwise.png")
    assert_png(run_dir / "curves.png")
    assert_png(run_dir / "confusion.png", min_width=300)


def test_evaluate_run_matches_evaluate_checkpoint_and_records_the_weights(run, tmp_path):
    run_dir, result = run
    metrics, files = evaluate_run(run_dir, ["pgd5", "cw5"], checkpoint="best", n_samples=60, seed=1,
                                  weights="trained", out=tmp_path)
    direct = evaluate_checkpoint(run_dir / "best.pt", ["pgd5", "cw5"], n_samples=60, seed=1, weights="trained")
    for attack in ("pgd5", "cw5", WORST_CASE):
        assert metrics["attacks"][attack]["robust_acc"] == pytest.approx(direct.robust_acc[attack].tolist())
    assert metrics["attacks"][WORST_CASE]["over"] == ["pgd5", "cw5"]
    ev = metrics["evaluated"]
    assert (ev["selection"], ev["epoch"], ev["weights"], ev["weights_used"]) == ("best", result.best_epoch,
                                                                                 "trained", "trained")
    assert ev["checkpoint"] == str(run_dir / "best.pt")
    assert metrics["data"]["n_samples"] == 60 and metrics["data"]["first_n"] == 60
    # the fingerprint: every scored sample's float32 inputs then int64 label, in order (batch size irrelevant)
    test = fairdefense.data.load_dataset("digits").test
    digest = hashlib.sha256()
    for i in range(60):
        x, y = test[i]
        digest.update(x.float().numpy().tobytes() + np.int64(y).tobytes())
    assert metrics["data"]["sha256"] == digest.hexdigest()
    assert load_metrics(files["metrics.json"]) == metrics
    assert {p.name for p in tmp_path.iterdir()} == set(REPORT_FILES)
    with_ema = evaluate_run(run_dir, ["pgd5"], n_samples=60, seed=1, out=tmp_path / "ema")[0]
    assert with_ema["evaluated"]["weights_used"] == "plugin"


def test_checkpoint_resolution(run, tmp_path):
    run_dir, _ = run
    assert resolve_checkpoint(run_dir) == (run_dir / "last.pt", run_dir)
    assert resolve_checkpoint(run_dir, "best") == (run_dir / "best.pt", run_dir)
    assert resolve_checkpoint(run_dir / "best.pt") == (run_dir / "best.pt", run_dir)
    shutil.copy(run_dir / "last.pt", tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="--select-best"):
        resolve_checkpoint(tmp_path, "best")
    with pytest.raises(ConfigError, match="drop --checkpoint"):
        resolve_checkpoint(run_dir / "last.pt", "best")
    with pytest.raises(ConfigError, match="neither a run folder nor a checkpoint"):
        resolve_checkpoint(tmp_path / "nothing")


def test_cli_evaluate(run, tmp_path, capsys):
    run_dir, _ = run
    assert main(["evaluate", str(run_dir), "--attacks", "clean,pgd3", "--n-samples", "30", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pgd3" in out and "wrote" in out
    assert load_metrics(tmp_path / "metrics.json")["data"]["n_samples"] == 30
    assert main(["evaluate", str(run_dir), "--attacks", "clean", "--out", str(tmp_path)]) == 2
    assert "at least one attack" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--attacks", "pgd3,autoattack", "--autoattack-set", "apgd-ce",
                 "--n-samples", "20", "--no-progress", "--out", str(tmp_path / "aa")]) == 0
    m = load_metrics(tmp_path / "aa" / "metrics.json")
    aa = m["settings"]["attacks"]["autoattack"]
    assert (aa["version"], aa["attacks"], aa["reduced"]) == ("custom", ["apgd-ce"], False)
    assert m["attacks"][WORST_CASE]["over"] == ["pgd3", "autoattack"]
    assert "custom set apgd-ce" in (tmp_path / "aa" / "report.md").read_text()


def test_metrics_round_trip_with_an_empty_class_and_strict_json(tmp_path):
    nan = float("nan")
    report = ClassReport(
        class_names=["cat", "dog", "eel"], counts=torch.tensor([4, 2, 0]),
        clean_acc=torch.tensor([1.0, 0.5, nan], dtype=torch.float64),
        robust_acc={"pgd20": torch.tensor([0.5, 0.0, nan], dtype=torch.float64)},
    )
    m = build_metrics(report, config={"dataset": "toy", "objective": "trades", "plugins": []},
                      evaluated={"checkpoint": None, "selection": "file", "epoch": None}, eps=0.1, norm="linf", seed=0)
    assert m["run"]["strategy"] == "baseline (trades)"
    assert m["attacks"]["pgd20"]["boundary_error"] == [0.5, 0.5, None]
    assert m["attacks"]["pgd20"]["summary"]["boundary_error"]["avg"] == 0.5
    assert m["attacks"]["pgd20"]["summary"]["robust_acc"] == {"avg": 0.25, "worst": 0.0, "best": 0.5, "gap": 0.5,
                                                              "std": 0.25}
    back = report_from_metrics(load_metrics(save_metrics(m, tmp_path / "metrics.json")))
    torch.testing.assert_close(back.robust_acc["pgd20"], report.robust_acc["pgd20"], equal_nan=True)
    assert back.class_names == report.class_names and back.counts.tolist() == [4, 2, 0]
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    v1 = json.loads(json.dumps(m))
    v1["schema_version"] = 1
    del v1["stats"]
    for entry in [v1["clean"], *v1["attacks"].values()]:
        for key in ("correct", "ci", "summary_ci", "confusion"):
            entry.pop(key, None)
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    old = load_metrics(tmp_path / "v1.json")
    assert old["schema_version"] == 1
    assert old["attacks"]["pgd20"]["ci"] == m["attacks"]["pgd20"]["ci"]
    assert old["attacks"]["pgd20"]["ci"][1] == [0.0, pytest.approx(1 - 0.025 ** 0.5)]  # k = 0 of n = 2, by hand
    assert old["attacks"]["pgd20"]["ci"][2] is None and old["clean"]["correct"] == [4, 1, 0]
    assert "confusion" not in old["attacks"]["pgd20"]
    assert "Robustness report" in render_report(old)
    stale = dict(m, schema_version=0)
    (tmp_path / "old.json").write_text(json.dumps(stale))
    with pytest.raises(ConfigError, match="schema version 0"):
        load_metrics(tmp_path / "old.json")


def test_curve_values_are_average_and_worst_class_per_epoch():
    history = [
        {"epoch": 1, "train": {"robust_acc": [0.2, 0.4]}, "test": {"robust_acc": {"pgd20": [0.1, 0.5]}}},
        {"epoch": 2, "train": {"robust_acc": [0.3, 0.7]}, "val": {"robust_acc": {"pgd10": [0.6, 0.2]}}},
    ]
    series = {label: values for label, *values in _curve_series(history)}
    epochs, avg, worst = series["train (training adversarial examples)"]
    assert epochs == [1, 2] and avg == pytest.approx([30.0, 50.0]) and worst == pytest.approx([20.0, 30.0])
    assert series["test pgd20"] == [[1], [pytest.approx(30.0)], [pytest.approx(10.0)]]
    assert series["validation pgd10"] == [[2], [pytest.approx(40.0)], [pytest.approx(20.0)]]


def test_radius_is_written_for_people():
    radii = (8 / 255, 2 / 255, 0.2, 0.05, 0.123456)
    assert [eps_text(e) for e in radii] == ["8/255", "2/255", "0.2", "0.05", "0.123456"]


def test_weak_class_lines_name_where_the_errors_go():
    names = ["cat", "dog", "eel"]
    # true class (rows) -> predicted under attack: cat 1 right, 3 -> dog, 1 -> eel; dog 4 right; eel 2 right, 2 -> cat
    confusion = torch.tensor([[1, 3, 1], [0, 4, 0], [2, 0, 2]])
    counts = confusion.sum(1)
    robust = confusion.diag().double() / counts
    report = ClassReport(class_names=names, counts=counts, clean_acc=torch.ones(3, dtype=torch.float64),
                         robust_acc={"pgd20": robust}, confusion={"pgd20": confusion})
    m = build_metrics(report, config={"dataset": "toy", "plugins": []}, evaluated={"selection": "file"},
                      eps=0.1, norm="linf", seed=0)
    lines = weak_class_lines(m, "pgd20", k=2)
    assert len(lines) == 2
    assert lines[0].startswith("- **cat** (robust 20.0%, exact 95% interval 0.5-71.6%)") and "4 of its 5 samples misclassified" in lines[0]
    assert "mostly pushed to dog (3, 75% of its errors), then eel (1, 25% of its errors)." in lines[0]
    assert lines[1].startswith("- **eel** (robust 50.0%, exact 95% interval 6.8-93.2%)") and "pushed to cat (2, 100% of its errors)." in lines[1]
    assert report_from_metrics(m).confusion["pgd20"].tolist() == confusion.tolist()


def test_load_model_gives_the_trained_and_the_averaged_modules_of_the_run(run):
    run_dir, result = run
    x = fairdefense.data.load_dataset("digits").test[0][0].unsqueeze(0).repeat(4, 1, 1, 1)
    x = x + 0.01 * torch.arange(4.0).view(4, 1, 1, 1)
    with torch.no_grad():
        trained, averaged = result.model.cpu().eval()(x), result.eval_model.cpu().eval()(x)
    assert not torch.allclose(trained, averaged)  # EMA's weights differ: a swapped choice fails below
    for weights, expected in (("trained", trained), ("eval", averaged)):
        model, class_names = fairdefense.load_model(run_dir, weights=weights, device="cpu")
        assert not model.training and class_names == tuple(fairdefense.dataset_spec("digits").class_names)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected)
    loaded = fairdefense.load_model(run_dir / "last.pt", "trained", "cpu")
    assert isinstance(loaded, fairdefense.LoadedModel) and loaded.class_names[0] == class_names[0]
    with pytest.raises(ConfigError, match="weights must be 'eval' or 'trained'"):
        fairdefense.load_model(run_dir, weights="ema")


def test_json_safe_writes_nan_and_infinities_as_null_throughout():
    from fairdefense.jsonsafe import json_safe

    value = {"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"), 2)], "c": {"d": "x", "e": 0.0}}
    assert json.loads(json.dumps(json_safe(value), allow_nan=False)) == {
        "a": None, "b": [1.5, None, [None, 2]], "c": {"d": "x", "e": 0.0}}
