"""CFA plugin: CCM radii, CCR weights, FAWA's gate, state, end to end (with an exact resume)."""
from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairdefense
from fairdefense.cli import main as cli_main
from fairdefense_plugins.cfa import CFA

EPS = 0.2
BETA = 6.0
# t = (1/4, 5/5, 3/10)
COUNTS, CORRECT = [4, 5, 10], [1, 5, 3]


def run_info(**config) -> fairdefense.RunInfo:
    return fairdefense.RunInfo(3, ["a", "b", "c"], fairdefense.TrainConfig(**config), torch.device("cpu"))


def batch_info(epoch: int, y: torch.Tensor, model: nn.Module | None = None) -> fairdefense.BatchInfo:
    x = torch.zeros(len(y), 2)
    return fairdefense.BatchInfo(
        epoch, 0, 0, x, y, model or nn.Linear(2, 3), fairdefense.TRADES(BETA), EPS, EPS / 4, run_info()
    )


def trained_stats() -> fairdefense.ClassStats:
    return fairdefense.ClassStats(torch.tensor(COUNTS), torch.tensor(CORRECT))


def test_configure():
    assert CFA().configure(config=fairdefense.TrainConfig()) == {"objective": "trades", "val_steps": 10}
    assert CFA(val_size=0.02).configure(config=fairdefense.TrainConfig(objective="trades")) == {
        "objective": "trades", "val_steps": 10, "val_size": 0.02,
    }
    assert CFA(ccr=False).configure(config=fairdefense.TrainConfig(objective="at")) == {"val_steps": 10}
    assert CFA(ccr=False, fawa=False).configure(config=fairdefense.TrainConfig()) is None
    with pytest.raises(fairdefense.PluginOptionError, match="cfa.ccr=false"):
        CFA().configure(config=fairdefense.TrainConfig(objective="at"))


def test_option_errors():
    with pytest.raises(fairdefense.PluginOptionError, match="lambda1"):
        CFA(lambda1=0)
    with pytest.raises(fairdefense.PluginOptionError, match="threshold"):
        CFA.from_options({"threshold": "24"})
    with pytest.raises(fairdefense.PluginOptionError, match="all off"):
        CFA(ccm=False, ccr=False, fawa=False)


def test_ccm_radii_against_hand_computation():
    cfa = CFA()  # lambda1 0.5, begin 10
    y = torch.tensor([0, 1, 2])
    assert cfa.remargin(batch=batch_info(10, y)) is None  # no t_k measured yet
    cfa.on_epoch_end(train_stats=trained_stats())
    assert cfa.remargin(batch=batch_info(9, y)) is None  # before begin
    margins = cfa.remargin(batch=batch_info(10, y))
    torch.testing.assert_close(margins.eps, torch.tensor([0.75, 1.5, 0.8]) * EPS)
    assert margins.step is None
    assert margins.eps.dtype == torch.float32

    trades_paper = CFA(lambda1=0.3, begin=0)
    trades_paper.on_epoch_end(train_stats=trained_stats())
    torch.testing.assert_close(trades_paper.remargin(batch=batch_info(0, y)).eps, torch.tensor([0.55, 1.3, 0.6]) * EPS)


def test_ccr_weights_against_hand_computation():
    cfa = CFA(lambda2=0.5)
    y = torch.tensor([0, 1, 2, 1])
    before = cfa.reweight(batch=batch_info(3, y))
    torch.testing.assert_close(before.natural, torch.full((4,), 1 / 7))
    torch.testing.assert_close(before.robust, torch.full((4,), 1 / 7))
    cfa.on_epoch_end(train_stats=trained_stats())
    # beta_k = (0.5 + t_k) * 6 = (4.5, 9, 4.8)
    w = cfa.reweight(batch=batch_info(10, y))
    torch.testing.assert_close(w.natural, torch.tensor([1 / 5.5, 1 / 10, 1 / 5.8, 1 / 10]))
    torch.testing.assert_close(w.robust, torch.tensor([4.5 / 6 / 5.5, 9 / 6 / 10, 4.8 / 6 / 5.8, 9 / 6 / 10]))


def test_ccr_weights_reproduce_the_calibrated_trades_loss():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    x, x_adv = torch.rand(6, 2), torch.rand(6, 2)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    cfa = CFA()
    cfa.on_epoch_end(train_stats=trained_stats())
    host = fairdefense.PluginHost([cfa])
    objective = fairdefense.TRADES(BETA)
    outputs = dataclasses.replace(objective.terms(model, x, y, x_adv), eps=torch.full((6,), EPS))
    w_nat, w_rob = host.reweight(batch_info(12, y, model), outputs)
    loss = objective.reduce(outputs, w_nat, w_rob)

    beta_y = (torch.tensor([0.75, 1.5, 0.8]) * BETA)[y]
    p, q = F.softmax(model(x), dim=1), F.softmax(model(x_adv), dim=1)
    ce = -torch.log(p[torch.arange(6), y])
    kl = (p * (p.log() - q.log())).sum(dim=1)
    torch.testing.assert_close(loss, ((ce + beta_y * kl) / (1 + beta_y)).mean())
    b = beta_y / (1 + beta_y)  # the code's class_beta
    torch.testing.assert_close(loss, ((1 - b) * ce + b * kl).mean())


def tiny_module() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def fill(module: nn.Module, offset: float) -> dict[str, torch.Tensor]:
    """Set every floating entry of the state to 0.1 * index + offset, counters to 10 * offset."""
    with torch.no_grad():
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.copy_(0.1 * torch.arange(value.numel()).view_as(value) + offset)
            else:
                value.fill_(int(10 * offset))
    return {k: v.clone() for k, v in module.state_dict().items()}


def epoch_info(epoch: int, module: nn.Module) -> fairdefense.EpochInfo:
    return fairdefense.EpochInfo(epoch, 10, module, run_info(val_steps=10), 0.1)


def val_report(worst: float) -> fairdefense.ClassReport:
    acc = torch.tensor([0.9, worst, 0.5], dtype=torch.float64)
    return fairdefense.ClassReport(["a", "b", "c"], torch.tensor([25, 25, 25]), acc, robust_acc={"pgd10": acc})


def test_fawa_gate_and_exact_average():
    module = tiny_module()
    host = fairdefense.PluginHost([CFA()])  # threshold 0.24, decay 0.88

    def validate(epoch: int, worst: float):
        info = epoch_info(epoch, module)
        host.notify("on_validation", epoch=info, report=val_report(worst))
        return host.weights_to_evaluate(info)

    fill(module, 1.0)
    assert validate(0, 0.2) is None  # below the threshold: no average yet
    first = fill(module, 1.0)
    averaged = validate(1, 6 / 25)  # exactly at the threshold: the first average is a copy
    for key, value in first.items():
        assert torch.equal(averaged[key], value)
    fill(module, 3.0)
    averaged = validate(2, 0.5)
    base = fill(tiny_module(), 0.0)
    for key, value in averaged.items():
        if value.is_floating_point():  # 0.88 * (base + 1) + 0.12 * (base + 3)
            torch.testing.assert_close(value, base[key] + 1.24)
        else:  # BatchNorm's counter takes the current value
            assert value.item() == 30
    assert {"1.running_mean", "1.running_var"} <= set(averaged)
    fill(module, 10.0)
    unchanged = validate(3, 0.1)
    for key, value in averaged.items():
        assert torch.equal(unchanged[key], value)


def test_fawa_begin():
    module = tiny_module()
    cfa = CFA(fawa_begin=2)
    cfa.on_validation(epoch=epoch_info(1, module), report=val_report(1.0))
    assert cfa.weights_to_evaluate() is None
    cfa.on_validation(epoch=epoch_info(2, module), report=val_report(1.0))
    assert cfa.weights_to_evaluate() is not None


def test_state_round_trip():
    assert CFA().plugin_state() == {}
    module = tiny_module()
    fill(module, 2.0)
    cfa = CFA(begin=0)
    cfa.on_epoch_end(train_stats=trained_stats())
    cfa.on_validation(epoch=epoch_info(0, module), report=val_report(0.5))
    buffer = io.BytesIO()
    torch.save(cfa.plugin_state(), buffer)
    buffer.seek(0)
    restored = CFA(begin=0)
    restored.load_plugin_state(torch.load(buffer, weights_only=True))

    batch = batch_info(4, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(restored.remargin(batch=batch).eps, cfa.remargin(batch=batch).eps)
    torch.testing.assert_close(restored.reweight(batch=batch).robust, cfa.reweight(batch=batch).robust)
    original, loaded = cfa.weights_to_evaluate(), restored.weights_to_evaluate()
    assert all(torch.equal(original[k], loaded[k]) for k in original)


def test_switched_off_components_register_no_hooks():
    host = fairdefense.PluginHost(["cfa"], {"cfa": {"fawa": "false", "ccm": "false"}})
    assert not host.implements("on_validation") and not host.implements("weights_to_evaluate")
    assert not host.implements("remargin")
    assert host.implements("reweight") and host.implements("on_epoch_end")
    assert fairdefense.PluginHost(["cfa"], {"cfa": {"ccr": "false"}}).implements("remargin")
    with pytest.raises(fairdefense.PluginError, match="weights_to_evaluate"):
        fairdefense.PluginHost(["cfa", "ema"])
    fairdefense.PluginHost(["cfa", "ema"], {"cfa": {"fawa": "false"}})


class Spy(fairdefense.FairnessPlugin):
    """Records radii per batch and the weights each epoch ended with; changes nothing."""

    name = "spy"

    def __init__(self) -> None:
        super().__init__()
        self.radii: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.correct: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def reweight(self, batch, outputs):
        self.radii.append((batch.epoch, batch.y.clone(), outputs.eps.clone()))
        self.correct.append((batch.epoch, batch.y.clone(), outputs.logits_adv.argmax(1) == batch.y))

    def on_epoch_end(self, epoch):
        self.states.append(copy.deepcopy(epoch.model.state_dict()))


def test_trains_from_cli_and_python_calibrates_and_resumes_exactly(tmp_path):
    settings = dict(epochs=2, attack_steps=2, schedule="constant", batch_size=256)
    options = {"begin": "1", "threshold": "0"}
    code = cli_main([
        "train", "--plugin", "cfa", "-o", "cfa.begin=1", "-o", "cfa.threshold=0", "--epochs", "1",
        "--attack-steps", "2", "--schedule", "constant", "--batch-size", "256", "--out", str(tmp_path), "--no-progress",
    ])
    assert code == 0
    resumed = fairdefense.resume(tmp_path / "last.pt", epochs=2, progress=False)

    spy = Spy()
    straight = fairdefense.train(  # a cheaper test attack changes nothing in training
        plugins=["cfa", spy], plugin_options={"cfa": options}, eval_attacks=("pgd5",), progress=False, **settings
    )
    c = straight.config
    assert (c.objective, c.val_steps, c.val_size) == ("trades", 10, 0.1)  # the digits' own split
    assert "pgd10" in straight.history[0]["val"]["robust_acc"]
    # CCM: epoch 0 at the base radius, epoch 1 at (0.5 + t_k) * eps, t_k counted here from the
    # adversarial logits of epoch 0's batches
    hits, counts = [0] * 10, [0] * 10
    for epoch, y, correct in spy.correct:
        for label, ok in zip(y.tolist(), correct.tolist()):
            if epoch == 0:
                counts[label] += 1
                hits[label] += ok
    t = torch.tensor([h / n for h, n in zip(hits, counts)])
    for epoch, y, eps in spy.radii:
        expected = torch.full_like(eps, EPS) if epoch == 0 else ((0.5 + t) * EPS).float()[y]
        torch.testing.assert_close(eps, expected)
    assert {epoch for epoch, _, _ in spy.radii} == {0, 1}
    # FAWA with threshold 0 averages every epoch: copy of theta_1, then 0.88 theta_1 + 0.12 theta_2
    theta1, theta2 = spy.states
    averaged = straight.eval_model.state_dict()
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.88 * theta1[key] + 0.12 * theta2[key])
    # the run resumed from the CLI's checkpoint continues exactly like the uninterrupted one
    for got, want in ((resumed.model, straight.model), (resumed.eval_model, straight.eval_model)):
        a, b = got.state_dict(), want.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_cfa_without_fawa_with_ema_end_to_end():
    result = fairdefense.train(
        plugins=["cfa", "ema"], plugin_options={"cfa": {"fawa": "false"}}, epochs=1, attack_steps=2,
        batch_size=256, eval_attacks=("pgd5",), progress=False,
    )
    assert "val" not in result.history[0]  # no validation split without FAWA
    assert result.config.objective == "trades"
    assert result.eval_model is not result.model
