"""The combinations docs/strategies.md documents: refused ones name the conflict; the rest activate."""
import pytest

import fairdefense
from fairdefense.data.digits import DIGITS_DEFAULTS
from fairdefense.trainer import resolve_run

CLASSES = [str(i) for i in range(10)]


def resolve(*plugins, options=None):
    config = fairdefense.TrainConfig(plugins=plugins, plugin_options=options or {})
    return resolve_run(config, CLASSES, DIGITS_DEFAULTS, (0.0, 1.0))[0]


@pytest.mark.parametrize(
    "pair, message",
    [
        (("frl", "cfa"), "exclusive hook 'remargin'"),
        (("frl", "wat"), "different values of 'beta'"),
        (("frl", "bat"), "different values of 'beta'"),
        (("baseline-reweight", "wat"), "different values of 'val_steps'"),
        (("baseline-reweight", "cfa"), "different values of 'val_steps'"),
        (("cfa", "ema"), "exclusive hook 'weights_to_evaluate'"),
    ],
)
def test_refused_pairs_name_the_conflict(pair, message):
    with pytest.raises(fairdefense.PluginError, match=message):
        resolve(*pair)


@pytest.mark.parametrize(
    "plugins, options, objective",
    [
        (("faal", "awp"), {}, "at"),
        (("faal", "ema"), {"ema": {"begin": "100"}}, "at"),
        (("cfa", "faal"), {"cfa": {"ccr": "false", "fawa": "false"}}, "at"),
        (("bat", "ema"), {}, "trades"),
        (("cfa", "ema"), {"cfa": {"fawa": "false"}}, "trades"),
        (("frl", "cfa"), {"frl": {"variant": "rw"}, "cfa": {"ccr": "false", "fawa": "false"}}, "trades"),
        (("frl", "wat"), {"frl": {"beta": "6", "val_steps": "10"}}, "trades"),
    ],
)
def test_documented_combinations_activate(plugins, options, objective):
    assert resolve(*plugins, options=options).objective == objective


def test_cfa_ccm_with_faal_trains_end_to_end():
    result = fairdefense.train(
        plugins=["cfa", "faal"], plugin_options={"cfa": {"ccr": "false", "fawa": "false", "begin": "1"}},
        epochs=2, attack_steps=1, batch_size=512, device="cpu", eval_every=0, progress=False,
    )
    assert result.config.plugins == ("cfa", "faal")
    assert result.report.summary()["pgd20/robust_acc"]["avg"] >= 0
