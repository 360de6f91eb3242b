"""BAT plugin: boundary-iterate selection, uniform-target KL, the full loss, end to end."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense.cli import main as cli_main
from fairdefense_plugins.bat import BAT, uniform_kl

STEP = 0.1
STEPS = 5


def interval_model() -> nn.Module:
    """1-D, 3 classes: class 1 wins on |x - 0.5| < 0.25, class 0 left of it, class 2 right of it.

    Logits ``(-4(x - 0.5), 1, 4(x - 0.5))``. TRADES's KL attack moves every sample
    away from its clean point in the direction of its random start's noise.
    """
    model = nn.Linear(1, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-4.0], [0.0], [4.0]]))
        model.bias.copy_(torch.tensor([2.0, 1.0, -2.0]))
    return model.eval()


# Samples: A correct, fooled at step 3; B correct, never fooled (radius 0.2 < 0.25);
# C wrong at the start (label 0 in class 1's interval).
X = torch.full((3, 1), 0.5)
Y = torch.tensor([1, 1, 0])
EPS = torch.tensor([0.45, 0.2, 0.45])


def hand_iterates(noise: torch.Tensor) -> list[torch.Tensor]:
    """x_t = proj(start + t * STEP * sign(noise)) for t = 0..STEPS, by hand."""
    start = X + 0.001 * noise
    direction = noise.sign()
    lo, hi = X - EPS[:, None], X + EPS[:, None]
    return [torch.minimum(torch.maximum(start + t * STEP * direction, lo), hi) for t in range(STEPS + 1)]


@pytest.mark.parametrize("extra_steps", [0, 1])
def test_selection_on_a_known_decision_boundary(extra_steps):
    seed = 3
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed))
    it = hand_iterates(noise)
    assert (it[3] - 0.5).abs()[0] > 0.25 > (it[2] - 0.5).abs()[0]  # A's boundary lies between steps 2 and 3
    record = fairdefense.pgd_early_stop(
        interval_model(), X, Y, EPS, STEP, STEPS, extra_steps=extra_steps, loss="kl", random_start="normal",
        generator=torch.Generator().manual_seed(seed),
    )
    selection = BAT().select_examples(record=record)

    # A: last correct iterate x_2; first wrong x_3, or x_4 after one extra step.
    # B: never fooled, both the final iterate x_5 (pinned at the radius 0.2).
    # C: wrong at the start: last correct is the start; first wrong the start or x_1.
    last_correct = torch.stack([it[2][0], it[STEPS][1], it[0][2]])
    first_wrong = torch.stack([it[3 + extra_steps][0], it[STEPS][1], it[extra_steps][2]])
    torch.testing.assert_close(selection.natural, last_correct, atol=1e-6, rtol=0)
    torch.testing.assert_close(selection.adversarial, first_wrong, atol=1e-6, rtol=0)
    torch.testing.assert_close((selection.adversarial[1] - 0.5).abs(), torch.tensor([0.2]), atol=1e-6, rtol=0)
    assert record.fooled.tolist() == [True, False, True]
    assert record.stop_step.tolist() == [3 + extra_steps, STEPS, extra_steps]


def test_uniform_kl_against_hand_computation():
    logits = torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 6.0]]))
    # p = (1/4, 1/2, 1/4), uniform, (1/8, 1/8, 3/4); U = 1/3 each
    code = [
        0.25 * math.log(0.75) + 0.5 * math.log(1.5) + 0.25 * math.log(0.75),
        0.0,
        2 * 0.125 * math.log(0.375) + 0.75 * math.log(2.25),
    ]
    paper = [
        (2 * math.log(4 / 3) + math.log(2 / 3)) / 3,
        0.0,
        (2 * math.log(8 / 3) + math.log(4 / 9)) / 3,
    ]
    torch.testing.assert_close(uniform_kl(logits, "code"), torch.tensor(code), atol=1e-6, rtol=0)
    torch.testing.assert_close(uniform_kl(logits, "paper"), torch.tensor(paper), atol=1e-6, rtol=0)

    outputs = fairdefense.BatchOutputs(
        x_natural=torch.zeros(3, 1), x_adv=torch.zeros(3, 1), logits_clean=None,
        logits_natural=logits, logits_adv=logits[[2, 2, 1]], natural=None, robust=torch.zeros(3),
        eps=torch.zeros(3),
    )
    for direction, per_sample in (("code", code), ("paper", paper)):
        extra = BAT(alpha=2.0, kl_direction=direction).extra_loss(outputs=outputs)
        expected = 2.0 * (sum(per_sample) / 3 + (2 * per_sample[2] + per_sample[1]) / 3)
        assert extra.item() == pytest.approx(expected, abs=1e-6)


class Spy(fairdefense.FairnessPlugin):
    """Records what the trainer hands to reweight (it returns None: no effect on training)."""

    name = "spy"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[fairdefense.BatchInfo, fairdefense.BatchOutputs]] = []

    def reweight(self, batch, outputs):
        self.seen.append((batch, outputs))


def independent_bat_loss(model, x, y, x_nat, x_adv, beta, alpha, direction):
    """BAT's loss as the code's BAT_loss writes it (sums over the batch divided by B)."""
    b, c = len(y), 3
    log_u = torch.full((b, c), -math.log(c))
    p_nat, p_adv, p_clean = (F.softmax(model(v), dim=1) for v in (x_nat, x_adv, x))
    ce = -torch.log(p_nat[torch.arange(b), y]).sum() / b
    robust = (p_clean * (p_clean.log() - p_adv.log())).sum() / b
    if direction == "code":
        uniform = sum((p * (p.log() - log_u)).sum() / b for p in (p_nat, p_adv))
    else:
        uniform = sum((log_u.exp() * (log_u - p.log())).sum() / b for p in (p_nat, p_adv))
    return ce + beta * robust + alpha * uniform


@pytest.mark.parametrize("direction,extra_steps", [("code", 1), ("paper", 0)])
def test_full_bat_loss_through_the_trainer(direction, extra_steps):
    torch.manual_seed(0)
    x = 0.5 + 0.2 * (torch.rand(8, 1) - 0.5)
    y = torch.tensor([1, 1, 0, 2, 1, 1, 2, 0])
    model = interval_model()
    initial = copy.deepcopy(model)
    spy = Spy()
    plugin = BAT(beta=4.0, alpha=0.5, extra_steps=extra_steps, kl_direction=direction)
    config = fairdefense.TrainConfig(
        epochs=1, batch_size=8, attack_steps=STEPS, eps=0.45, eps_step=STEP, lr=0.01, schedule="constant", device="cpu"
    )
    trainer = fairdefense.Trainer(model, TensorDataset(x, y), ["0", "1", "2"], config, [plugin, spy], progress=False)
    assert (trainer.config.objective, trainer.config.beta) == ("trades", 4.0)
    assert trainer.config.early_stop_extra_steps == extra_steps
    result = trainer.fit()

    ((batch, out),) = spy.seen
    assert out.record is not None
    torch.testing.assert_close(out.x_natural, out.record.x_last_correct, atol=0, rtol=0)
    torch.testing.assert_close(out.x_adv, out.record.x_first_wrong, atol=0, rtol=0)
    with torch.no_grad():
        expected = independent_bat_loss(initial, batch.x, batch.y, out.x_natural, out.x_adv, 4.0, 0.5, direction)
    assert result.history[0]["loss"] == pytest.approx(expected.item(), abs=1e-5)


def test_configure_and_option_errors():
    assert BAT(beta=3, extra_steps=0).configure() == {
        "objective": "trades", "beta": 3.0, "early_stop_extra_steps": 0,
    }
    with pytest.raises(fairdefense.PluginOptionError, match="alpha"):
        BAT(alpha=-1)
    with pytest.raises(fairdefense.PluginOptionError, match="kl_direction"):
        BAT.from_options({"kl_direction": "reverse"})
    with pytest.raises(fairdefense.PluginError, match="objective"):
        fairdefense.Trainer(
            interval_model(), TensorDataset(X, Y), ["0", "1", "2"],
            fairdefense.TrainConfig(objective="at", device="cpu"), ["bat"], progress=False,
        )


def test_trains_end_to_end_from_python():
    result = fairdefense.train(plugins=["bat"], epochs=1, attack_steps=2, progress=False)
    c = result.config
    assert (c.objective, c.beta, c.early_stop_extra_steps, c.plugins) == ("trades", 6.0, 1, ("bat",))
    assert math.isfinite(result.history[0]["loss"])
    assert result.history[0]["attack_steps"] <= 2
    assert result.report is not None


def test_trains_end_to_end_from_the_cli(tmp_path, capsys):
    code = cli_main([
        "train", "--plugin", "bat", "-o", "bat.kl_direction=paper", "--epochs", "1", "--attack-steps", "2",
        "--out", str(tmp_path), "--no-progress",
    ])
    assert code == 0
    assert (tmp_path / "last.pt").exists()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"]["plugin_options"]["bat"]["kl_direction"] == "paper"
    assert "bat" in capsys.readouterr().out


def test_bat_with_ema_end_to_end():
    result = fairdefense.train(
        plugins=["bat", "ema"], epochs=1, attack_steps=2, batch_size=256, eval_attacks=("pgd5",), progress=False
    )
    assert result.config.objective == "trades"
    assert result.eval_model is not result.model
    trained, averaged = result.model.state_dict(), result.eval_model.state_dict()
    assert all(torch.equal(trained[k], averaged[k]) for k in trained)  # the first average is a copy
