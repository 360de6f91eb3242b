"""AutoAttack: same numbers as the package called directly, the reduced set, both imports, a missing package."""
import logging
import sys
import types

import pytest
import torch
from torch import nn

from fairdefense import ConfigError, MissingDependencyError, evaluate, pgd
from fairdefense.autoattack import STANDARD_ATTACKS, AutoAttackRunner, import_autoattack, plan_autoattack
from fairdefense.metrics import WORST_CASE

EPS = 0.05


@pytest.fixture(scope="module")
def digits_model(digits_mlp):
    """The shared digits MLP (conftest) and the first 40 test samples."""
    model, bundle = digits_mlp
    xt = torch.stack([bundle.test[i][0] for i in range(40)])
    yt = torch.stack([bundle.test[i][1] for i in range(40)])
    return model, xt, yt, bundle.class_names


def per_class(y, ok, n=10):
    counts = torch.bincount(y, minlength=n).double()
    return torch.bincount(y, weights=ok.double(), minlength=n) / counts.where(counts > 0, torch.tensor(float("nan")))


def package_robust_flags(model, x, y, seed):
    """APGD-CE through the installed AutoAttack package itself, with the standard version's single restart."""
    try:
        from autoattack import AutoAttack
    except ImportError:
        from pyautoattack import AutoAttack

        adversary = AutoAttack(model, attacks=["apgd-ce"], version="custom", eps=EPS, norm="Linf", seed=seed,
                               device="cpu")
        adversary.apgd.n_restarts = 1
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(y))
        return y_adv == y
    adversary = AutoAttack(model, norm="Linf", eps=EPS, seed=seed, verbose=False, attacks_to_run=["apgd-ce"],
                           version="custom", device="cpu")
    adversary.apgd.n_restarts = 1
    _, y_adv = adversary.run_standard_evaluation(x, y, bs=len(y), return_labels=True)
    return y_adv == y


def test_per_class_numbers_equal_the_package_called_directly_batch_by_batch(digits_model):
    model, x, y, names = digits_model
    chunks = [(x[:25], y[:25]), (x[25:], y[25:])]
    rng = torch.get_rng_state()
    report = evaluate(model, chunks, names, ["autoattack"], eps=EPS, seed=7, autoattack=["apgd-ce"])
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global random state is left alone"
    expected = per_class(y, torch.cat([package_robust_flags(model, xb, yb, seed=7) for xb, yb in chunks]))
    torch.testing.assert_close(report.robust_acc["autoattack"], expected, rtol=0, atol=0, equal_nan=True)
    again = evaluate(model, chunks, names, ["autoattack"], eps=EPS, seed=7, autoattack=["apgd-ce"])
    torch.testing.assert_close(again.robust_acc["autoattack"], report.robust_acc["autoattack"], equal_nan=True)
    acc, clean = report.robust_acc["autoattack"].nanmean(), report.clean_acc.nanmean()
    assert 0 < acc < clean, "partial robustness: the comparison is not trivially 0 = 0 or 1 = 1"


def test_runs_in_eval_mode_and_restores_the_mode(digits_model):
    model, x, y, names = digits_model
    net = nn.Sequential(nn.Dropout(0.5), model).train()  # dropout would make every forward random
    report = evaluate(net, [(x, y)], names, ["autoattack"], eps=EPS, seed=2, autoattack=["apgd-ce"])
    assert net.training
    torch.testing.assert_close(report.robust_acc["autoattack"], per_class(y, package_robust_flags(model, x, y, 2)),
                               rtol=0, atol=0, equal_nan=True)


def test_worst_case_row_includes_autoattack(digits_model):
    model, x, y, names = digits_model
    report = evaluate(model, [(x, y)], names, ["pgd3", "autoattack"], eps=EPS, seed=1, autoattack=["apgd-ce"])
    pgd_ok = model(pgd(model, x, y, EPS, EPS / 4, 3, generator=torch.Generator().manual_seed(1))).argmax(1) == y
    aa_ok = package_robust_flags(model, x, y, seed=1)
    torch.testing.assert_close(report.robust_acc[WORST_CASE], per_class(y, pgd_ok & aa_ok), equal_nan=True)
    for attack in ("pgd3", "autoattack"):
        rows = torch.stack([report.robust_acc[WORST_CASE], report.robust_acc[attack]])
        assert (rows[0][~rows.isnan().any(0)] <= rows[1][~rows.isnan().any(0)]).all()


def test_set_selection_standard_and_reduced():
    standard = plan_autoattack(10)
    assert (standard.version, standard.attacks, standard.n_target_classes, standard.reduced) == \
        ("standard", STANDARD_ATTACKS, 9, False)
    assert plan_autoattack(100).n_target_classes == 9
    expected = {
        9: ("apgd-ce", "apgd-t", "fab-t", "square"),
        4: ("apgd-ce", "apgd-t", "fab-t", "square"),
        3: ("apgd-ce", "apgd-dlr", "fab-t", "square"),  # targeted DLR needs a 4th class
        2: ("apgd-ce", "fab-t", "square"),  # DLR needs a 3rd class
    }
    for classes, attacks in expected.items():
        plan = plan_autoattack(classes)
        assert (plan.version, plan.attacks, plan.n_target_classes, plan.reduced) == \
            ("custom", attacks, classes - 1, True)
        assert "reduced" in plan.note and f"{classes - 1} target classes" in plan.note
    custom = plan_autoattack(10, ["apgd-ce", "square"])
    assert (custom.version, custom.attacks, custom.reduced) == ("custom", ("apgd-ce", "square"), False)
    with pytest.raises(ConfigError, match="needs 4 classes"):
        plan_autoattack(3, ["apgd-t"])
    with pytest.raises(ConfigError, match="unknown AutoAttack attack"):
        plan_autoattack(10, ["pgd"])


def test_reduced_set_is_configured_in_the_package_and_runs_without_target_warnings(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():  # class 0 wins by a margin no 0.1-perturbation overturns: every attack runs in full
        model[1].weight.mul_(0.01)
        model[1].bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    runner = AutoAttackRunner(model, eps=0.1, norm="linf", num_classes=4, device="cpu", seed=0)
    a = runner.adversary
    assert list(a.attacks_to_run) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (a.apgd_targeted.n_target_classes, a.fab.n_target_classes) == (3, 3)
    assert (a.apgd.n_restarts, a.apgd_targeted.n_restarts, a.fab.n_restarts, a.square.n_queries) == (1, 1, 1, 5000)
    x = torch.rand(3, 1, 4, 4)
    y = model(x).argmax(1)
    with caplog.at_level(logging.WARNING):
        x_adv = runner(x, y)
    assert not [r for r in caplog.records if "target classes" in r.getMessage()]
    assert torch.equal(model(x_adv).argmax(1), y) and (x_adv - x).abs().max() <= 0.1 + 1e-6
    ten = AutoAttackRunner(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)), eps=0.1, norm="linf", num_classes=10,
                           device="cpu", seed=0).adversary
    assert list(ten.attacks_to_run) == list(STANDARD_ATTACKS) and ten.apgd_targeted.n_target_classes == 9


def test_upstream_module_is_preferred_with_its_own_api(monkeypatch, digits_model):
    model, x, y, names = digits_model
    calls = {}

    class UpstreamAutoAttack:  # fra31/auto-attack's signature; returns the inputs unchanged
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=(),
                     version="standard", is_tf_model=False, device="cuda", log_path=None):
            calls["init"] = dict(norm=norm, eps=eps, seed=seed, verbose=verbose, attacks_to_run=attacks_to_run,
                                 version=version)
            self.apgd, self.apgd_targeted, self.fab, self.square = (types.SimpleNamespace() for _ in range(4))

        def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False):
            calls["bs"] = bs
            return x_orig

    monkeypatch.setitem(sys.modules, "autoattack", types.SimpleNamespace(AutoAttack=UpstreamAutoAttack))
    assert import_autoattack() == (UpstreamAutoAttack, "autoattack")
    report = evaluate(model, [(x, y)], names, ["autoattack"], eps=EPS, seed=4, autoattack=["apgd-ce"])
    assert calls["init"] == dict(norm="Linf", eps=EPS, seed=4, verbose=False, attacks_to_run=["apgd-ce"],
                                 version="custom")
    assert calls["bs"] == len(y)
    torch.testing.assert_close(report.robust_acc["autoattack"], report.clean_acc, equal_nan=True)


def test_missing_package_raises_missing_dependency_error(monkeypatch, digits_model):
    model, x, y, names = digits_model
    monkeypatch.setitem(sys.modules, "autoattack", None)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(MissingDependencyError, match="pyautoattack"):
        import_autoattack()
    model.train()
    with pytest.raises(MissingDependencyError, match="AutoAttack evaluation"):
        evaluate(model, [(x, y)], names, ["pgd3", "autoattack"], eps=EPS)
    assert model.training, "the model's mode is untouched when the attack cannot be built"
    model.eval()
    report = evaluate(model, [(x, y)], names, ["pgd3"], eps=EPS)  # PGD needs no package
    assert "pgd3" in report.robust_acc


def test_inputs_outside_unit_range_are_refused():
    model = nn.Linear(4, 3)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        AutoAttackRunner(model, eps=0.1, norm="linf", num_classes=3, device="cpu", seed=0, clip=(-1.0, 1.0))
