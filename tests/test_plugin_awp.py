"""AWP: the perturbation by hand, the trainer's perturb / step / restore, FAAL-AWP end to end."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import fairdefense
from fairdefense.cli import main as cli_main
from fairdefense_plugins.awp import AWP


def make_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: fairdefense.Objective, epoch: int = 0):
    run = fairdefense.RunInfo(3, ["a", "b", "c"], fairdefense.TrainConfig(), torch.device("cpu"))
    return fairdefense.BatchInfo(epoch, 0, 0, x, y, model, objective, 0.1, 0.025, run)


def data(n: int = 8, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    x_adv = (x + 0.1 * (2 * torch.rand(n, d, generator=g) - 1)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 3, (n,), generator=g)


def ce_weight_gradient(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d mean_i CE(W x_i + b, y_i) / d(W, b) = ((softmax - onehot)^T x / B, mean(softmax - onehot))."""
    residual = torch.softmax(x @ weight.T + bias, dim=1) - F.one_hot(y, weight.shape[0]).to(x)
    return residual.T @ x / len(y), residual.mean(dim=0)


def normalised(weight: torch.Tensor, direction: torch.Tensor, gamma: float) -> torch.Tensor:
    return gamma * weight.norm() * direction / direction.norm()


def test_perturbation_by_hand_pgd_at():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = copy.deepcopy(model.state_dict())
    x, x_adv, y = data()
    delta = AWP(gamma=0.02).perturb_weights(make_batch(model, x, y, fairdefense.PGDAT()), x_adv)
    grad_w, _ = ce_weight_gradient(before["weight"], before["bias"], x_adv, y)
    assert set(delta) == {"weight"}  # the bias (one dimension) is never perturbed
    assert torch.allclose(delta["weight"], normalised(before["weight"], grad_w, 0.02), atol=1e-7, rtol=1e-4)
    assert delta["weight"].norm().item() == pytest.approx(0.02 * before["weight"].norm().item(), rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the hook changes nothing


def test_perturbation_by_hand_trades_per_layer_with_batchnorm():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    before = copy.deepcopy(model.state_dict())
    x, x_adv, y = data(seed=1)
    delta = AWP().perturb_weights(make_batch(model, x, y, fairdefense.TRADES(beta=6.0)), x_adv)
    # reference: gradient of the unweighted TRADES loss, BatchNorm in train mode (batch statistics)
    reference = copy.deepcopy(model).train()
    logits_clean, logits_adv = reference(x), reference(x_adv)
    kl = (torch.softmax(logits_clean, 1) * (torch.log_softmax(logits_clean, 1) - torch.log_softmax(logits_adv, 1))).sum(1)
    loss = F.cross_entropy(logits_clean, y) + 6.0 * kl.mean()
    grads = torch.autograd.grad(loss, [reference[0].weight, reference[3].weight])
    assert set(delta) == {"0.weight", "3.weight"}  # biases and the BatchNorm affine weight are left alone
    for name, grad in zip(["0.weight", "3.weight"], grads):
        assert torch.allclose(delta[name], normalised(before[name], grad, 0.005), atol=1e-8, rtol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    assert not model.training


def test_proxy_is_kept_and_reloaded_every_batch():
    torch.manual_seed(2)
    model = nn.Linear(4, 3)
    plugin = AWP(gamma=0.01)
    x, x_adv, y = data(seed=2)
    plugin.perturb_weights(make_batch(model, x, y, fairdefense.PGDAT()), x_adv)
    proxy = plugin._proxy[1]
    with torch.no_grad():
        model.weight.mul_(-2.0)
    delta = plugin.perturb_weights(make_batch(model, x, y, fairdefense.PGDAT()), x_adv)
    assert plugin._proxy[1] is proxy
    grad_w, _ = ce_weight_gradient(model.weight.detach(), model.bias.detach(), x_adv, y)
    assert torch.allclose(delta["weight"], normalised(model.weight.detach(), grad_w, 0.01), atol=1e-7, rtol=1e-4)


def test_begin_and_zero_gamma_abstain():
    model = nn.Linear(4, 3)
    x, x_adv, y = data()
    assert AWP(begin=2).perturb_weights(make_batch(model, x, y, fairdefense.PGDAT(), epoch=1), x_adv) is None
    assert AWP(begin=2).perturb_weights(make_batch(model, x, y, fairdefense.PGDAT(), epoch=2), x_adv) is not None
    assert AWP(gamma=0.0).perturb_weights(make_batch(model, x, y, fairdefense.PGDAT()), x_adv) is None


@pytest.mark.parametrize("options, match", [({"gamma": -1}, "'gamma'"), ({"proxy_lr": 0}, "'proxy_lr'"), ({"begin": -3}, "'begin'")])
def test_option_errors(options, match):
    with pytest.raises(fairdefense.PluginOptionError, match=match):
        AWP.from_options(options)


class Spy(fairdefense.FairnessPlugin):
    """Records the batch, the robust inputs and the weights the loss was computed with."""

    name = "spy"

    def reweight(self, batch, outputs):
        self.x, self.y, self.x_adv = batch.x.clone(), batch.y.clone(), outputs.x_adv.clone()
        self.weights = {k: v.detach().clone() for k, v in batch.model.state_dict().items()}


def test_trainer_step_perturbs_then_restores_exactly():
    torch.manual_seed(3)
    x, _, y = data(n=16, seed=3)
    model = nn.Linear(4, 3)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    spy = Spy()
    lr, wd, gamma = 0.1, 5e-4, 0.01
    config = fairdefense.TrainConfig(
        epochs=1, batch_size=16, lr=lr, momentum=0.9, weight_decay=wd, schedule="constant", attack_steps=2,
        eps=0.1, eps_step=0.025, device="cpu", seed=0, objective="at",
    )
    fairdefense.Trainer(model, TensorDataset(x, y), ["a", "b", "c"], config, [AWP(gamma=gamma), spy], progress=False).fit()
    # by hand: perturbation at w0 on the recorded x_adv, SGD step (first momentum step = gradient + wd * w)
    # taken at the perturbed weights, then the perturbation is subtracted again; the bias is never perturbed
    grad_w, _ = ce_weight_gradient(w0, b0, spy.x_adv, spy.y)
    delta = normalised(w0, grad_w, gamma)
    w1 = w0 + delta
    assert torch.allclose(spy.weights["weight"], w1, atol=1e-7)
    assert torch.equal(spy.weights["bias"], b0)
    g_w, g_b = ce_weight_gradient(w1, b0, spy.x_adv, spy.y)
    expected_w = w1 - lr * (g_w + wd * w1) - delta
    expected_b = b0 - lr * (g_b + wd * b0)
    assert torch.allclose(model.weight.detach(), expected_w, atol=1e-6)
    assert torch.allclose(model.bias.detach(), expected_b, atol=1e-6)


def test_faal_awp_cli(tmp_path):
    code = cli_main(["train", "--plugin", "faal", "--plugin", "awp", "--epochs", "1", "--attack-steps", "2",
                     "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
    assert code == 0
    assert json.loads((tmp_path / "config.json").read_text())["plugins"] == ["faal", "awp"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["loss"])
