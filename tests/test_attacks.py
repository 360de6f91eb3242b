"""PGD: projection per sample, the analytic worst case of a linear model, losses, early stopping."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairdefense import ConfigError, pgd, pgd_early_stop
from fairdefense.attacks import attack_loss, project


def linear_two_class(w: torch.Tensor, b: float = 0.0) -> nn.Module:
    """Logits (0, w.x + b): class 1 iff w.x + b > 0."""
    model = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.tensor([0.0, b]))
    return model


def test_linf_reaches_analytic_worst_case_of_linear_model():
    torch.manual_seed(0)
    w = torch.randn(12)
    model = linear_two_class(w)
    x = torch.rand(5, 12) * 0.5 + 0.25  # away from the box, so clipping is inactive
    y = torch.ones(5, dtype=torch.long)
    eps = 0.05
    for loss in ("ce", "cw"):
        x_adv = pgd(model, x, y, eps, eps / 4, 10, loss=loss)
        reached = model(x_adv)[:, 1]
        expected = x @ w - eps * w.abs().sum()
        torch.testing.assert_close(reached, expected, atol=1e-5, rtol=0)


def test_l2_reaches_analytic_worst_case_of_linear_model():
    torch.manual_seed(1)
    w = torch.randn(6)
    model = linear_two_class(w)
    x = torch.full((3, 6), 0.5)
    y = torch.ones(3, dtype=torch.long)
    eps = 0.1
    x_adv = pgd(model, x, y, eps, eps, 5, norm="l2", random_start="none")
    torch.testing.assert_close(model(x_adv)[:, 1], x @ w - eps * w.norm(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_projection_holds_per_sample_and_stays_in_range(norm, start):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    x[0] = 0.0  # on the boundary of the valid range
    y = torch.randint(0, 3, (6,))
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.3, 0.5])
    x_adv = pgd(model, x, y, eps, eps / 2 + 0.01, 7, norm=norm, random_start=start)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv[0][x[0] == 0].clamp(max=0), torch.zeros_like(x_adv[0][x[0] == 0]))
    assert (size[1:] > 0).all(), "every sample with a positive radius moved"


def test_project_l2_scales_only_outside_the_ball():
    x = torch.zeros(2, 2)
    x_adv = torch.tensor([[3.0, 4.0], [0.03, 0.04]])
    out = project(x_adv, x, torch.tensor([1.0, 1.0]).view(2, 1), "l2", None)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.03, 0.04]]))


def test_attack_losses_match_their_definitions():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]])
    y = torch.tensor([0, 2])
    torch.testing.assert_close(attack_loss(logits, y, "cw"), torch.tensor([1.0 - 2.0, 3.0 - 0.5]))
    torch.testing.assert_close(attack_loss(logits, y, "ce"), F.cross_entropy(logits, y, reduction="none"))
    p = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    q = logits.softmax(1)
    torch.testing.assert_close(attack_loss(logits, y, "kl", p), (p * (p.log() - q.log())).sum(1))


def test_bad_attack_arguments_are_named():
    model = nn.Linear(2, 2)
    x, y = torch.rand(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ConfigError, match="norm"):
        pgd(model, x, y, 0.1, 0.1, 1, norm="l1")
    with pytest.raises(ConfigError, match="attack loss"):
        pgd(model, x, y, 0.1, 0.1, 1, loss="hinge")
    with pytest.raises(ConfigError, match=r"eps must be a scalar or have shape \(3,\)"):
        pgd(model, x, y, torch.ones(2), 0.1, 1)


def test_early_stop_records_boundary_iterates_of_a_known_boundary():
    # 1-D model: class 1 iff x > 0.5. Samples of class 1 pushed left by 0.1 per step.
    model = linear_two_class(torch.tensor([1.0]), b=-0.5)
    x = torch.tensor([[0.75], [0.45], [0.95]])  # correct (2.5 steps to cross), wrong at start, never fooled
    y = torch.tensor([1, 1, 1])
    eps = torch.tensor([0.5, 0.3, 0.2])
    for extra in (0, 1):
        rec = pgd_early_stop(model, x, y, eps, 0.1, 10, extra_steps=extra, random_start="none")
        # sample 0: iterates 0.75, 0.65, 0.55, 0.45 (first wrong), then 0.45 - extra*0.1
        assert rec.x_last_correct[0].item() == pytest.approx(0.55)
        assert rec.x_first_wrong[0].item() == pytest.approx(0.45 - 0.1 * extra)
        # sample 1: wrong at the start, keeps the start as last correct
        assert rec.x_last_correct[1].item() == pytest.approx(0.45)
        assert rec.x_first_wrong[1].item() == pytest.approx(0.45 - 0.1 * extra)
        # sample 2: never fooled (radius 0.2 keeps it above 0.75), keeps the final iterate
        assert rec.x_first_wrong[2].item() == pytest.approx(0.75)
        assert rec.x_last_correct[2].item() == pytest.approx(0.75)
        assert rec.fooled.tolist() == [True, True, False]
        assert rec.stop_step.tolist() == [3 + extra, 0 + extra, 10]
        assert torch.equal(rec.x_adv, rec.x_first_wrong)


def test_early_stop_ends_the_batch_when_every_sample_stopped():
    model = linear_two_class(torch.tensor([1.0]), b=-0.5)
    x = torch.tensor([[0.55], [0.65]])
    rec = pgd_early_stop(model, x, torch.tensor([1, 1]), 0.3, 0.1, 10, extra_steps=0, random_start="none")
    assert rec.steps == 2  # 0.65 -> 0.55 -> 0.45: both stopped at the third check
    assert rec.stop_step.tolist() == [1, 2]


def test_seeded_generator_makes_random_start_reproducible():
    model = nn.Linear(4, 2)
    x, y = torch.rand(3, 4), torch.zeros(3, dtype=torch.long)
    a = pgd(model, x, y, 0.1, 0.01, 2, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, 0.1, 0.01, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
