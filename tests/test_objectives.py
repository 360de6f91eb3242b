"""Base objectives (PGD-AT, TRADES, MART, FAT): per-sample terms against independent
implementations, their weighted reduction, the registry and third-party objectives."""
import dataclasses
import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairdefense
from fairdefense import make_objective
from fairdefense.cli import main

FAST = ["--epochs", "1", "--attack-steps", "2", "--batch-size", "512", "--no-progress", "--device", "cpu"]


def softmax_row(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def test_trades_terms_and_weighted_reduction():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, x_adv = torch.rand(5, 3), torch.rand(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    obj = make_objective("trades", beta=6.0)
    t = obj.terms(model, x, y, x_adv)
    p, q = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    torch.testing.assert_close(t.robust, (p * (p.log() - q.log())).sum(1))
    torch.testing.assert_close(t.natural, F.cross_entropy(model(x), y, reduction="none"))
    assert t.eps is None and t.record is None  # the trainer sets them
    w_nat, w_rob = torch.rand(5), torch.rand(5)
    expected = (w_nat * t.natural).mean() + 6.0 * (w_rob * t.robust).mean()
    torch.testing.assert_close(obj.reduce(t, w_nat, w_rob), expected)


def test_trades_natural_input_can_be_replaced_but_kl_anchor_stays_clean():
    model = nn.Linear(2, 2)
    x, x_nat, x_adv = torch.rand(3, 2), torch.rand(3, 2), torch.rand(3, 2)
    y = torch.tensor([0, 1, 0])
    t = make_objective("trades").terms(model, x, y, x_adv, x_natural=x_nat)
    torch.testing.assert_close(t.natural, F.cross_entropy(model(x_nat), y, reduction="none"))
    torch.testing.assert_close(t.logits_clean, model(x))
    assert t.x_natural is x_nat and t.x_adv is x_adv


def test_pgd_at_is_cross_entropy_on_adversarial_inputs():
    model = nn.Linear(2, 3)
    x, x_adv, y = torch.rand(4, 2), torch.rand(4, 2), torch.tensor([0, 1, 2, 1])
    obj = make_objective("at")
    t = obj.terms(model, x, y, x_adv)
    assert t.natural is None and t.logits_clean is None
    torch.testing.assert_close(obj.reduce(t), F.cross_entropy(model(x_adv), y))


# ------------------------------------------------------------------------ MART
def mart_by_hand(logits_clean, logits_adv, y):
    """MART's per-sample terms, one sample at a time in double precision (yisenwang/MART's constants)."""
    boosted, robust = [], []
    for zc, za, label in zip(logits_clean.tolist(), logits_adv.tolist(), y.tolist()):
        p, q = softmax_row(zc), softmax_row(za)
        wrong = max((j for j in range(len(q)) if j != label), key=lambda j: q[j])
        boosted.append(-math.log(q[label]) - math.log(1.0001 - q[wrong] + 1e-12))
        kl = sum(pj * (math.log(pj) - math.log(qj + 1e-12)) for pj, qj in zip(p, q))
        robust.append(kl * (1.0000001 - p[label]))
    return torch.tensor(boosted), torch.tensor(robust)


def test_mart_per_sample_terms_equal_a_hand_computed_loop():
    logits_clean = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0]])
    logits_adv = torch.tensor([[0.5, 1.5, -0.5], [1.0, -2.0, 0.0], [2.0, 1.0, 0.5], [0.0, 1.0, 1.0]])
    y = torch.tensor([0, 2, 1, 2])
    x = torch.arange(4.0)[:, None]
    # a "model" that looks the logits up by row: input k -> logits_clean[k], input 10 + k -> logits_adv[k]
    table = torch.cat([logits_clean, torch.zeros(6, 3), logits_adv])

    def model(inp):
        return table[inp.squeeze(1).long()]

    t = make_objective("mart").terms(model, x, y, x + 10)
    boosted, robust = mart_by_hand(logits_clean, logits_adv, y)
    torch.testing.assert_close(t.natural, boosted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.robust, robust, rtol=1e-5, atol=1e-6)
    # sample 0: the adversarial top class (1) is wrong, so it is y'; sample 2: the top class is wrong too
    assert t.natural[0] > F.cross_entropy(logits_adv[:1], y[:1])
    torch.testing.assert_close(t.logits_natural, t.logits_clean)


def test_mart_loss_and_gradient_equal_the_authors_batch_formula():
    """The reduction with beta 6 equals mart.py's loss, and so does its gradient (including
    the one through (1 - p_y(x)), which the code does not detach)."""
    torch.manual_seed(1)
    model = nn.Linear(4, 5)
    x, x_adv = torch.rand(7, 4), torch.rand(7, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    obj = make_objective("mart", beta=6.0)
    ours = obj.reduce(obj.terms(model, x, y, x_adv))
    grad_ours = torch.autograd.grad(ours, model.weight)[0]

    logits, logits_adv = model(x), model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    top = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top[:, -1] == y, top[:, -2], top[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs).sum(1)
    theirs = loss_adv + 6.0 * (kl * (1.0000001 - true_probs)).sum() / len(y)
    grad_theirs = torch.autograd.grad(theirs, model.weight)[0]
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_mart_weights_scale_each_samples_terms():
    """FAAL-MART: the same weight on both terms gives (C/B) sum_i p_{y_i} (BCE_i + beta KL_i (1 - p_y))."""
    torch.manual_seed(2)
    model = nn.Linear(3, 3)
    x, x_adv, y = torch.rand(4, 3), torch.rand(4, 3), torch.tensor([0, 1, 2, 2])
    obj = make_objective("mart", beta=5.0)
    t = obj.terms(model, x, y, x_adv)
    boosted, robust = mart_by_hand(model(x), model(x_adv), y)
    w = torch.tensor([0.5, 2.0, 1.0, 0.25])
    expected = sum(float(w[i]) * (float(boosted[i]) + 5.0 * float(robust[i])) for i in range(4)) / 4
    assert float(obj.reduce(t, w, w).detach()) == pytest.approx(expected, rel=1e-5)


def test_mart_refuses_a_replaced_natural_input():
    model = nn.Linear(2, 2)
    x = torch.rand(2, 2)
    with pytest.raises(fairdefense.ConfigError, match="MART has no term on a clean input"):
        make_objective("mart").terms(model, x, torch.tensor([0, 1]), x, x_natural=x)


def test_attack_settings_of_each_builtin():
    got = {n: (make_objective(n).attack_loss, make_objective(n).random_start, make_objective(n).early_stop)
           for n in ("at", "trades", "mart", "fat")}
    assert got == {"at": ("ce", "uniform", False), "trades": ("kl", "normal", False),
                   "mart": ("ce", "normal", False), "fat": ("ce", "uniform", True)}
    assert make_objective("at", beta=6.0).beta == 1.0 and make_objective("fat", beta=6.0).beta == 1.0
    assert tuple(getattr(fairdefense, n).has_beta for n in ("PGDAT", "FAT", "TRADES", "MART")) == (False, False, True, True)
    with pytest.raises(TypeError):
        fairdefense.PGDAT(6.0)  # no beta to discard: PGD-AT's robust term has the factor 1


# ------------------------------------------------------------------ training
def test_mart_trains_from_python(tiny_config):
    config = dataclasses.replace(tiny_config, objective="mart", beta=5.0)
    result = fairdefense.train(config, progress=False)
    assert (result.config.objective, result.config.beta) == ("mart", 5.0)
    assert math.isfinite(result.history[0]["loss"]) and result.history[0]["train"]["clean_acc"] is not None


def test_mart_and_fat_train_from_the_cli(tmp_path, capsys):
    for name in ("mart", "fat"):
        assert main(["train", "--objective", name, *FAST, "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "config.json").read_text())["objective"] == name
    assert "baseline (fat)" in capsys.readouterr().out


# ------------------------------------------------------------------ registry
def test_unknown_objective_names_the_nearest(capsys):
    with pytest.raises(fairdefense.ConfigError, match=r"Did you mean 'trades'\?.*at, fat, mart, trades"):
        make_objective("trade")
    assert main(["train", "--objective", "matr", *FAST]) == 2
    assert "Did you mean 'mart' or" in capsys.readouterr().err


def test_objectives_command_lists_the_builtins(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name in ("at", "trades", "mart", "fat"):
        assert f"{name}  {fairdefense.__version__}  (fairdefense)" in out
    assert "attack: ce loss, uniform start, early-stopped" in out
    assert [i.name for i in fairdefense.list_objectives("ar")] == ["mart"]


def install_objective(root, module: str, code: str, entry: str) -> None:
    """A distribution on ``root`` whose ``fairdefense.objectives`` entry point is ``entry``."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{module}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[fairdefense.objectives]\n{entry}\n")


def test_third_party_objective_registered_through_the_entry_point_group(tmp_path, monkeypatch, tiny_config, capsys):
    install_objective(tmp_path, "clean_plus_adv", """
        import torch.nn.functional as F
        import fairdefense

        class CleanPlusAdv(fairdefense.Objective):
            '''CE on the clean input plus beta * CE on a CE-PGD example.'''
            name = "clean-plus-adv"
            attack_loss = "ce"
            random_start = "uniform"

            def terms(self, model, x, y, x_adv, x_natural=None):
                x_nat = x if x_natural is None else x_natural
                logits_clean, logits_adv = model(x_nat), model(x_adv)
                return fairdefense.BatchOutputs(
                    x_natural=x_nat, x_adv=x_adv, logits_clean=logits_clean, logits_natural=logits_clean,
                    logits_adv=logits_adv, natural=F.cross_entropy(logits_clean, y, reduction="none"),
                    robust=F.cross_entropy(logits_adv, y, reduction="none"))
        """, "clean-plus-adv = clean_plus_adv:CleanPlusAdv")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["objectives", "clean"]) == 0
    out = capsys.readouterr().out
    assert "clean-plus-adv  0.3  (clean_plus_adv)" in out and "CE on the clean input" in out
    result = fairdefense.train(dataclasses.replace(tiny_config, objective="clean-plus-adv", beta=0.5), progress=False)
    assert result.config.objective == "clean-plus-adv" and math.isfinite(result.history[0]["loss"])
    assert result.history[0]["train"]["clean_acc"] is not None  # its clean logits reached the statistics


def test_an_entry_point_that_is_not_an_objective_is_refused(tmp_path, monkeypatch):
    install_objective(tmp_path, "not_an_objective", "class Nope:\n    pass\n", "nope = not_an_objective:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(fairdefense.PluginError, match="not a subclass of fairdefense.Objective"):
        make_objective("nope")
    (info,) = fairdefense.list_objectives("nope")
    assert info.error and "not a subclass" in info.error
