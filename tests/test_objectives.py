"""PGD-AT and TRADES per-sample terms and their weighted reduction."""
import torch
import torch.nn.functional as F
from torch import nn

from fairdefense import make_objective


def test_trades_terms_and_weighted_reduction():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, x_adv = torch.rand(5, 3), torch.rand(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    obj = make_objective("trades", beta=6.0)
    t = obj.terms(model, x, y, x_adv)
    p, q = F.softmax(model(x), 1), F.softmax(model(x_adv), 1)
    torch.testing.assert_close(t.robust, (p * (p.log() - q.log())).sum(1))
    torch.testing.assert_close(t.natural, F.cross_entropy(model(x), y, reduction="none"))
    w_nat, w_rob = torch.rand(5), torch.rand(5)
    expected = (w_nat * t.natural).mean() + 6.0 * (w_rob * t.robust).mean()
    torch.testing.assert_close(obj.reduce(t, w_nat, w_rob), expected)


def test_trades_natural_input_can_be_replaced_but_kl_anchor_stays_clean():
    model = nn.Linear(2, 2)
    x, x_nat, x_adv = torch.rand(3, 2), torch.rand(3, 2), torch.rand(3, 2)
    y = torch.tensor([0, 1, 0])
    t = make_objective("trades").terms(model, x, y, x_adv, x_natural=x_nat)
    torch.testing.assert_close(t.natural, F.cross_entropy(model(x_nat), y, reduction="none"))
    torch.testing.assert_close(t.logits_clean, model(x))


def test_pgd_at_is_cross_entropy_on_adversarial_inputs():
    model = nn.Linear(2, 3)
    x, x_adv, y = torch.rand(4, 2), torch.rand(4, 2), torch.tensor([0, 1, 2, 1])
    obj = make_objective("at")
    t = obj.terms(model, x, y, x_adv)
    assert t.natural is None and t.logits_clean is None
    torch.testing.assert_close(obj.reduce(t), F.cross_entropy(model(x_adv), y))
