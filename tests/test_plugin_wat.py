"""WAT plugin: Hedge weights from cumulative validation TRADES costs, the C+1 entry, state, end to end."""
import io
import json
import math

import pytest
import torch

import fairdefense
from fairdefense.checkpoint import load_checkpoint
from fairdefense.cli import main as cli_main
from fairdefense_plugins.wat import WAT

C = 3


def run_info(num_classes=C):
    return fairdefense.RunInfo(num_classes, [str(c) for c in range(num_classes)], fairdefense.TrainConfig(), torch.device("cpu"))


def epoch_info(epoch=0):
    return fairdefense.EpochInfo(epoch, 100, torch.nn.Identity(), run_info(), 0.1)


def report():
    """counts 10/10/20; clean CE 1, 2, .5; KL .1, .2, .05.

    With beta = 6: cost = (1.6, 3.2, .8); average entry pooled over samples
    (16 + 32 + 16) / 40 = 1.6.
    """
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return fairdefense.ClassReport(
        ["0", "1", "2"], torch.tensor([10, 10, 20]), t([0.9, 0.6, 0.8]), robust_acc={"pgd10": t([0.5, 0.2, 0.6])},
        losses={"clean_ce": t([1.0, 2.0, 0.5]), "adv_ce": t([3.0, 3.0, 3.0]), "kl": t([0.1, 0.2, 0.05])},
    )


def configured(**options):
    plugin = WAT(**options)
    plugin.configure(config=fairdefense.TrainConfig(), run=run_info())
    return plugin


def batch_info(y):
    y = torch.tensor(y)
    return fairdefense.BatchInfo(
        0, 0, 0, torch.zeros(len(y), 1, 2, 2), y, torch.nn.Identity(), fairdefense.TRADES(6.0), 0.2, 0.05, run_info()
    )


def outputs(n, natural=None, robust=None):
    z = torch.zeros(n, C)
    return fairdefense.BatchOutputs(
        x_natural=torch.zeros(n, 1, 2, 2), x_adv=torch.zeros(n, 1, 2, 2), logits_clean=z, logits_natural=z,
        logits_adv=z, natural=torch.ones(n) if natural is None else natural,
        robust=torch.ones(n) if robust is None else robust, eps=torch.full((n,), 0.2),
    )


def hedge(costs, eta=0.1):
    """C * exp(eta S_k) / sum_j exp(eta S_j), written out."""
    e = [math.exp(eta * s) for s in costs]
    return [C * v / sum(e) for v in e]


def assert_close(actual, expected):
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def test_initial_weights_are_one_so_each_sample_counts_twice():
    weights = configured().reweight(batch=batch_info([0, 1, 2]), outputs=outputs(3))
    assert_close(weights.natural, [2.0, 2.0, 2.0])  # w_y + w_C = 1 + 1, as in the code's first epoch
    assert_close(weights.robust, [2.0, 2.0, 2.0])


def test_one_update_is_c_times_softmax_of_eta_times_cost():
    plugin = configured()
    plugin.on_validation(epoch=epoch_info(0), report=report())
    assert_close(plugin.cumulative, [1.6, 3.2, 0.8, 1.6])
    w = hedge([1.6, 3.2, 0.8, 1.6])  # 3 e^{.16, .32, .08, .16} / (2 e^.16 + e^.32 + e^.08)
    assert_close(plugin.weights, w)
    assert math.isclose(float(plugin.weights.sum()), 3.0, rel_tol=1e-12)  # sums to C, not C + 1
    per_sample = plugin.reweight(batch=batch_info([0, 1, 2, 1]), outputs=outputs(4))
    assert_close(per_sample.natural, [w[0] + w[3], w[1] + w[3], w[2] + w[3], w[1] + w[3]])
    assert_close(per_sample.robust, per_sample.natural.tolist())


def test_costs_accumulate_over_epochs():
    plugin = configured(eta=0.5, beta=1.0)
    for e in range(2):
        plugin.on_validation(epoch=epoch_info(e), report=report())
    # beta 1: cost (1.1, 2.2, .55), average (11 + 22 + 11) / 40 = 1.1; summed twice
    assert_close(plugin.cumulative, [2.2, 4.4, 1.1, 2.2])
    assert_close(plugin.weights, hedge([2.2, 4.4, 1.1, 2.2], eta=0.5))


def test_weighted_trades_loss_is_the_codes_loss():
    plugin = configured()
    plugin.on_validation(epoch=epoch_info(0), report=report())
    y = torch.tensor([0, 1, 1, 2, 2])
    natural = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.5])
    kl = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.9])
    weights = plugin.reweight(batch=batch_info(y.tolist()), outputs=outputs(5))
    loss = fairdefense.TRADES(6.0).reduce(outputs(5, natural, kl), weights.natural, weights.robust)
    w = torch.tensor(hedge([1.6, 3.2, 0.8, 1.6]))
    # the code: (sum w_y CE + beta sum w_y KL) / B + w_C * TRADES_loss
    expected = (w[y] * natural).sum() / 5 + 6 * (w[y] * kl).sum() / 5 + w[3] * (natural.mean() + 6 * kl.mean())
    assert math.isclose(float(loss), float(expected), rel_tol=1e-6)


def test_configure_requires_trades_beta_and_validation():
    assert WAT(val_size=300).configure(config=fairdefense.TrainConfig(), run=run_info()) == {
        "objective": "trades", "beta": 6.0, "val_steps": 10, "val_size": 300, "val_attack": "trades",
    }
    assert "val_attack" not in WAT(val_attack="trainer").configure(config=fairdefense.TrainConfig(), run=run_info())
    with pytest.raises(fairdefense.PluginOptionError, match="val_attack"):
        WAT(val_attack="kl")


def test_report_without_losses_is_refused():
    plugin = configured()
    bare = report()
    bare.losses = {}
    with pytest.raises(fairdefense.ConfigError, match="clean_ce"):
        plugin.on_validation(epoch=epoch_info(0), report=bare)


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
    assert_close(restored.cumulative, [3.2, 6.4, 1.6, 3.2])
    torch.testing.assert_close(restored.weights, plugin.weights, atol=0, rtol=0)


def test_unknown_option_lists_valid_options():
    with pytest.raises(fairdefense.PluginOptionError) as err:
        WAT(lr=0.1)
    assert all(k in str(err.value) for k in ("eta", "beta", "val_steps", "val_size"))


def test_trains_one_epoch_from_python(tiny_config):
    plugin = WAT(val_steps=2)
    result = fairdefense.train(tiny_config, plugins=[plugin], progress=False)
    assert (result.config.objective, result.config.beta, result.config.val_steps) == ("trades", 6.0, 2)
    val = fairdefense.ClassReport.from_dict(result.history[0]["val"])
    cost = val.losses["clean_ce"] + 6.0 * val.losses["kl"]
    average = (cost * val.counts).sum() / val.counts.sum()
    expected = torch.softmax(0.1 * torch.cat([cost, average.reshape(1)]), 0) * 10
    torch.testing.assert_close(plugin.weights, expected)


def test_validates_with_the_codes_kl_attack_unless_told_otherwise(tiny_config):
    for option, attack in (("code", "trades2"), ("trainer", "pgd2")):
        result = fairdefense.train(tiny_config, plugins=[WAT(val_steps=2, val_attack=option)], progress=False)
        assert result.config.validation_attack() == attack
        assert list(result.history[0]["val"]["robust_acc"]) == [attack]


def test_a_validation_attack_the_user_set_conflicts_with_the_codes(tiny_config):
    config = fairdefense.TrainConfig(**{**tiny_config.to_dict(), "val_attack": "pgd"})
    with pytest.raises(fairdefense.PluginError, match="'wat' requires val_attack='trades' but it was set to 'pgd'"):
        fairdefense.train(config, plugins=[WAT(val_steps=2)], progress=False)


def test_trains_one_epoch_from_the_cli(tmp_path):
    rc = cli_main([
        "train", "--plugin", "wat", "-o", "wat.val_steps=2", "-o", "wat.eta=0.2", "--epochs", "1",
        "--attack-steps", "2", "--batch-size", "256", "--device", "cpu", "--no-progress", "--out", str(tmp_path),
    ])
    assert rc == 0
    state = load_checkpoint(tmp_path / "last.pt")["plugins"]["wat"]
    # by hand from the validation report the epoch logged: cost_c = CE_c + 6 KL_c, the pooled
    # average as entry C, weights 10 * exp(0.2 S_k) / sum_j exp(0.2 S_j)
    val = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["val"]
    cost = [ce + 6.0 * kl for ce, kl in zip(val["losses"]["clean_ce"], val["losses"]["kl"])]
    cost.append(sum(n * c for n, c in zip(val["counts"], cost)) / sum(val["counts"]))
    e = [math.exp(0.2 * c) for c in cost]
    torch.testing.assert_close(state["weights"], torch.tensor([10 * v / sum(e) for v in e], dtype=torch.float64))
