"""evaluate(): PGD-20 / CW-20 per class against a plain reference loop, boundary error, the worst-case row."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fairdefense import ConfigError, evaluate
from fairdefense.evaluation import attack_settings, parse_attack
from fairdefense.metrics import WORST_CASE

EPS = 0.05


@pytest.fixture(scope="module")
def digits_model(digits_mlp):
    """The shared digits MLP (conftest) and the first 120 test samples."""
    model, bundle = digits_mlp
    xt = torch.stack([bundle.test[i][0] for i in range(120)])
    yt = torch.stack([bundle.test[i][1] for i in range(120)])
    return model, xt, yt, bundle.class_names


class Recorder(nn.Module):
    """Wraps a model and keeps the inputs of its no-grad forwards (clean inputs, then each attack's output)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        if not torch.is_grad_enabled():
            self.inputs.append(x.detach().clone())
        return self.model(x)


def reference_attack(model, x, y, steps, loss, generator):
    """Textbook L-inf PGD: uniform start in the ball, `steps` sign steps of eps/4, project, clip to [0, 1]."""
    u = torch.rand(x.shape, generator=generator)
    x_adv = torch.clamp(x + (2 * u - 1) * EPS, 0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if loss == "ce":
            value = F.cross_entropy(logits, y, reduction="sum")
        else:  # CW margin: best other logit minus the true one
            true = logits[torch.arange(len(y)), y]
            other = logits.clone()
            other[torch.arange(len(y)), y] = -float("inf")
            value = (other.max(1).values - true).sum()
        (grad,) = torch.autograd.grad(value, x_adv)
        with torch.no_grad():
            x_adv = x_adv + EPS / 4 * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv.detach()


def per_class(y, ok, n=10):
    return torch.bincount(y, weights=ok.double(), minlength=n) / torch.bincount(y, minlength=n).double()


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def test_pgd20_and_cw20_equal_a_reference_loop_with_the_same_random_start(digits_model):
    model, x, y, names = digits_model
    recorder = Recorder(model)
    report = evaluate(recorder, batches(x, y, 50), names, ["pgd20", "cw20"], eps=EPS, seed=3)
    g = torch.Generator().manual_seed(3)
    ok = {"pgd20": [], "cw20": []}
    for b, (xb, yb) in enumerate(batches(x, y, 50)):  # evaluate draws each attack's start in turn, batch by batch
        clean, ours_pgd, ours_cw = recorder.inputs[3 * b:3 * b + 3]
        torch.testing.assert_close(clean, xb, rtol=0, atol=0)
        for name, loss, ours in (("pgd20", "ce", ours_pgd), ("cw20", "cw", ours_cw)):
            x_adv = reference_attack(model, xb, yb, 20, loss, g)
            torch.testing.assert_close(ours, x_adv, rtol=0, atol=1e-6)
            with torch.no_grad():
                ok[name].append(model(x_adv).argmax(1) == yb)
    pgd_ok, cw_ok = torch.cat(ok["pgd20"]), torch.cat(ok["cw20"])
    torch.testing.assert_close(report.robust_acc["pgd20"], per_class(y, pgd_ok), rtol=0, atol=0)
    torch.testing.assert_close(report.robust_acc["cw20"], per_class(y, cw_ok), rtol=0, atol=0)
    torch.testing.assert_close(report.robust_acc[WORST_CASE], per_class(y, pgd_ok & cw_ok), rtol=0, atol=0)
    # the check has teeth: robustness is partial and differs between classes
    acc = report.robust_acc["pgd20"]
    assert 0 < acc.mean() < report.clean_acc.mean() and acc.max() - acc.min() > 0.2


def test_boundary_error_is_clean_minus_robust_and_worst_case_is_below_every_attack(digits_model):
    model, x, y, names = digits_model
    report = evaluate(model, batches(x, y, 64), names, ["pgd5", "cw5"], eps=EPS, seed=0)
    with torch.no_grad():
        clean = per_class(y, model(x).argmax(1) == y)
    torch.testing.assert_close(report.clean_acc, clean, rtol=0, atol=0)
    for attack in ("pgd5", "cw5", WORST_CASE):
        torch.testing.assert_close(report.boundary_error(attack), clean - report.robust_acc[attack])
        torch.testing.assert_close(report.robust_error(attack), 1 - report.robust_acc[attack])
    for attack in ("pgd5", "cw5"):
        assert (report.robust_acc[WORST_CASE] <= report.robust_acc[attack]).all()
    assert (report.robust_acc[WORST_CASE] < torch.minimum(report.robust_acc["pgd5"], report.robust_acc["cw5"])).any() \
        or torch.equal(report.robust_acc["pgd5"], report.robust_acc["cw5"])


def test_deterministic_streamed_and_restores_training_mode(digits_model):
    model, x, y, names = digits_model
    net = nn.Sequential(nn.Dropout(0.5), model)  # dropout would change every forward in training mode
    net.train()
    seen = []

    def progress(it):
        for item in it:
            seen.append(len(item[1]))
            yield item

    one = evaluate(net, iter(batches(x, y, 32)), names, ["pgd3"], eps=EPS, seed=5, progress=progress)
    assert seen == [32, 32, 32, 24]
    assert net.training, "the caller's mode is restored"
    plain = evaluate(model, batches(x, y, 32), names, ["pgd3"], eps=EPS, seed=5)  # dropout off = eval mode
    two = evaluate(net, DataLoader(TensorDataset(x, y), batch_size=32), names, ["pgd3"], eps=EPS, seed=5)
    for other in (plain, two):
        torch.testing.assert_close(one.clean_acc, other.clean_acc, rtol=0, atol=0)
        torch.testing.assert_close(one.robust_acc["pgd3"], other.robust_acc["pgd3"], rtol=0, atol=0)


def test_attack_names_and_settings():
    assert parse_attack("pgd20") == ("ce", 20)
    assert parse_attack("cw7") == ("cw", 7)
    assert parse_attack("autoattack") == ("autoattack", 0)
    for bad in ("pgd0", "fgsm", "autoattack2", "PGD20"):
        with pytest.raises(ConfigError, match="unknown attack"):
            parse_attack(bad)
    s = attack_settings("cw20", eps=0.2, norm="linf", num_classes=10)
    assert s == {"kind": "pgd", "loss": "cw", "steps": 20, "eps": 0.2, "step_size": 0.05,
                 "random_start": "uniform", "norm": "linf"}
    aa = attack_settings("autoattack", eps=8 / 255, norm="linf", num_classes=10)
    assert aa["version"] == "standard" and aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["package"] in ("autoattack", "pyautoattack")
