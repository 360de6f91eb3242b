"""FAAL: the closed-form DRO solver against cvxpy and by hand, the reweight hook, end-to-end runs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

import fairdefense
from fairdefense.cli import main as cli_main
from fairdefense_plugins.faal import FAAL, class_margin_sums, class_objective, solve_dro_weights

FAST = dict(epochs=1, attack_steps=2, progress=False, eval_attacks=("pgd2",), device="cpu")


def kl_uniform(p: torch.Tensor) -> float:
    c = p.shape[-1]
    return float((-(1.0 / c) * torch.log(c * p.double())).sum())


def cvxpy_solve(a: np.ndarray, r: float) -> tuple[np.ndarray, float]:
    """The authors' formulation: max a.p, sum p = 1, p >= 0, sum kl_div(U, p) <= r."""
    cp = pytest.importorskip("cvxpy")
    c = len(a)
    p = cp.Variable(c, nonneg=True)
    problem = cp.Problem(cp.Maximize(a @ p), [cp.sum(p) == 1, cp.sum(cp.kl_div(np.full(c, 1.0 / c), p)) <= r])
    problem.solve()
    return p.value, problem.value


def random_a(num_classes: int, seed: int) -> torch.Tensor:
    """a_c = n_c * m_c for a batch of 128 with some classes absent and margins of both signs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (128,), generator=g)
    y = y[y % 3 != seed % 3] if num_classes > 2 else y  # drop about a third of the classes
    margins = torch.rand(len(y), generator=g, dtype=torch.float64) * 2 - 1
    return torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, margins)


@pytest.mark.parametrize("num_classes", [2, 3, 10, 100])
@pytest.mark.parametrize("r", [0.01, 0.05, 0.5, 2.0])
def test_solver_matches_cvxpy(num_classes, r):
    a = random_a(num_classes, seed=num_classes + int(100 * r))
    if num_classes > 2:
        assert (a == 0).any() and (a < 0).any(), "the instance must have absent classes and negative sums"
    p = solve_dro_weights(a, r)
    p_ref, value_ref = cvxpy_solve(a.numpy(), r)
    assert float(a @ p) == pytest.approx(value_ref, abs=1e-4)
    assert kl_uniform(p) == pytest.approx(r, abs=1e-5)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and bool((p > 0).all())
    assert np.allclose(p.numpy(), p_ref, atol=1e-3)


@pytest.mark.parametrize(
    "a",
    [[3.0, 3.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [5.0, 5.0 - 1e-9, -5.0], [-40.0, -60.0, -1.0, -1.0, -80.0]],
)
def test_solver_ties_and_near_ties(a):
    a = torch.tensor(a, dtype=torch.float64)
    p = solve_dro_weights(a, 0.3)
    _, value_ref = cvxpy_solve(a.numpy(), 0.3)
    assert float(a @ p) == pytest.approx(value_ref, abs=1e-4)
    assert kl_uniform(p) == pytest.approx(0.3, abs=1e-5)
    tied = a == a.max()
    assert torch.allclose(p[tied], p[tied][0].expand(int(tied.sum())), rtol=1e-12)


@pytest.mark.parametrize("r", [0.01, 0.5, 3.0])
def test_two_classes_closed_form(r):
    # C = 2: KL(U||p) = -(log 2p + log 2(1-p)) / 2 = r  =>  p(1-p) = exp(-2r)/4
    p = solve_dro_weights(torch.tensor([0.7, -2.0]), r)
    expected = (1 + math.sqrt(1 - math.exp(-2 * r))) / 2
    assert p.dtype == torch.float32
    assert float(p[0]) == pytest.approx(expected, abs=1e-6)
    assert float(p[1]) == pytest.approx(1 - expected, abs=1e-6)


def test_uniform_when_radius_zero_or_margins_equal():
    a = torch.tensor([4.0, -1.0, 0.0, 2.5])
    assert torch.equal(solve_dro_weights(a, 0.0), torch.full((4,), 0.25))
    assert torch.equal(solve_dro_weights(a, -1.0), torch.full((4,), 0.25))
    for value in (0.0, -3.0, 7.0):
        assert torch.equal(solve_dro_weights(torch.full((5,), value), 0.5), torch.full((5,), 0.2))


def test_solver_batched_rows_are_independent_problems():
    rows = torch.stack([random_a(10, seed) for seed in range(4)] + [torch.zeros(10, dtype=torch.float64)])
    p = solve_dro_weights(rows, 0.5)
    for row, p_row in zip(rows, p):
        assert torch.equal(p_row, solve_dro_weights(row, 0.5))
    assert torch.equal(p[-1], torch.full((10,), 0.1, dtype=torch.float64))


def test_solver_no_gradient_through_weights():
    a = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    assert not solve_dro_weights(a, 0.5).requires_grad


# --------------------------------------------------------------------- the hook
def hand_weights(logits: list[list[float]], y: list[int], num_classes: int, r: float) -> list[float]:
    """Margins, class sums and p computed with plain Python and scipy's brentq (independent of the plugin)."""
    a = [0.0] * num_classes
    for row, label in zip(logits, y):
        z = [math.exp(v) for v in row]
        prob = [v / sum(z) for v in z]
        a[label] += max(prob[j] for j in range(num_classes) if j != label) - prob[label]

    def p_of(eta: float) -> list[float]:
        u = [1.0 / (eta - ac) for ac in a]
        return [v / sum(u) for v in u]

    def excess_kl(eta: float) -> float:
        return sum(-math.log(num_classes * pc) / num_classes for pc in p_of(eta)) - r

    top = max(a)
    p = p_of(brentq(excess_kl, top + 1e-12, top + 1e6, xtol=1e-14))
    return [num_classes * p[label] for label in y]


def make_batch(y: torch.Tensor, num_classes: int, objective: fairdefense.Objective, epoch: int = 0) -> fairdefense.BatchInfo:
    config = fairdefense.TrainConfig()
    run = fairdefense.RunInfo(num_classes, [str(c) for c in range(num_classes)], config, torch.device("cpu"))
    x = torch.zeros(len(y), 2)
    return fairdefense.BatchInfo(epoch, 0, 0, x, y, torch.nn.Identity(), objective, 0.1, 0.025, run)


def test_reweight_hook_against_hand_computation():
    logits = [[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.0], [1.0, 0.0, 0.5], [0.2, -0.3, 2.5]]
    y = [0, 0, 1, 0, 1]  # class 2 absent, margins of both signs
    logits_adv, labels = torch.tensor(logits), torch.tensor(y)
    objective = fairdefense.TRADES(beta=6.0)
    natural = torch.tensor([0.3, 1.2, 0.4, 0.9, 2.0])
    robust = torch.tensor([0.05, 0.4, 0.2, 0.1, 0.7])
    outputs = fairdefense.BatchOutputs(
        x_natural=torch.zeros(5, 2), x_adv=torch.zeros(5, 2), logits_clean=logits_adv, logits_natural=logits_adv,
        logits_adv=logits_adv, natural=natural, robust=robust, eps=torch.full((5,), 0.1),
    )
    weights = FAAL(r=0.4).reweight(make_batch(labels, 3, objective), outputs)
    expected = hand_weights(logits, y, 3, 0.4)
    assert torch.allclose(weights.robust, torch.tensor(expected), atol=1e-5)
    assert torch.equal(weights.natural, weights.robust)
    # the trainer's reduction gives the paper's (C / B) sum_i p_{y_i} (CE_i + beta KL_i)
    loss = objective.reduce(outputs, weights.natural, weights.robust)
    by_hand = sum(w / 3 * (n + 6.0 * k) for w, n, k in zip(expected, natural.tolist(), robust.tolist())) * 3 / 5
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


def test_class_margin_sums_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]]))
    a = class_margin_sums(logits, torch.tensor([0, 2, 0]), 3)
    assert torch.allclose(a, torch.tensor([(0.2 - 0.7) + (0.4 - 0.3), 0.0, 0.5 - 0.4]), atol=1e-6)
    half = class_margin_sums(logits.bfloat16(), torch.tensor([0, 2, 0]), 3)  # mixed precision: sums in float32
    assert half.dtype == torch.float32 and torch.allclose(half, a, atol=2e-2)


def test_paper_objective_uses_class_means_and_minus_one_for_absent_classes():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.5, 0.4, 0.0], [0.3, 0.3, 0.4, 0.0]]) + 1e-30)
    y = torch.tensor([0, 2, 0])
    means = torch.tensor([((0.2 - 0.7) + (0.4 - 0.3)) / 2, -1.0, 0.5 - 0.4, -1.0])
    torch.testing.assert_close(class_objective(logits, y, 4, "paper"), means, atol=1e-6, rtol=0)
    sums = torch.tensor([(0.2 - 0.7) + (0.4 - 0.3), 0.0, 0.5 - 0.4, 0.0])
    torch.testing.assert_close(class_objective(logits, y, 4, "code"), sums, atol=1e-6, rtol=0)
    batch = make_batch(y, 4, fairdefense.PGDAT())
    outputs = fairdefense.BatchOutputs(
        x_natural=torch.zeros(3, 2), x_adv=torch.zeros(3, 2), logits_clean=None, logits_natural=None,
        logits_adv=logits, natural=None, robust=torch.ones(3), eps=torch.full((3,), 0.1),
    )
    for form, a in (("paper", means), ("code", sums)):
        w = FAAL(r=0.5, objective=form).reweight(batch, outputs).robust
        torch.testing.assert_close(w, 4 * solve_dro_weights(a, 0.5)[y], atol=1e-5, rtol=0)
    assert not torch.allclose(FAAL(objective="paper").reweight(batch, outputs).robust,
                              FAAL().reweight(batch, outputs).robust, atol=1e-3)


def test_schedule_and_begin():
    plugin = FAAL(r=0.25, begin=100, late_epoch=150, r_late=0.5)
    assert [plugin.radius(e) for e in (0, 99, 100, 149, 150, 199)] == [None, None, 0.25, 0.25, 0.5, 0.5]
    batch = make_batch(torch.tensor([0, 1]), 2, fairdefense.PGDAT(), epoch=99)
    outputs = fairdefense.BatchOutputs(
        x_natural=torch.zeros(2, 2), x_adv=torch.zeros(2, 2), logits_clean=None, logits_natural=None,
        logits_adv=torch.tensor([[1.0, 0.0], [2.0, 0.0]]), natural=None, robust=torch.ones(2), eps=torch.full((2,), 0.1),
    )
    assert plugin.reweight(batch, outputs) is None
    batch.epoch = 150
    w = plugin.reweight(batch, outputs).robust
    expected = (1 + math.sqrt(1 - math.exp(-1.0))) / 2  # class 1 has the larger margin; r = 0.5
    assert torch.allclose(w, torch.tensor([2 * (1 - expected), 2 * expected]), atol=1e-6)


@pytest.mark.parametrize(
    "options, match",
    [({"r": -0.1}, "'r'"), ({"begin": -1}, "'begin'"), ({"late_epoch": 150}, "go together"), ({"r_late": "x"}, "r_late")],
)
def test_option_errors(options, match):
    with pytest.raises(fairdefense.PluginOptionError, match=match):
        FAAL.from_options(options)


# ----------------------------------------------------------------- end to end
def test_train_python_at_and_uniform_radius_is_the_baseline():
    # r = 0 gives weights of exactly one, i.e. the baseline update; the default r = 0.5 changes it
    result = fairdefense.train(plugins=["faal"], **FAST)
    assert result.config.plugins == ("faal",) and result.config.objective == "at"
    assert len(result.history) == 1 and math.isfinite(result.history[-1]["loss"])
    baseline = fairdefense.train(**FAST).model.state_dict()
    uniform = fairdefense.train(plugins=[FAAL(r=0.0)], **FAST).model.state_dict()
    weighted = result.model.state_dict()
    assert all(torch.equal(baseline[k], uniform[k]) for k in baseline)
    assert any(not torch.equal(baseline[k], weighted[k]) for k in baseline if weighted[k].is_floating_point())


def test_train_python_trades():
    result = fairdefense.train(plugins=["faal"], objective="trades", **FAST)
    assert result.config.plugins == ("faal",) and result.config.objective == "trades"
    assert len(result.history) == 1 and math.isfinite(result.history[-1]["loss"])
    assert result.report is not None


def test_train_cli(tmp_path):
    code = cli_main(["train", "--plugin", "faal", "-o", "faal.r=0.05", "--epochs", "1", "--attack-steps", "2",
                     "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    assert code == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["plugins"] == ["faal"] and config["plugin_options"]["faal"]["r"] == 0.05
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["loss"])
    assert (tmp_path / "last.pt").exists()
