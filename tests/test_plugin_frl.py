"""FRL plugin: multiplier updates, Norm, remargin, reweighting, variants, state, end to end.

Expected values are worked out by hand in the comments (3 classes, tiny tensors).
"""
import io
import math

import pytest
import torch

import fairdefense
from fairdefense.checkpoint import load_checkpoint
from fairdefense.cli import main as cli_main
from fairdefense.toolkit import cost_sensitive_weights, normalize_multipliers
from fairdefense_plugins.frl import FRL

C = 3


def run_info(num_classes=C):
    return fairdefense.RunInfo(num_classes, [str(c) for c in range(num_classes)], fairdefense.TrainConfig(), torch.device("cpu"))


def epoch_info(epoch=0):
    return fairdefense.EpochInfo(epoch, 40, torch.nn.Identity(), run_info(), 1e-3)


def report():
    """counts 10/10/20, clean acc .9/.6/.8, PGD acc .5/.2/.6.

    e = (.1, .4, .2), pooled E = (1 + 4 + 4) / 40 = .225 (the class mean would be .2333);
    b = (.4, .4, .2), pooled Bd = (4 + 4 + 4) / 40 = .3.
    With tau1 = tau2 = .07: g0 = (-.195, .105, -.095), g1 = (.03, .03, -.17).
    """
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return fairdefense.ClassReport(
        ["0", "1", "2"], torch.tensor([10, 10, 20]), t([0.9, 0.6, 0.8]), robust_acc={"pgd20": t([0.5, 0.2, 0.6])}
    )


def configured(**options):
    plugin = FRL(**options)
    plugin.configure(config=fairdefense.TrainConfig(), run=run_info())
    return plugin


def batch_info(y, eps=0.2, eps_step=0.05):
    y = torch.tensor(y)
    x = torch.zeros(len(y), 1, 2, 2)
    return fairdefense.BatchInfo(0, 0, 0, x, y, torch.nn.Identity(), fairdefense.TRADES(1.5), eps, eps_step, run_info())


def outputs(n, natural=None, robust=None):
    z = torch.zeros(n, C)
    return fairdefense.BatchOutputs(
        x_natural=torch.zeros(n, 1, 2, 2), x_adv=torch.zeros(n, 1, 2, 2), logits_clean=z, logits_natural=z,
        logits_adv=z, natural=torch.ones(n) if natural is None else natural,
        robust=torch.ones(n) if robust is None else robust, eps=torch.full((n,), 0.2),
    )


def assert_close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


# ----------------------------------------------------------------- pure math
def test_norm_clips_negatives_and_keeps_small_sums():
    assert_close(normalize_multipliers(torch.tensor([-0.1, 0.2, 0.1], dtype=torch.float64), 0.5), [0.0, 0.2, 0.1])


def test_norm_rescales_to_lim_after_clipping():
    # clip -> (.4, 0, .6), sum 1 > .5 -> times .5
    assert_close(normalize_multipliers(torch.tensor([0.4, -1.0, 0.6], dtype=torch.float64), 0.5), [0.2, 0.0, 0.3])


def test_cost_sensitive_weights_match_the_code_double_loop():
    # code: 1/C + (C-1)/C lam_i - 1/C sum_{j != i} lam_j ; lam = (0, .3, 0) -> (.7/3, 1.6/3, .7/3)
    assert_close(cost_sensitive_weights(torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64)), [0.7 / 3, 1.6 / 3, 0.7 / 3])


# ---------------------------------------------------------- multiplier update
def test_first_update_from_hand_computed_violations():
    plugin = configured()
    plugin.on_validation(epoch=epoch_info(0), report=report())
    # lam0 = Norm(.05 g0) = Norm(-.00975, .00525, -.00475)
    assert_close(plugin.lam0, [0.0, 0.00525, 0.0])
    # lam1 = Norm(2 * .05 * g1) = Norm(.003, .003, -.017): twice the rate of lam0
    assert_close(plugin.lam1, [0.003, 0.003, 0.0])
    # lam2 = .2 g1, not clipped
    assert_close(plugin.lam2, [0.006, 0.006, -0.034])


def test_rescale_branch_and_double_rate():
    plugin = configured(a1=2.0, lim=0.1)
    plugin.on_validation(epoch=epoch_info(0), report=report())
    # lam0: 2 g0 -> (-.39, .21, -.19) -> clip (0, .21, 0) -> sum .21 > .1 -> (0, .1, 0)
    assert_close(plugin.lam0, [0.0, 0.1, 0.0])
    # lam1: 4 g1 -> (.12, .12, -.68) -> clip -> sum .24 > .1 -> (.05, .05, 0)
    assert_close(plugin.lam1, [0.05, 0.05, 0.0])
    wide = configured(a1=2.0, lim=0.9)
    wide.on_validation(epoch=epoch_info(0), report=report())
    assert_close(wide.lam1, [0.12, 0.12, 0.0])  # 2 * a1 * g1, below lim: untouched


def test_lam2_accumulates_without_clipping():
    plugin = configured()
    for e in range(2):
        plugin.on_validation(epoch=epoch_info(e), report=report())
    assert_close(plugin.lam2, [0.012, 0.012, -0.068])


def test_a1_halves_every_40_epochs_in_the_codes_numbering():
    plugin = FRL()
    # the update after 0-based epoch k serves the code's epoch k + 2 (1-based); halved when that reaches 40, 80
    assert [plugin.rate1(k) for k in (0, 37, 38, 77, 78)] == [0.05, 0.05, 0.025, 0.025, 0.0125]
    assert FRL(a1_decay_every=0).rate1(500) == 0.05


# -------------------------------------------------------------------- remargin
def test_eps_clamped_at_both_bounds_and_step_from_batch_max():
    plugin = configured()
    plugin.load_plugin_state({"lam0": [0.0] * 3, "lam1": [0.0] * 3, "lam2": [1.0, -1.0, 0.1]})
    # exp(2) = 7.39 -> 3.0 (M); exp(-2) = .135 -> .98; exp(.2) = 1.2214027582
    margins = plugin.remargin(batch=batch_info([1, 2]))
    assert_close(margins.eps, [0.6, 0.196, 0.2 * 1.2214027581601699])
    # batch holds classes 1 and 2: largest radius .2 * 1.2214, step = that / 4 (eps_step = eps / 4)
    assert math.isclose(float(margins.step), 0.2 * 1.2214027581601699 / 4, rel_tol=1e-6)
    assert math.isclose(float(plugin.remargin(batch=batch_info([0, 1])).step), 0.6 / 4, rel_tol=1e-6)


def test_initial_remargin_is_the_base_radius():
    margins = configured().remargin(batch=batch_info([0, 2]))
    assert_close(margins.eps, [0.2, 0.2, 0.2])  # clamp(exp(0), .98, 3) = 1
    assert math.isclose(float(margins.step), 0.05, rel_tol=1e-6)


# -------------------------------------------------------------------- reweight
def test_reweight_equals_the_codes_weighted_batch_mean():
    plugin = configured()
    lam = [0.0, 0.3, 0.0]
    plugin.load_plugin_state({"lam0": lam, "lam1": lam, "lam2": [0.0] * 3})
    y = [0, 1, 1, 2]
    weights = plugin.reweight(batch=batch_info(y), outputs=outputs(4))
    # class weights (7, 16, 7) / 30; batch sum 46/30; per sample w_y * 4 / (46/30) = (28, 64, 64, 28) / 46
    assert_close(weights.natural, [28 / 46, 64 / 46, 64 / 46, 28 / 46])
    assert_close(weights.robust, [28 / 46, 64 / 46, 64 / 46, 28 / 46])
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    # code: sum w_y l / sum w_y = (7 + 32 + 48 + 35) / 46 = 122 / 46
    assert math.isclose(float((weights.natural * losses).mean()), 122 / 46, rel_tol=1e-6)


def test_reweighted_trades_loss_is_the_codes_loss():
    plugin = configured()
    plugin.load_plugin_state({"lam0": [0.0, 0.3, 0.0], "lam1": [0.2, 0.0, 0.1], "lam2": [0.0] * 3})
    y = torch.tensor([0, 1, 1, 2, 2])
    natural = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.5])
    kl = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.9])
    weights = plugin.reweight(batch=batch_info(y.tolist()), outputs=outputs(5))
    loss = fairdefense.TRADES(1.5).reduce(outputs(5, natural, kl), weights.natural, weights.robust)
    w0 = torch.tensor([0.7, 1.6, 0.7]) / 3  # 1/3 + lam0 - .1
    w1 = torch.tensor([1 / 3 + 0.1, 1 / 3 - 0.1, 1 / 3])  # 1/3 + lam1 - .1
    expected = (w0[y] * natural).sum() / w0[y].sum() + 1.5 * (w1[y] * kl).sum() / w1[y].sum()
    assert math.isclose(float(loss), float(expected), rel_tol=1e-6)


# -------------------------------------------------------------------- variants
def test_variant_rw_keeps_the_radius_and_reweights_both_terms():
    plugin = configured(variant="rw")
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert plugin.remargin(batch=batch_info([0, 1])) is None
    assert_close(plugin.lam2, [0.0, 0.0, 0.0])
    assert_close(plugin.lam1, [0.003, 0.003, 0.0])
    weights = plugin.reweight(batch=batch_info([0, 2]), outputs=outputs(2))
    assert weights.natural is not None and weights.robust is not None


def test_variant_rm_remargins_and_leaves_the_boundary_term_unweighted():
    plugin = configured(variant="rm")
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert_close(plugin.lam1, [0.0, 0.0, 0.0])
    assert_close(plugin.lam0, [0.0, 0.00525, 0.0])  # the natural term is still reweighted
    assert_close(plugin.lam2, [0.006, 0.006, -0.034])
    margins = plugin.remargin(batch=batch_info([0, 2]))
    assert_close(margins.eps, [0.2 * math.exp(0.012), 0.2 * math.exp(0.012), 0.2 * 0.98])  # exp(-.068) < .98
    weights = plugin.reweight(batch=batch_info([0, 2]), outputs=outputs(2))
    assert weights.robust is None and weights.natural is not None


def test_variant_rwrm_does_both():
    plugin = configured(variant="rwrm")
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert plugin.remargin(batch=batch_info([0])) is not None
    assert plugin.reweight(batch=batch_info([0, 1]), outputs=outputs(2)).robust is not None


def test_configure_requires_trades_beta_and_validation():
    plugin = FRL(val_size=300)
    assert plugin.configure(config=fairdefense.TrainConfig(), run=run_info()) == {
        "objective": "trades", "beta": 1.5, "val_steps": 20, "validate_first": True, "val_size": 300,
    }
    assert "val_size" not in FRL().configure(config=fairdefense.TrainConfig(), run=run_info())


# ----------------------------------------------------------- state and options
def test_state_round_trip_continues_exactly():
    plugin = configured()
    plugin.on_validation(epoch=epoch_info(0), report=report())
    buffer = io.BytesIO()
    torch.save(plugin.plugin_state(), buffer)
    buffer.seek(0)
    restored = configured()
    restored.load_plugin_state(torch.load(buffer, weights_only=True))
    for p in (plugin, restored):
        p.on_validation(epoch=epoch_info(1), report=report())
    for key in ("lam0", "lam1", "lam2"):
        torch.testing.assert_close(getattr(restored, key), getattr(plugin, key), atol=0, rtol=0)
    assert_close(restored.lam2, [0.012, 0.012, -0.068])


def test_unknown_option_lists_valid_options():
    with pytest.raises(fairdefense.PluginOptionError) as err:
        FRL(tau=0.05)
    assert "tau1" in str(err.value) and "variant" in str(err.value) and "max_eps_mult" in str(err.value)
    with pytest.raises(fairdefense.PluginOptionError, match="'rw' or 'rm' or 'rwrm'"):
        FRL.from_options({"variant": "rmrw"})


def test_out_of_range_options_are_refused():
    with pytest.raises(fairdefense.PluginOptionError, match="lim"):
        FRL(lim=1.5)
    with pytest.raises(fairdefense.PluginOptionError, match="min_eps_mult"):
        FRL(max_eps_mult=0.5)


# ------------------------------------------------------------------ end to end
def boundary_violation(entry):
    """g1 = b - pooled Bd - tau2, by hand from the raw per-class numbers an epoch logged."""
    val = entry["val"]
    b = [clean - adv for clean, adv in zip(val["clean_acc"], val["robust_acc"]["pgd2"])]
    pooled = sum(n * bc for n, bc in zip(val["counts"], b)) / sum(val["counts"])
    return torch.tensor([bc - pooled - 0.07 for bc in b], dtype=torch.float64)


def test_trains_from_python_and_resumes_exactly(tmp_path):
    settings = dict(
        attack_steps=2, batch_size=256, device="cpu", schedule="constant", eval_attacks=("pgd2",),
        plugins=("frl",), plugin_options={"frl": {"val_steps": 2}},
    )
    straight = fairdefense.train(epochs=2, out=str(tmp_path / "a"), progress=False, **settings)
    assert (straight.config.objective, straight.config.beta, straight.config.val_steps) == ("trades", 1.5, 2)
    state = load_checkpoint(tmp_path / "a" / "last.pt")["plugins"]["frl"]
    # lam2 = a2 * (g1 before training + g1 after epoch 1 + g1 after epoch 2), from the logged validation reports
    first = straight.history[0]
    expected = 0.2 * (
        boundary_violation({"val": first["val_before"]}) + boundary_violation(first) + boundary_violation(straight.history[1])
    )
    torch.testing.assert_close(state["lam2"], expected)

    fairdefense.train(epochs=1, out=str(tmp_path / "b"), progress=False, **settings)
    resumed = fairdefense.resume(tmp_path / "b" / "last.pt", epochs=2, progress=False)
    # epoch 2 trains with the multipliers saved after epoch 1: identical weights only if they were restored
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path / "b" / "last.pt")["plugins"]["frl"]["lam0"].equal(state["lam0"])


def test_trains_one_epoch_from_the_cli(tmp_path):
    rc = cli_main([
        "train", "--plugin", "frl", "-o", "frl.variant=rw", "-o", "frl.val_steps=2", "--epochs", "1",
        "--attack-steps", "2", "--batch-size", "256", "--device", "cpu", "--no-progress", "--out", str(tmp_path),
    ])
    assert rc == 0
    state = load_checkpoint(tmp_path / "last.pt")["plugins"]["frl"]
    assert torch.count_nonzero(state["lam2"]) == 0  # rw never adapts the radius
    assert state["lam0"].sum() <= 0.5 + 1e-12


def test_variant_rw_leaves_the_exclusive_remargin_hook_free():
    class Margin(fairdefense.FairnessPlugin):
        name = "margin"

        def remargin(self, batch):
            return None

    fairdefense.PluginHost([FRL(variant="rw"), Margin()])
    with pytest.raises(fairdefense.PluginError, match="exclusive hook 'remargin'"):
        fairdefense.PluginHost([FRL(variant="rwrm"), Margin()])
