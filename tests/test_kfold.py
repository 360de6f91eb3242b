"""The k-fold protocol of the embedded digits: deterministic, disjoint, covering, stratified; reachable
from TrainConfig and the CLI; a fold run is evaluated on its own fold."""
import numpy as np
import pytest
import torch

import fairdefense
from fairdefense import ConfigError
from fairdefense.cli.train import _config
from fairdefense.data import kfold_indices, kfold_split, load_dataset
from fairdefense.splits import parse_fold


def test_folds_are_deterministic_disjoint_covering_and_stratified():
    y = torch.tensor([0] * 11 + [1] * 7 + [2] * 5)
    folds = kfold_indices(y, 5, seed=3)
    again = kfold_indices(y, 5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(folds, again))
    assert not all(torch.equal(a, b) for a, b in zip(folds, kfold_indices(y, 5, seed=4)))
    together = torch.cat(folds)
    assert sorted(together.tolist()) == list(range(len(y)))  # every sample exactly once
    for f in folds:
        per_class = torch.bincount(y[f], minlength=3).tolist()
        assert per_class[0] in (2, 3) and per_class[1] in (1, 2) and per_class[2] == 1  # floor/ceil of n_c / 5
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]  # 23 samples: sizes differ by at most one
    train, test = kfold_split(y, "2/5", seed=3)
    assert torch.equal(test, folds[2])
    assert sorted(torch.cat([train, test]).tolist()) == list(range(len(y)))
    assert not set(train.tolist()) & set(test.tolist())


def test_bad_folds_are_refused_with_the_form():
    for bad in ("5/5", "-1/5", "1/1", "a/5", "3"):
        with pytest.raises(ConfigError, match="I/K"):
            parse_fold(bad)
    with pytest.raises(ConfigError, match="fewer than the 4 folds"):
        kfold_indices(torch.tensor([0, 0, 0, 1, 1, 1, 1]), 4)
    with pytest.raises(ConfigError, match="no k-fold protocol"):
        load_dataset("cifar10", fold="0/5", download=False)


def test_digits_folds_cover_all_1797_images_once():
    full = load_dataset("digits")
    assert (len(full.train), len(full.test)) == (1438, 359)
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    seen = []
    for i in range(5):
        bundle = load_dataset("digits", fold=f"{i}/5")
        assert len(bundle.train) + len(bundle.test) == 1797
        assert len(bundle.test) in (359, 360)  # 1,797 = 2 x 360 + 3 x 359
        test_x = bundle.test.tensors[0].flatten(1)
        # locate each test image among the 1,797 (the digits have a few duplicate images: match by index order)
        rows = np.flatnonzero(np.isin(np.arange(1797), kfold_split(torch.tensor(load_digits().target), f"{i}/5")[1]))
        assert torch.equal(test_x, images[rows])
        seen.extend(rows.tolist())
        n_c = np.bincount(load_digits().target)  # 178, 182, 177, 183, 181, 182, 181, 179, 174, 180
        got = bundle.test.tensors[1].bincount().numpy()
        assert ((got == n_c // 5) | (got == -(-n_c // 5))).all()  # floor or ceil of n_c / 5 per class
    assert sorted(seen) == list(range(1797))


def test_a_fold_run_trains_and_is_evaluated_on_its_fold(tmp_path):
    from fairdefense.cli import build_parser

    args = build_parser().parse_args(["train", "--fold", "1/5"])
    assert _config(args).fold == "1/5"
    result = fairdefense.train(epochs=1, attack_steps=1, batch_size=256, device="cpu", eval_attacks=("pgd2",),
                               fold="3/5", progress=False, out=str(tmp_path / "run"))
    fold_test = load_dataset("digits", fold="3/5").test
    assert int(result.report.counts.sum()) == len(fold_test) == 359
    from fairdefense.reports import evaluate_run

    metrics, _ = evaluate_run(tmp_path / "run", ["pgd2"], write=False)
    assert metrics["data"]["fold"] == "3/5" and metrics["run"]["fold"] == "3/5"
    assert metrics["data"]["counts"] == torch.bincount(fold_test.tensors[1], minlength=10).tolist()
    other, _ = evaluate_run(tmp_path / "run", ["pgd2"], write=False, n_samples=100)
    assert other["data"]["sha256"] != metrics["data"]["sha256"]
