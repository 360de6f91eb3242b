"""The trainer's attack wiring, observed from inside the model: the mode the training
attack runs in, its random start, which attack each objective asks for, and BAT's
KL direction. Each test fails if the corresponding decision flips."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense.data import load_dataset
from fairdefense_plugins.bat import BAT

EPS = 0.2
STEPS = 3


@dataclass
class Call:
    training: bool
    attack: bool  # the input requires grad: a forward of the attack's gradient step
    grad_enabled: bool
    x: torch.Tensor


class Recorder(nn.Module):
    """A small BatchNorm network that records every forward (mode, whether it is an attack step, input)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
        self.calls: list[Call] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(Call(self.training, x.requires_grad, torch.is_grad_enabled(), x.detach().clone()))
        return self.net(x)


@pytest.fixture(scope="module")
def digits():
    bundle = load_dataset("digits")
    x = torch.stack([bundle.train[i][0] for i in range(128)])
    return TensorDataset(x, bundle.train_targets[:128]), bundle.class_names


def train_recorded(digits, plugins=(), **settings) -> tuple[Recorder, fairdefense.Trainer]:
    data, names = digits
    torch.manual_seed(0)
    model = Recorder()
    config = fairdefense.TrainConfig(epochs=1, batch_size=64, attack_steps=STEPS, eps=EPS, device="cpu", **settings)
    trainer = fairdefense.Trainer(model, data, names, config, plugins, progress=False)
    model.calls.clear()  # drop the trainer's shape check
    trainer.fit()
    return model, trainer


def attack_calls(model: Recorder) -> list[Call]:
    return [c for c in model.calls if c.attack]


def loss_calls(model: Recorder) -> list[Call]:
    return [c for c in model.calls if not c.attack and c.grad_enabled]


# ------------------------------------------------------------------ attack mode
@pytest.mark.parametrize("objective", ["at", "trades"])
def test_training_attack_runs_in_eval_mode_by_default(digits, objective):
    model, trainer = train_recorded(digits, objective=objective)
    assert trainer.config.attack_mode == "eval"
    attack = attack_calls(model)
    assert len(attack) == 2 * STEPS  # two batches of 64
    assert not any(c.training for c in attack)
    assert all(c.training for c in loss_calls(model))


@pytest.mark.parametrize("objective", ["at", "trades"])
def test_attack_mode_train_runs_the_attack_in_train_mode(digits, objective):
    model, trainer = train_recorded(digits, objective=objective, attack_mode="train")
    attack = attack_calls(model)
    assert len(attack) == 2 * STEPS and all(c.training for c in attack)
    assert all(c.training for c in loss_calls(model))


def test_attack_mode_train_lets_the_attack_update_batchnorm(digits):
    """Train mode: the attack's forwards move BatchNorm's running statistics (the counter counts them)."""
    _, eval_run = train_recorded(digits, attack_mode="eval")
    _, train_run = train_recorded(digits, attack_mode="train")
    bn_eval, bn_train = eval_run.model.net[2], train_run.model.net[2]
    assert int(bn_eval.num_batches_tracked) == 2  # one loss forward per batch (PGD-AT)
    assert int(bn_train.num_batches_tracked) == 2 * (1 + STEPS)


def test_attack_mode_is_a_checked_setting_and_a_cli_flag(tmp_path):
    with pytest.raises(fairdefense.ConfigError, match="attack_mode must be 'eval'.*or 'train'"):
        fairdefense.train(epochs=1, attack_mode="training", progress=False)
    from fairdefense.cli import main

    args = ["train", "--attack-mode", "train", "--epochs", "1", "--attack-steps", "1", "--batch-size", "512",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    import json

    assert json.loads((tmp_path / "config.json").read_text())["attack_mode"] == "train"


# ----------------------------------------------------------------- random start
def start_offsets(model: Recorder, reference: Call) -> torch.Tensor:
    """First attack input minus the clean batch, on pixels away from the [0, 1] bounds."""
    first = attack_calls(model)[0].x
    inside = (reference.x > 0.05) & (reference.x < 0.95)
    return (first - reference.x)[inside]


def test_trades_attack_starts_at_x_plus_small_gaussian_noise(digits):
    model, _ = train_recorded(digits, objective="trades")
    # TRADES: the attack's clean forward (no grad) comes right before its first step
    reference = model.calls[0]
    assert not reference.grad_enabled and not reference.attack
    offsets = start_offsets(model, reference)
    assert offsets.abs().max() < 0.006  # 0.001 N(0, I): a uniform start in the 0.2-ball would reach ~0.2
    assert 0.0008 < float(offsets.std()) < 0.0012


def test_mart_starts_from_small_gaussian_noise_and_at_from_the_uniform_ball(digits):
    model, _ = train_recorded(digits, objective="mart")
    clean = loss_calls(model)[0]  # MART's loss forwards f(x) first
    assert 0.0008 < float(start_offsets(model, clean).std()) < 0.0012
    model, _ = train_recorded(digits, objective="at", plugins=[KeepClean()])
    clean = [c for c in loss_calls(model)][0]  # the natural input the plugin kept: the clean batch
    offsets = start_offsets(model, clean)
    assert offsets.abs().max() <= EPS + 1e-6
    assert float(offsets.std()) == pytest.approx(EPS / math.sqrt(3), rel=0.1)  # uniform on [-eps, eps]


class KeepClean(fairdefense.FairnessPlugin):
    """Trains the natural term on the clean batch (so PGD-AT forwards it, and the test sees x)."""

    name = "keep-clean"

    def select_examples(self, batch, record):
        return fairdefense.Selection(natural=batch.x)


# -------------------------------------------------------------- early stopping
def test_fat_trains_on_an_early_stopped_attack_and_pgd_at_does_not(digits):
    """FAT forwards only the samples still running: fewer attack rows than B x steps."""
    fat, _ = train_recorded(digits, objective="fat", early_stop_extra_steps=0)
    at, _ = train_recorded(digits, objective="at")
    rows = lambda model: sum(len(c.x) for c in attack_calls(model))  # noqa: E731
    assert rows(at) == 128 * STEPS
    assert rows(fat) < 128 * STEPS
    # FAT stops a sample wrong at its start at once: an untrained model gets most inputs wrong
    assert len(attack_calls(fat)[0].x) == 64


# ---------------------------------------------------------------- BAT's KL term
def test_bat_uniform_term_defaults_to_the_codes_direction():
    """Default BAT: alpha * [mean KL(f || U) + mean KL(f || U)] = alpha * mean(sum_c f_c log(C f_c)) twice."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    kl_f_u = [sum(p * math.log(3 * p) for p in row) for row in probs]
    outputs = fairdefense.BatchOutputs(
        x_natural=torch.zeros(2, 1), x_adv=torch.zeros(2, 1), logits_clean=None, logits_natural=logits,
        logits_adv=logits, natural=None, robust=torch.zeros(2), eps=torch.zeros(2),
    )
    assert BAT().extra_loss(outputs=outputs).item() == pytest.approx(2 * sum(kl_f_u) / 2, abs=1e-6)


# -------------------------------------------------------------------- recipes
def test_every_recipe_sets_its_codes_attack_mode():
    """Train mode where the authors' code attacks in train mode (CFA's AT and EMA runs, Rice et
    al.'s WRN-34-10), eval mode everywhere else; no recipe leaves it to the library default."""
    from fairdefense.recipes import list_recipes, load_recipe

    modes = {info.name: load_recipe(info.name).config.get("attack_mode") for info in list_recipes()}
    assert None not in modes.values(), [name for name, mode in modes.items() if mode is None]
    assert {name for name, mode in modes.items() if mode == "train"} == {
        "cfa-at-cifar10-prn18", "ema-at-cifar10-prn18", "pgdat-cifar10-wrn34",
    }
