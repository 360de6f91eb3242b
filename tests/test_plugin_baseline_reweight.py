"""Baseline Reweight plugin: multipliers on validation robust error, class weights, state, end to end."""
import io
import math

import pytest
import torch

import fairdefense
from fairdefense.checkpoint import load_checkpoint
from fairdefense.cli import main as cli_main
from fairdefense_plugins.baseline_reweight import BaselineReweight

C = 3


def run_info(num_classes=C):
    return fairdefense.RunInfo(num_classes, [str(c) for c in range(num_classes)], fairdefense.TrainConfig(), torch.device("cpu"))


def epoch_info(epoch=0):
    return fairdefense.EpochInfo(epoch, 10, torch.nn.Identity(), run_info(), 0.1)


def report():
    """counts 10/10/20, PGD acc .5/.2/.6 -> robust error r = (.5, .8, .4).

    Pooled R = (5 + 8 + 8) / 40 = .525; with tau = .07: g = (-.095, .205, -.195).
    """
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return fairdefense.ClassReport(
        ["0", "1", "2"], torch.tensor([10, 10, 20]), t([0.9, 0.6, 0.8]), robust_acc={"pgd20": t([0.5, 0.2, 0.6])}
    )


def configured(**options):
    plugin = BaselineReweight(**options)
    plugin.configure(config=fairdefense.TrainConfig(), run=run_info())
    return plugin


def batch_info(y):
    y = torch.tensor(y)
    return fairdefense.BatchInfo(
        0, 0, 0, torch.zeros(len(y), 1, 2, 2), y, torch.nn.Identity(), fairdefense.PGDAT(), 0.2, 0.05, run_info()
    )


def outputs(n):
    z = torch.zeros(n, C)
    return fairdefense.BatchOutputs(
        x_natural=torch.zeros(n, 1, 2, 2), x_adv=torch.zeros(n, 1, 2, 2), logits_clean=None, logits_natural=None,
        logits_adv=z, natural=None, robust=torch.ones(n), eps=torch.full((n,), 0.2),
    )


def assert_close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_initial_weights_are_uniform():
    weights = configured().reweight(batch=batch_info([0, 1, 1, 2]), outputs=outputs(4))
    assert_close(weights.robust, [1.0, 1.0, 1.0, 1.0])
    assert weights.natural is None


def test_update_upweights_the_class_with_the_highest_robust_error():
    plugin = configured()
    plugin.on_validation(epoch=epoch_info(0), report=report())
    # phi = Norm(.05 g) = Norm(-.00475, .01025, -.00975) = (0, .01025, 0)
    assert_close(plugin.phi, [0.0, 0.01025, 0.0])
    # w = 1/3 + phi - mean(phi): mean .0034167
    assert_close(plugin.class_weights(), [1 / 3 - 0.01025 / 3, 1 / 3 + 2 * 0.01025 / 3, 1 / 3 - 0.01025 / 3])


def test_per_sample_weights_form_the_weighted_batch_mean():
    plugin = configured(alpha=1.0)
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert_close(plugin.phi, [0.0, 0.205, 0.0])  # sum .205 <= lim .5: no rescale
    # class weights 1/3 + phi - .068333 = (.265, .47, .265); batch (0, 1, 1, 2) sums to 1.47
    weights = plugin.reweight(batch=batch_info([0, 1, 1, 2]), outputs=outputs(4))
    assert_close(weights.robust, [0.265 * 4 / 1.47, 0.47 * 4 / 1.47, 0.47 * 4 / 1.47, 0.265 * 4 / 1.47])
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    # sum w_y l / sum w_y = (.265 + .94 + 1.41 + 1.325) / 1.47
    assert math.isclose(float((weights.robust * losses).mean()), 3.94 / 1.47, rel_tol=1e-6)


def test_rescale_to_lim_and_natural_option():
    plugin = configured(alpha=1.0, lim=0.1, natural=True)
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert_close(plugin.phi, [0.0, 0.1, 0.0])  # .205 > .1 -> rescaled
    weights = plugin.reweight(batch=batch_info([0, 1]), outputs=outputs(2))
    # class weights (1/3 - .1/3, 1/3 + .2/3) = (.2/.3 * 1/3 ...) = (.3, .4); batch sum .7
    assert_close(weights.robust, [0.3 * 2 / 0.7, 0.4 * 2 / 0.7])
    assert_close(weights.natural, weights.robust.tolist())


def test_multipliers_accumulate_and_shrink():
    plugin = configured(alpha=1.0)
    for e in range(2):
        plugin.on_validation(epoch=epoch_info(e), report=report())
    assert_close(plugin.phi, [0.0, 0.41, 0.0])
    better = report()
    better.robust_acc["pgd20"] = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)  # r equal: g = -tau
    plugin.on_validation(epoch=epoch_info(2), report=better)
    assert_close(plugin.phi, [0.0, 0.34, 0.0])


def test_configure_sets_only_the_validation():
    assert BaselineReweight(val_size=300).configure(config=fairdefense.TrainConfig(), run=run_info()) == {
        "val_steps": 20, "val_size": 300,
    }


def test_state_round_trip_continues_exactly():
    plugin = configured(alpha=1.0)
    plugin.on_validation(epoch=epoch_info(0), report=report())
    buffer = io.BytesIO()
    torch.save(plugin.plugin_state(), buffer)
    buffer.seek(0)
    restored = configured(alpha=1.0)
    restored.load_plugin_state(torch.load(buffer, weights_only=True))
    restored.on_validation(epoch=epoch_info(1), report=report())
    assert_close(restored.phi, [0.0, 0.41, 0.0])


def test_unknown_option_lists_valid_options():
    with pytest.raises(fairdefense.PluginOptionError) as err:
        BaselineReweight(tau1=0.05)
    assert "Did you mean 'tau'" in str(err.value) and "alpha" in str(err.value)


def test_trains_one_epoch_from_python(tiny_config):
    plugin = BaselineReweight(val_steps=2, alpha=1.0)
    result = fairdefense.train(tiny_config, plugins=[plugin], progress=False)
    assert (result.config.objective, result.config.val_steps) == ("at", 2)
    val = fairdefense.ClassReport.from_dict(result.history[0]["val"])
    r = val.robust_error()
    g = r - (r * val.counts).sum() / val.counts.sum() - 0.07
    expected = g.clamp_min(0)
    expected = expected * 0.5 / expected.sum() if expected.sum() > 0.5 else expected
    torch.testing.assert_close(plugin.phi, expected)


def test_trains_one_epoch_from_the_cli(tmp_path):
    rc = cli_main([
        "train", "--plugin", "baseline-reweight", "-o", "baseline-reweight.val_steps=2", "--objective", "trades",
        "--epochs", "1", "--attack-steps", "2", "--batch-size", "256", "--device", "cpu", "--no-progress",
        "--out", str(tmp_path),
    ])
    assert rc == 0
    state = load_checkpoint(tmp_path / "last.pt")["plugins"]["baseline-reweight"]
    assert state["phi"].shape == (10,) and float(state["phi"].sum()) <= 0.5 + 1e-12
