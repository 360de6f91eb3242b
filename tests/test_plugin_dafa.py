"""DAFA plugin: the class-similarity statistic (ClassStats), the weight formulas against hand-computed
matrices, radii/steps and loss weights per objective, the warm-up, state, and end to end with exact resumes."""
from __future__ import annotations

import itertools
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairdefense
from fairdefense.attacks import pgd
from fairdefense.cli import main as cli_main
from fairdefense_plugins.dafa import DAFA, dafa_weights

EPS, STEP, BETA = 0.2, 0.05, 6.0
NAMES = ["a", "b", "c"]

# diag 0.5 < 0.6 < 0.8: class 0 is the hardest, class 1 the easiest
P = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], dtype=torch.float64)
# classes 0 and 1 tie (0.6 = 0.6), class 2 is the easiest
P_TIE = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)


def run_info(**config) -> fairdefense.RunInfo:
    return fairdefense.RunInfo(3, NAMES, fairdefense.TrainConfig(**config), torch.device("cpu"))


def epoch_info(epoch: int, num_epochs: int = 10) -> fairdefense.EpochInfo:
    return fairdefense.EpochInfo(epoch, num_epochs, nn.Linear(2, 3), run_info(objective="trades"), 0.1)


def batch_info(y: torch.Tensor, objective: fairdefense.Objective, x: torch.Tensor | None = None) -> fairdefense.BatchInfo:
    x = torch.zeros(len(y), 2) if x is None else x
    return fairdefense.BatchInfo(1, 0, 0, x, y, nn.Linear(2, 3), objective, EPS, STEP, run_info())


def stats_with_mean(similarity: torch.Tensor, per_class: int = 4) -> fairdefense.ClassStats:
    """ClassStats whose per-class mean softmax is ``similarity`` (logits = log-probabilities)."""
    stats = fairdefense.ClassStats.zeros(len(similarity))
    y = torch.arange(len(similarity)).repeat_interleave(per_class)
    stats.update(y, similarity.float().log()[y])
    return stats


def with_weights(weights, **options) -> DAFA:
    dafa = DAFA(**options)
    dafa.load_plugin_state({"similarity": torch.eye(len(weights)), "weights": torch.tensor(weights)})
    return dafa


# ------------------------------------------------------------------ the statistic
def test_class_stats_sum_softmax_rows_by_true_class():
    stats = fairdefense.ClassStats.zeros(3)
    ln = torch.log
    y = torch.tensor([0, 0, 2])
    # logits = log p + constant: softmax recovers p
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
    stats.update(y, ln(probs) + 3.0, torch.zeros(3, 3))  # the clean logits do not enter the sums
    stats.update(torch.tensor([2]), ln(torch.tensor([[0.5, 0.1, 0.4]])))  # PGD-AT: no clean logits
    expected = torch.tensor([[0.8, 0.8, 0.4], [0.0, 0.0, 0.0], [0.75, 0.35, 0.9]])
    torch.testing.assert_close(stats.robust_prob_sums, expected)
    assert stats.robust_prob_sums.dtype == torch.float32
    mean = stats.robust_prob_mean
    torch.testing.assert_close(mean[0], torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64))
    torch.testing.assert_close(mean[2], torch.tensor([0.375, 0.175, 0.45], dtype=torch.float64))
    assert torch.isnan(mean[1]).all()  # class without samples
    assert stats.counts.tolist() == [2, 0, 2] and stats.robust_correct.tolist() == [1, 0, 1]


def test_class_stats_built_by_hand_gain_the_sums_on_update():
    stats = fairdefense.ClassStats(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    assert stats.robust_prob_mean is None
    stats.update(torch.tensor([1]), torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16))
    torch.testing.assert_close(stats.robust_prob_sums, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))


# ----------------------------------------------------------------- the weights
def test_current_formula_by_hand():
    # W0 = 1 + P01 P11 + P02 P22 = 1 + .24 + .12; W1 = 1 - P01 P11 - P21 P11 = 1 - .24 - .16;
    # W2 = 1 + P21 P11 - P02 P22 = 1 + .16 - .12
    torch.testing.assert_close(dafa_weights(P, 1.0), torch.tensor([1.36, 0.60, 1.04], dtype=torch.float64))
    torch.testing.assert_close(dafa_weights(P, 1.5), torch.tensor([1.54, 0.40, 1.06], dtype=torch.float64))
    assert dafa_weights(P, 0.0).tolist() == [1.0, 1.0, 1.0]


def test_legacy_formula_by_hand():
    # the easier class loses its own confusion: W1 = 1 - P10 P00 - P12 P22 = 1 - .05 - .06; W2 = 1 + .16 - P20 P00
    weights = dafa_weights(P, 1.0, formula="legacy")
    torch.testing.assert_close(weights, torch.tensor([1.36, 0.89, 1.06], dtype=torch.float64))
    assert abs(weights.sum().item() - 3.31) < 1e-12  # no longer sums to C


def test_ties_subtract_as_the_code_or_skip_as_the_paper():
    # tie between 0 and 1: the code subtracts for both (P10 P00 = .12 from W0, P01 P11 = .18 from W1)
    code = dafa_weights(P_TIE, 1.0, ties="subtract")
    torch.testing.assert_close(code, torch.tensor([0.96, 0.98, 0.76], dtype=torch.float64))
    paper = dafa_weights(P_TIE, 1.0, ties="skip")
    torch.testing.assert_close(paper, torch.tensor([1.08, 1.16, 0.76], dtype=torch.float64))
    assert abs(code.sum().item() - 2.70) < 1e-12 and abs(paper.sum().item() - 3.0) < 1e-12
    # without ties the two rules agree
    torch.testing.assert_close(dafa_weights(P, 1.0, ties="skip"), dafa_weights(P, 1.0))


def pairwise_reference(p: torch.Tensor, lam: float) -> torch.Tensor:
    """Alg. 2 as pair transfers: each unordered pair moves lam P_he P_ee from the easier e to the harder h."""
    w = [1.0] * len(p)
    for i, j in itertools.combinations(range(len(p)), 2):
        if p[i, i] == p[j, j]:
            continue
        h, e = (i, j) if p[i, i] < p[j, j] else (j, i)
        amount = lam * p[h, e].item() * p[e, e].item()
        w[h] += amount
        w[e] -= amount
    return torch.tensor(w, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_current_formula_is_pair_transfers_and_sums_to_c(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(10, 10, generator=g, dtype=torch.float64), dim=1)
    for lam in (1.0, 1.5):
        weights = dafa_weights(p, lam)
        torch.testing.assert_close(weights, pairwise_reference(p, lam))
        assert abs(weights.sum().item() - 10) < 1e-9


# ------------------------------------------------------------- warm-up and state
def test_warm_up_statistic_from_epoch_tau_then_fixed():
    dafa = DAFA(tau=3)
    assert dafa.configure(config=fairdefense.TrainConfig()) == {"objective": "trades"}
    assert dafa.configure(config=fairdefense.TrainConfig(objective="at")) is None
    y = torch.tensor([0, 1, 2])
    for epoch in (0, 1):  # warm-up: uniform weights, nothing read, nothing logged
        assert dafa.on_epoch_end(epoch=epoch_info(epoch), train_stats=stats_with_mean(P_TIE)) is None
        assert dafa.weights is None and dafa.plugin_state() is None
        assert dafa.remargin(batch=batch_info(y, fairdefense.TRADES(BETA))) is None
        assert dafa.reweight(batch=batch_info(y, fairdefense.TRADES(BETA))) is None
    logged = dafa.on_epoch_end(epoch=epoch_info(2), train_stats=stats_with_mean(P))  # the tau-th epoch (1-based)
    torch.testing.assert_close(dafa.weights, torch.tensor([1.36, 0.60, 1.04], dtype=torch.float64))
    assert logged["weights"] is dafa.weights and logged["similarity"] is dafa.similarity
    torch.testing.assert_close(dafa.similarity, P)
    dafa.on_epoch_end(epoch=epoch_info(3), train_stats=stats_with_mean(P_TIE))  # fixed afterwards
    torch.testing.assert_close(dafa.weights, torch.tensor([1.36, 0.60, 1.04], dtype=torch.float64))
    restored = DAFA(tau=3)
    restored.load_plugin_state(dafa.plugin_state())
    assert torch.equal(restored.weights, dafa.weights) and torch.equal(restored.similarity, dafa.similarity)


def test_weights_at_or_below_zero_and_missing_classes_are_refused():
    crowded = torch.tensor([[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1]], dtype=torch.float64)
    assert dafa_weights(crowded, 1.0)[1] < 0  # 1 - 0.9 - 0.9
    with pytest.raises(fairdefense.ConfigError, match=r"<= 0 for b: -0.800.*dafa.lam"):
        DAFA(tau=1).on_epoch_end(epoch=epoch_info(0), train_stats=stats_with_mean(crowded))
    stats = fairdefense.ClassStats.zeros(3)
    stats.update(torch.tensor([0, 2]), torch.zeros(2, 3))
    with pytest.raises(fairdefense.ConfigError, match=r"\['b'\] had no training sample in epoch 1"):
        DAFA(tau=1).on_epoch_end(epoch=epoch_info(0), train_stats=stats)


def test_option_errors_and_the_warm_up_longer_than_the_run():
    with pytest.raises(fairdefense.PluginOptionError, match="'tau' must be >= 1"):
        DAFA(tau=0)
    with pytest.raises(fairdefense.PluginOptionError, match="'lam'"):
        DAFA.from_options({"lam": "-1"})
    with pytest.raises(fairdefense.PluginOptionError, match="'formula'"):
        DAFA.from_options({"formula": "paper"})
    dafa = DAFA()
    with pytest.warns(UserWarning, match=r"tau=70 is not shorter than the run's 30 epochs.*dafa.tau=19"):
        dafa.on_epoch_start(epoch=epoch_info(0, num_epochs=30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DAFA(tau=29).on_epoch_start(epoch=epoch_info(0, num_epochs=30))


# ------------------------------------------------------- radius, step, loss weights
def test_radius_and_step_scale_per_class():
    y = torch.tensor([2, 0, 1])
    for objective in (fairdefense.TRADES(BETA), fairdefense.PGDAT()):
        margins = with_weights([0.5, 1.0, 1.5]).remargin(batch=batch_info(y, objective))
        torch.testing.assert_close(margins.eps, torch.tensor([0.1, 0.2, 0.3]))
        torch.testing.assert_close(margins.step, torch.tensor([0.025, 0.05, 0.075]))
    # the code's PGD-AT: radius min(W eps + step, eps), step (W + 1) step; TRADES is unaffected by the option
    code = with_weights([0.5, 1.0, 1.5], at_radius="code")
    margins = code.remargin(batch=batch_info(y, fairdefense.PGDAT()))
    torch.testing.assert_close(margins.eps, torch.tensor([0.15, 0.2, 0.2]))
    torch.testing.assert_close(margins.step, torch.tensor([0.075, 0.1, 0.125]))
    torch.testing.assert_close(code.remargin(batch=batch_info(y, fairdefense.TRADES(BETA))).eps, torch.tensor([0.1, 0.2, 0.3]))
    # ... and during the warm-up, the code's W = 1 attack: radius eps, two unscaled steps per iteration
    warm_up = DAFA(at_radius="code").remargin(batch=batch_info(y, fairdefense.PGDAT()))
    torch.testing.assert_close(warm_up.eps, torch.full((3,), EPS))
    torch.testing.assert_close(warm_up.step, torch.full((3,), 2 * STEP))
    assert DAFA(at_radius="code").remargin(batch=batch_info(y, fairdefense.TRADES(BETA))) is None
    assert DAFA().remargin(batch=batch_info(y, fairdefense.PGDAT())) is None


def madry_loop_of_the_code(model, x, y, w, eps, step, steps):
    """``losses.madry_loss``'s attack (without its random start): a W-scaled step projected on the
    W eps box, then an unscaled step projected on the eps box, then [0, 1]."""
    x_adv = x.clone()
    scale = w[y].view(-1, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)[0].sign()
        x_adv = x_adv.detach() + scale * step * grad
        x_adv = torch.min(torch.max(x_adv, x - scale * eps), x + scale * eps)
        x_adv = x_adv + step * grad
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_code_radius_reproduces_the_codes_pgd_at_iterates():
    """With a gradient sign that never changes (binary linear model), the single projected step of
    radius min(W eps + step, eps) and step (W + 1) step gives the code's two-projection iterates."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.rand(6, 4) * 0.5 + 0.25, torch.tensor([0, 1, 0, 1, 0, 1])
    w = torch.tensor([0.4, 1.3])
    dafa = with_weights(w.tolist(), at_radius="code")
    margins = dafa.remargin(batch=fairdefense.BatchInfo(
        0, 0, 0, x, y, model, fairdefense.PGDAT(), 0.1, 0.02, fairdefense.RunInfo(2, ["a", "b"], fairdefense.TrainConfig(), torch.device("cpu"))))
    ours = pgd(model, x, y, margins.eps[y], margins.step[y], 8, random_start="none", clip=(0.0, 1.0))
    torch.testing.assert_close(ours, madry_loop_of_the_code(model, x, y, w, 0.1, 0.02, 8))


def test_w_multiplies_trades_natural_ce_and_at_adversarial_ce():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    x, x_adv = torch.randn(5, 2), torch.randn(5, 2)
    y = torch.tensor([0, 1, 2, 1, 0])
    weights = torch.tensor([0.5, 1.0, 2.0])
    dafa = with_weights(weights.tolist())
    # TRADES (the code's trades_loss): mean(W_y CE(f(x), y)) + beta * KL(f(x) || f(x')) batchmean, KL unweighted
    trades = fairdefense.TRADES(BETA)
    lw = dafa.reweight(batch=batch_info(y, trades, x))
    assert lw.robust is None
    terms = trades.terms(model, x, y, x_adv)
    logits, logits_adv = model(x), model(x_adv)
    expected = (F.cross_entropy(logits, y, reduction="none") * weights[y]).mean() + BETA * F.kl_div(
        F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="sum") / len(y)
    torch.testing.assert_close(trades.reduce(terms, lw.natural, lw.robust), expected)
    # PGD-AT (the code's madry_loss): mean(W_y CE(f(x'), y))
    at = fairdefense.PGDAT()
    lw = dafa.reweight(batch=batch_info(y, at, x))
    assert lw.natural is None
    expected = (F.cross_entropy(logits_adv, y, reduction="none") * weights[y]).mean()
    torch.testing.assert_close(at.reduce(at.terms(model, x, y, x_adv), lw.natural, lw.robust), expected)


# ------------------------------------------------------------------ composition
def resolve(*plugins, options=None):
    from fairdefense.data.digits import DIGITS_DEFAULTS
    from fairdefense.trainer import resolve_run

    config = fairdefense.TrainConfig(plugins=plugins, plugin_options=options or {})
    return resolve_run(config, [str(i) for i in range(10)], DIGITS_DEFAULTS, (0.0, 1.0))[0]


@pytest.mark.parametrize("other, options", [("cfa", {}), ("frl", {}), ("frl", {"frl": {"variant": "rm"}})])
def test_refused_with_another_remargin(other, options):
    with pytest.raises(fairdefense.PluginError, match="exclusive hook 'remargin'"):
        resolve("dafa", other, options=options)


@pytest.mark.parametrize("plugins, options, objective", [
    (("dafa", "ema"), {}, "trades"),
    (("dafa", "faal"), {}, "trades"),
    (("dafa", "cfa"), {"cfa": {"ccm": "false"}}, "trades"),
    (("dafa", "frl"), {"frl": {"variant": "rw"}}, "trades"),
])
def test_accepted_combinations(plugins, options, objective):
    assert resolve(*plugins, options=options).objective == objective


# ------------------------------------------------------------------- end to end
class Spy(fairdefense.FairnessPlugin):
    """Records the radius each sample was attacked with, per epoch."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.radii = []

    def extra_loss(self, batch, outputs):
        self.radii.append((batch.epoch, batch.y.clone(), outputs.eps.clone()))


def test_trains_from_cli_and_python_and_resumes_exactly_across_the_warm_up(tmp_path):
    """tau = 2: CLI run of 1 epoch (warm-up), resumed to 2 (statistic, weights) and to 3 (weighted),
    equals the uninterrupted 3-epoch Python run bit for bit; the weights come from epoch 2's logits."""
    settings = dict(epochs=3, attack_steps=2, schedule="constant", batch_size=256, eval_attacks=("pgd2",))
    with pytest.warns(UserWarning, match="tau=2 is not shorter"):
        code = cli_main(["train", "--plugin", "dafa", "-o", "dafa.tau=2", "--epochs", "1", "--attack-steps", "2",
                         "--schedule", "constant", "--batch-size", "256", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    with pytest.warns(UserWarning, match="tau=2 is not shorter than the run's 2"):
        fairdefense.resume(tmp_path / "last.pt", epochs=2, progress=False)  # resumes inside the warm-up
    state = torch.load(tmp_path / "last.pt", weights_only=True)["plugins"]["dafa"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("plugins" in line and "dafa" in line["plugins"]) for line in lines] == [False, True]
    torch.testing.assert_close(torch.tensor(lines[1]["plugins"]["dafa"]["weights"], dtype=torch.float64), state["weights"])
    resumed = fairdefense.resume(tmp_path / "last.pt", epochs=3, progress=False)  # resumes after it

    dafa, spy = DAFA(tau=2), Spy()
    straight = fairdefense.train(plugins=[dafa, spy], progress=False, **settings)
    assert straight.config.objective == "trades"
    torch.testing.assert_close(dafa.weights, state["weights"])
    assert abs(dafa.weights.sum().item() - 10) < 1e-6
    # radius W_y eps from the third epoch; the base radius before
    for epoch, y, eps in spy.radii:
        expected = torch.full_like(eps, 0.2) if epoch < 2 else (0.2 * dafa.weights).float()[y]
        torch.testing.assert_close(eps, expected)
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_come_from_the_warm_up_epochs_training_logits():
    """An independent accumulation of softmax(logits_adv) in the tau-th epoch gives DAFA's similarity."""

    class Recorder(fairdefense.FairnessPlugin):
        name = "recorder"

        def __init__(self):
            super().__init__()
            self.sums, self.counts = torch.zeros(10, 10, dtype=torch.float64), torch.zeros(10)

        def extra_loss(self, batch, outputs):
            if batch.epoch == 0:
                for label, logits in zip(batch.y.tolist(), outputs.logits_adv.detach()):
                    self.sums[label] += torch.softmax(logits.double(), 0)
                    self.counts[label] += 1

    dafa, recorder = DAFA(tau=1), Recorder()
    result = fairdefense.train(plugins=[dafa, recorder, "ema"], objective="at", epochs=2, attack_steps=1,
                               batch_size=512, eval_attacks=("pgd2",), progress=False)
    torch.testing.assert_close(dafa.similarity, recorder.sums / recorder.counts.unsqueeze(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dafa.weights, dafa_weights(recorder.sums / recorder.counts.unsqueeze(1), 1.0),
                               rtol=1e-5, atol=1e-6)
    assert result.eval_model is not result.model  # EMA supplies the evaluated weights


# ------------------------------------------------------------ recipe, Nesterov
def test_recipe_reproduces_the_codes_schedule_with_nesterov():
    from fairdefense.recipes import load_recipe, resolve_recipe

    recipe = load_recipe("dafa-trades-cifar10-rn18")
    assert [round(m * recipe.config["epochs"]) for m in recipe.config["milestones"]] == [99, 104]  # 1-based 100, 105
    resolved = resolve_recipe("dafa-trades-cifar10-rn18")
    assert (resolved.nesterov, resolved.momentum, resolved.model, resolved.eps_step) == (True, 0.9, "resnet18", 0.007)
    assert resolved.plugin_options["dafa"]["tau"] == 70 and resolved.plugin_options["dafa"]["lam"] == 1.0
    found = {key: r.metrics[key] for r in recipe.results for key in r.metrics}
    assert found == {"clean_acc": (81.63, 67.90), "autoattack/robust_acc": (49.05, 30.53)}
    hundred = load_recipe("dafa-trades-cifar100-rn18")
    assert hundred.config["plugin_options"]["dafa"]["lam"] == 1.5
    assert hundred.results[0].metrics == {"autoattack/robust_acc": (25.08, 2.33)}


def test_nesterov_reaches_sgd_from_python_and_the_cli(capsys):
    from fairdefense.api import build_trainer

    plain = build_trainer(fairdefense.TrainConfig(epochs=1, device="cpu"), progress=False)
    nesterov = build_trainer(fairdefense.TrainConfig(epochs=1, device="cpu", nesterov=True), progress=False)
    assert plain.optimizer.param_groups[0]["nesterov"] is False
    assert nesterov.optimizer.param_groups[0]["nesterov"] is True
    assert cli_main(["train", "--nesterov", "--dry-run"]) == 0
    assert "nesterov = true" in capsys.readouterr().out
    with pytest.raises(fairdefense.ConfigError, match="nesterov needs momentum > 0"):
        build_trainer(fairdefense.TrainConfig(epochs=1, device="cpu", nesterov=True, momentum=0.0), progress=False)
