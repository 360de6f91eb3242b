"""Per-class clean/boundary/robust error against a hand-computed confusion table."""
import math

import pytest
import torch
from torch import nn

from fairdefense import ClassReport, ClassStats, evaluate, pgd
from fairdefense.metrics import WORST_CASE, per_class_accuracy, summarize


def test_per_class_metrics_match_a_hand_computed_table():
    # class 0: 4 samples, 3 clean-correct, 1 robust; class 1: 2 samples, 2 clean, 2 robust;
    # class 2: 4 samples, 2 clean, 1 robust (one sample wrong clean but right under attack)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    clean = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1, 0, 0]).bool()
    robust = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 1, 0]).bool()
    report = ClassReport(
        class_names=["a", "b", "c"], counts=torch.tensor([4, 2, 4]),
        clean_acc=per_class_accuracy(y, clean, 3), robust_acc={"pgd": per_class_accuracy(y, robust, 3)},
    )
    torch.testing.assert_close(report.clean_error, torch.tensor([0.25, 0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(report.robust_error("pgd"), torch.tensor([0.75, 0.0, 0.75], dtype=torch.float64))
    torch.testing.assert_close(report.boundary_error("pgd"), torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(report.robust_error(), report.clean_error + report.boundary_error())
    s = report.summary()
    assert s["pgd/robust_error"]["avg"] == pytest.approx(0.5)
    assert s["pgd/robust_error"]["worst"] == pytest.approx(0.75)
    assert s["pgd/robust_error"]["best"] == pytest.approx(0.0)
    assert s["pgd/robust_error"]["gap"] == pytest.approx(0.75)
    assert s["pgd/robust_error"]["std"] == pytest.approx(math.sqrt(((0.25**2) * 2 + 0.5**2) / 3))
    assert s["pgd/robust_acc"]["worst"] == pytest.approx(0.25)
    assert s["clean_error"]["worst"] == pytest.approx(0.5)
    assert ClassReport.from_dict(report.to_dict()).summary() == s


def test_summarize_skips_empty_classes():
    s = summarize(torch.tensor([0.5, float("nan"), 1.0], dtype=torch.float64), higher_is_worse=False)
    assert (s["avg"], s["worst"], s["best"]) == (0.75, 0.5, 1.0)


def test_class_stats_count_from_logits():
    stats = ClassStats.zeros(3)
    y = torch.tensor([0, 0, 1, 2])
    adv = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 1.0, 0]])
    stats.update(y, adv, adv)
    stats.update(torch.tensor([2]), torch.tensor([[0, 0, 1.0]]))
    assert stats.counts.tolist() == [2, 1, 2]
    torch.testing.assert_close(stats.robust_acc, torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))


def test_evaluate_worst_case_row_and_boundary_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(30, 1, 2, 2), torch.randint(0, 3, (30,))
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    report = evaluate(model, batches, ["a", "b", "c"], ["pgd5", "cw5"], eps=0.2)
    # the same attacks by hand: evaluate draws the random starts from one generator seeded 0,
    # batch by batch, attack by attack
    generator = torch.Generator().manual_seed(0)
    clean_hits, adv_hits, counts = [0] * 3, {"pgd5": [0] * 3, "cw5": [0] * 3}, [0] * 3
    for xb, yb in batches:
        clean_ok = (model(xb).argmax(1) == yb).tolist()
        adv_ok = {}
        for attack, loss in (("pgd5", "ce"), ("cw5", "cw")):
            x_adv = pgd(model, xb, yb, 0.2, 0.05, 5, loss=loss, generator=generator)
            adv_ok[attack] = (model(x_adv).argmax(1) == yb).tolist()
        for i, label in enumerate(yb.tolist()):
            counts[label] += 1
            clean_hits[label] += clean_ok[i]
            for attack in adv_ok:
                adv_hits[attack][label] += adv_ok[attack][i]
    for attack in ("pgd5", "cw5"):
        assert (report.robust_acc[WORST_CASE] <= report.robust_acc[attack] + 1e-12).all()
        boundary = [(clean_hits[c] - adv_hits[attack][c]) / counts[c] for c in range(3)]
        torch.testing.assert_close(report.boundary_error(attack), torch.tensor(boundary, dtype=torch.float64))
    assert report.counts.tolist() == counts
    assert report.counts.sum() == 30
    # confusion rows hold each class's samples; the diagonal is the robust count; it survives to_dict/from_dict
    for attack in ("pgd5", "cw5"):
        m = report.confusion[attack]
        assert m.sum(1).tolist() == torch.bincount(y, minlength=3).tolist()
        torch.testing.assert_close(m.diag().double() / m.sum(1).double(), report.robust_acc[attack])
    assert ClassReport.from_dict(report.to_dict()).confusion["cw5"].tolist() == report.confusion["cw5"].tolist()
