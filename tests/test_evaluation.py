"""evaluate(): PGD-20 / CW-20 per class against a plain reference loop, boundary error, the worst-case row."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fairdefense import ConfigError, evaluate
from fairdefense.evaluation import attack_settings, parse_attack, scores_any_iterate
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


def test_trades_attack_equals_a_reference_kl_loop_from_a_small_gaussian_start(digits_model):
    model, x, y, names = digits_model
    recorder = Recorder(model)
    report = evaluate(recorder, batches(x, y, 50), names, ["trades5"], eps=EPS, seed=4, losses=True)
    g = torch.Generator().manual_seed(4)
    ok, ce, kl, adv_ce = [], [], [], []
    for b, (xb, yb) in enumerate(batches(x, y, 50)):
        # forwards without grad: the clean batch, the attack's clean probabilities, the final iterate
        clean, clean_again, ours = recorder.inputs[3 * b:3 * b + 3]
        torch.testing.assert_close(clean_again, xb, rtol=0, atol=0)
        with torch.no_grad():
            p_clean = model(xb).softmax(1)
        x_adv = (xb + 0.001 * torch.randn(xb.shape, generator=g)).clamp(0, 1)  # TRADES's start, not uniform
        for _ in range(5):
            x_adv.requires_grad_(True)
            q = model(x_adv).log_softmax(1)
            value = (p_clean * (p_clean.log() - q)).sum()  # KL(f(x) || f(x')), written out
            (grad,) = torch.autograd.grad(value, x_adv)
            with torch.no_grad():
                x_adv = (x_adv + EPS / 4 * grad.sign()).clamp(xb - EPS, xb + EPS).clamp(0, 1)
        torch.testing.assert_close(ours, x_adv, rtol=0, atol=1e-6)
        with torch.no_grad():
            logits, adv_logits = model(xb), model(x_adv)
        ok.append(adv_logits.argmax(1) == yb)
        ce.append(F.cross_entropy(logits, yb, reduction="none"))
        adv_ce.append(F.cross_entropy(adv_logits, yb, reduction="none"))
        kl.append((p_clean * (p_clean.log() - adv_logits.log_softmax(1))).sum(1))
    torch.testing.assert_close(report.robust_acc["trades5"], per_class(y, torch.cat(ok)), rtol=0, atol=0)
    for key, values in (("clean_ce", ce), ("adv_ce", adv_ce), ("kl", kl)):
        expected = torch.bincount(y, weights=torch.cat(values).double(), minlength=10) / torch.bincount(y, minlength=10)
        torch.testing.assert_close(report.losses[key], expected, rtol=1e-5, atol=1e-7)
    assert report.losses["kl"].min() > 0 and 0 < report.robust_acc["trades5"].mean() < report.clean_acc.mean()


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
    assert parse_attack("trades10") == ("kl", 10) and parse_attack("trades10-any") == ("kl", 10)
    assert parse_attack("autoattack") == ("autoattack", 0)
    for bad in ("pgd0", "fgsm", "autoattack2", "PGD20"):
        with pytest.raises(ConfigError, match="unknown attack"):
            parse_attack(bad)
    assert parse_attack("pgd20-any") == ("ce", 20) and scores_any_iterate("pgd20-any")
    assert not scores_any_iterate("pgd20") and not scores_any_iterate("autoattack")
    for bad in ("pgd20-all", "autoattack-any"):
        with pytest.raises(ConfigError, match="-any"):
            parse_attack(bad)
    s = attack_settings("cw20", eps=0.2, norm="linf", num_classes=10)
    assert s == {"kind": "pgd", "loss": "cw", "steps": 20, "eps": 0.2, "step_size": 0.05,
                 "random_start": "uniform", "norm": "linf", "scored": "final iterate"}
    assert attack_settings("trades10", eps=0.2, norm="linf", num_classes=10) == {
        "kind": "pgd", "loss": "kl", "steps": 10, "eps": 0.2, "step_size": 0.05, "random_start": "normal",
        "sigma": 0.001, "norm": "linf", "scored": "final iterate"}
    assert attack_settings("cw20-any", eps=0.2, norm="linf", num_classes=10)["scored"] == "any iterate"
    aa = attack_settings("autoattack", eps=8 / 255, norm="linf", num_classes=10)
    assert aa["version"] == "standard" and aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa["package"] in ("autoattack", "pyautoattack")


def reference_any_iterate(model, x, y, steps, generator):
    """Textbook PGD as above, but a sample is robust only if the start, every step and the final
    iterate are all classified correctly (FAAL's evaluator: frozen at the first success)."""
    u = torch.rand(x.shape, generator=generator)
    x_adv = torch.clamp(x + (2 * u - 1) * EPS, 0, 1)
    ok = torch.ones(len(y), dtype=torch.bool)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        ok &= logits.argmax(1) == y
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + EPS / 4 * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    with torch.no_grad():
        ok &= model(x_adv).argmax(1) == y
    return ok


class Oscillator(nn.Module):
    """Two classes from the second input coordinate t: class 1 only in a band of half-width
    0.005 around t = 0.53, narrower than the PGD step (EPS/4 = 0.0125). CE ascent walks t to
    the band and then jumps across it, so many samples are fooled at some iterate but not
    at the final one."""

    def forward(self, x):
        t = x[:, 1]
        return torch.stack([torch.zeros_like(t), 1 - ((t - 0.53) / 0.005) ** 2], 1)


def test_any_iterate_scores_the_worst_iterate_of_the_same_trajectory():
    model = Oscillator()
    x = torch.full((200, 2), 0.5)
    y = torch.zeros(200, dtype=torch.long)
    data = batches(x, y, 50)
    worst = evaluate(model, data, ["0", "1"], ["pgd10-any"], eps=EPS, seed=2)
    final = evaluate(model, data, ["0", "1"], ["pgd10"], eps=EPS, seed=2)  # the same starts
    g = torch.Generator().manual_seed(2)
    ok_any = torch.cat([reference_any_iterate(model, xb, yb, 10, g) for xb, yb in data])
    g = torch.Generator().manual_seed(2)
    ok_final = torch.cat([model(reference_attack(model, xb, yb, 10, "ce", g)).argmax(1) == yb for xb, yb in data])
    assert worst.robust_acc["pgd10-any"][0].item() == ok_any.double().mean().item()
    assert final.robust_acc["pgd10"][0].item() == ok_final.double().mean().item()
    assert ok_any.double().mean() < ok_final.double().mean() - 0.1  # the choice matters on this model


class TableModel(nn.Module):
    """Predicts from a lookup table: input ``[id / 100, 0.5]``; the clean prediction of sample
    ``id`` while the input is unperturbed, its "attacked" prediction once any perturbation
    moves the second coordinate (the random start always does). Gradients are zero."""

    def __init__(self, clean_pred, adv_pred, num_classes):
        super().__init__()
        self.clean = torch.tensor(clean_pred)
        self.adv = torch.tensor(adv_pred)
        self.c = num_classes

    def forward(self, x):
        ids = torch.round(x[:, 0] * 100).long()
        moved = (x[:, 1] - 0.5).abs() > 1e-9
        pred = torch.where(moved, self.adv[ids], self.clean[ids])
        return F.one_hot(pred, self.c).double() * 5 + 0 * x.sum(1, keepdim=True)


def test_per_class_figures_and_confusion_match_a_hand_built_table():
    # sample:      0  1  2  3  4  5  6  7
    y = [0, 0, 0, 1, 1, 2, 2, 2]
    clean_pred = [0, 0, 1, 1, 1, 2, 2, 0]
    adv_pred = [0, 2, 1, 1, 2, 0, 2, 0]
    x = torch.tensor([[i / 100, 0.5] for i in range(8)], dtype=torch.float64)
    model = TableModel(clean_pred, adv_pred, 3)
    data = [(x[:5], torch.tensor(y[:5])), (x[5:], torch.tensor(y[5:]))]
    report = evaluate(model, data, ["a", "b", "c"], ["pgd3", "cw2"], eps=0.001, clip=None)
    # by hand: class a: clean 2/3 (samples 0, 1), robust 1/3 (sample 0); class b: clean 2/2, robust 1/2;
    # class c: clean 2/3 (samples 5, 6), robust 1/3 (sample 6)
    assert report.counts.tolist() == [3, 2, 3]
    torch.testing.assert_close(report.clean_acc, torch.tensor([2 / 3, 1.0, 2 / 3], dtype=torch.float64))
    for attack in ("pgd3", "cw2", WORST_CASE):
        torch.testing.assert_close(report.robust_acc[attack], torch.tensor([1 / 3, 0.5, 1 / 3], dtype=torch.float64))
        torch.testing.assert_close(report.boundary_error(attack), torch.tensor([1 / 3, 0.5, 1 / 3], dtype=torch.float64))
    s = report.summary()
    assert s["pgd3/robust_acc"]["worst"] == pytest.approx(1 / 3)
    assert s["pgd3/robust_acc"]["avg"] == pytest.approx((1 / 3 + 0.5 + 1 / 3) / 3)
    assert s["pgd3/boundary_error"]["worst"] == pytest.approx(0.5)
    # adversarial confusion, rows = true class: a -> {a: 1, c: 1, b: 1}; b -> {b: 1, c: 1}; c -> {a: 2, c: 1}
    expected = [[1, 1, 1], [0, 1, 1], [2, 0, 1]]
    assert report.confusion["pgd3"].tolist() == expected and report.confusion["cw2"].tolist() == expected
    assert WORST_CASE not in report.confusion
