"""FairAdversarialTrainer on real ART objects: in-place training, hand-computed steps, plugins, migration."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator
from art.defences.trainer import (
    AdversarialTrainer,
    AdversarialTrainerFBFPyTorch,
    AdversarialTrainerMadryPGD,
    AdversarialTrainerTRADESPyTorch,
)
from art.estimators.classification import PyTorchClassifier
from sklearn.datasets import load_digits, load_wine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fairdefense
from fairdefense.art import FairAdversarialTrainer, from_art_trainer, per_class_robustness
from fairdefense.errors import ConfigError, PluginNotFoundError
from fairdefense.models import Normalized

MEAN, STD = 0.3, 0.4


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits as numpy 2 makes them: float64 in [0, 1], labels int64."""
    d = load_digits()
    return d.images[:n, None] / 16.0, d.target[:n]


def classifier(make=TinyCNN, lr: float = 0.1, seed: int = 0) -> PyTorchClassifier:
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer=opt, clip_values=(0.0, 1.0),
                             preprocessing=(MEAN, STD))


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class CountingPlugin(fairdefense.FairnessPlugin):
    """Records hook calls; scales every robust weight by ``scale``."""

    name = "counting"

    @dataclass
    class Options:
        scale: float = 1.0

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.batches, self.epochs = 0, 0

    def reweight(self, batch, outputs):
        self.batches += 1
        return fairdefense.LossWeights(robust=torch.full_like(batch.y, self.options.scale, dtype=torch.float32))

    def on_epoch_end(self, epoch, train_stats):
        self.epochs += 1


class ZeroWeightsToEvaluate(fairdefense.FairnessPlugin):
    """Supplies all-zero weights for evaluation/export."""

    name = "zero-eval"

    def weights_to_evaluate(self, epoch):
        return {k: torch.zeros_like(v) for k, v in epoch.model.state_dict().items()}


def test_one_pgd_at_step_equals_art_pgd_then_sgd_by_hand():
    x, y = digits(64)
    clf = classifier()
    ref = copy.deepcopy(clf.model)
    ref_clf = PyTorchClassifier(ref, nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0),
                                preprocessing=(MEAN, STD))
    trainer = FairAdversarialTrainer(clf, eps=0.2, eps_step=0.05, max_iter=3, num_random_init=0, progress=False)
    trainer.fit(x, np.eye(10)[y], nb_epochs=1, batch_size=64)

    art_pgd = ProjectedGradientDescent(ref_clf, eps=0.2, eps_step=0.05, max_iter=3, num_random_init=0, verbose=False)
    x_adv = torch.from_numpy(art_pgd.generate(x.astype(np.float32), y=np.eye(10)[y]))
    loss = F.cross_entropy(ref((x_adv - MEAN) / STD), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for new, old, g in zip(clf.model.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(new.detach(), old.detach() - 0.1 * g, rtol=1e-4, atol=1e-6)


def test_trades_on_sequential_uses_the_final_logits():
    """ART's TRADES trainer takes an nn.Sequential's first layer output as logits; ours the model's output."""
    x, y = digits(48)
    clf = classifier(mlp)
    ref = Normalized(copy.deepcopy(clf.model), [MEAN], [STD])
    trainer = FairAdversarialTrainer(clf, objective="trades", beta=3.0, eps=0.2, eps_step=0.05, max_iter=2,
                                     num_random_init=0, progress=False)
    trainer.fit(x, y, nb_epochs=1, batch_size=48)

    xt, yt = torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)
    x_adv = fairdefense.pgd(ref.eval(), xt, yt, 0.2, 0.05, 2, loss="kl", random_start="none")
    logits, logits_adv = ref(xt), ref(x_adv)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="none").sum(1).mean()
    grads = torch.autograd.grad(F.cross_entropy(logits, yt) + 3.0 * kl, list(ref.net.parameters()))
    for new, old, g in zip(clf.model.parameters(), ref.net.parameters(), grads):
        torch.testing.assert_close(new.detach(), old.detach() - 0.1 * g, rtol=1e-4, atol=1e-6)


def test_fit_trains_the_users_module_in_place_with_scheduler_plugins_and_validation():
    x, y = digits(300)
    clf = classifier()
    module, before = clf.model, params(clf.model)
    scheduler = torch.optim.lr_scheduler.StepLR(clf.optimizer, step_size=1, gamma=0.5)
    plugin = CountingPlugin()
    trainer = FairAdversarialTrainer(clf, plugins=[plugin], eps=0.2, max_iter=2, progress=False,
                                     config=fairdefense.TrainConfig(eval_attacks=("pgd3",)))
    result = trainer.fit(x[:240], y[:240], validation_data=(x[240:], y[240:]), batch_size=64, nb_epochs=2,
                         scheduler=scheduler)
    assert trainer.get_classifier() is clf and clf.model is module
    assert all((a - b).abs().max() > 0 for a, b in zip(params(module), before))
    assert clf.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # stepped once per epoch
    assert (plugin.batches, plugin.epochs) == (2 * 4, 2)  # ceil(240 / 64) = 4 batches per epoch
    report = trainer.report
    assert report is result.report and report.counts.sum() == 60
    preds = clf.predict(x[240:].astype(np.float32)).argmax(1)
    clean = [(preds[y[240:] == c] == c).mean() for c in range(10)]
    np.testing.assert_allclose(report.clean_acc.numpy(), clean)


def test_plugin_weights_reach_the_loss():
    x, y = digits(64)
    clf = classifier()
    clf.optimizer.param_groups[0]["momentum"] = 0.0
    before = params(clf.model)
    trainer = FairAdversarialTrainer(clf, plugins=[CountingPlugin(scale=0.0)], eps=0.2, max_iter=2, progress=False)
    trainer.fit(x, y, nb_epochs=1, batch_size=32)
    for a, b in zip(params(clf.model), before):
        torch.testing.assert_close(a, b)  # zero robust weights: zero loss, no update


@pytest.mark.parametrize("builtin", ["ema", "faal"])
def test_builtin_plugin_by_name_next_to_a_custom_one(builtin):
    pytest.importorskip(f"fairdefense_plugins.{builtin}")
    x, y = digits(128)
    clf = classifier()
    before = params(clf.model)
    plugin = CountingPlugin()
    trainer = FairAdversarialTrainer(clf, plugins=[builtin, plugin], eps=0.2, max_iter=2, progress=False,
                                     config=fairdefense.TrainConfig(val_size=20, val_steps=2))
    trainer.fit(x, y, nb_epochs=1, batch_size=64)
    assert plugin.epochs == 1 and plugin.batches >= 1
    assert any((a - b).abs().max() > 0 for a, b in zip(params(clf.model), before))


@pytest.mark.parametrize("weights", ["eval", "trained"])
def test_weights_to_evaluate_are_handed_back(weights):
    x, y = digits(64)
    clf = classifier()
    FairAdversarialTrainer(clf, plugins=[ZeroWeightsToEvaluate()], eps=0.2, max_iter=1, weights=weights,
                           progress=False).fit(x, y, nb_epochs=1, batch_size=64)
    zero = all(p.abs().max() == 0 for p in clf.model.parameters())
    assert zero == (weights == "eval")


def test_fit_generator_equals_fit_on_the_same_arrays():
    x, y = digits(96)
    onehot = np.eye(10)[y]
    results = []
    for feed in ("arrays", "numpy", "torch"):
        clf = classifier()
        trainer = FairAdversarialTrainer(clf, eps=0.2, max_iter=2, progress=False)
        if feed == "arrays":
            trainer.fit(x, y, batch_size=32, nb_epochs=1)
        elif feed == "numpy":
            trainer.fit_generator(NumpyDataGenerator(x, onehot, batch_size=32), nb_epochs=1)
        else:
            data = TensorDataset(torch.tensor(x), torch.tensor(onehot))
            trainer.fit_generator(PyTorchDataGenerator(DataLoader(data, batch_size=32), len(x), 32), nb_epochs=1)
        results.append(params(clf.model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b)


def test_art_pgd_object_gives_the_attack_settings():
    clf = classifier()
    pgd = ProjectedGradientDescent(clf, norm=2, eps=1.0, eps_step=0.3, max_iter=4, num_random_init=0, verbose=False)
    trainer = FairAdversarialTrainer(clf, pgd, progress=False)
    c = trainer.config
    assert (c.eps, c.eps_step, c.attack_steps, c.norm, trainer.num_random_init) == (1.0, 0.3, 4, "l2", 0)
    with pytest.raises(ConfigError, match="not both"):
        FairAdversarialTrainer(clf, pgd, eps=0.1)
    with pytest.raises(ConfigError, match="targeted"):
        FairAdversarialTrainer(clf, ProjectedGradientDescent(clf, eps=0.1, targeted=True, verbose=False))
    with pytest.raises(ConfigError, match="ProjectedGradientDescent"):
        FairAdversarialTrainer(clf, FastGradientMethod(clf, eps=0.1))


def test_bad_inputs_are_refused_with_the_fix():
    clf = classifier()
    with pytest.raises(ConfigError, match="eps is required"):
        FairAdversarialTrainer(clf)
    with pytest.raises(ConfigError, match="num_random_init=2"):
        FairAdversarialTrainer(clf, eps=0.1, num_random_init=2)
    with pytest.raises(ConfigError, match="L-inf and L2"):
        FairAdversarialTrainer(clf, eps=0.1, norm=1)
    with pytest.raises(PluginNotFoundError, match="unknown plugin 'no-such-plugin'"):
        FairAdversarialTrainer(clf, eps=0.1, plugins=["no-such-plugin"])
    with pytest.raises(ConfigError, match="class_names has 2 names"):
        FairAdversarialTrainer(clf, eps=0.1, class_names=["a", "b"])
    x, y = digits(16)
    trainer = FairAdversarialTrainer(clf, eps=0.1, max_iter=1, progress=False)
    with pytest.raises(ConfigError, match="ReduceLROnPlateau"):
        trainer.fit(x, y, nb_epochs=1, scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(clf.optimizer))
    other = torch.optim.SGD(TinyCNN().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="another optimizer"):
        trainer.fit(x, y, nb_epochs=1, scheduler=torch.optim.lr_scheduler.StepLR(other, 1))
    with pytest.raises(ConfigError, match="drop_last"):
        trainer.fit(x, y, nb_epochs=1, drop_last=True)
    with pytest.raises(ConfigError, match="0..9"):
        trainer.fit(x, y + 10, nb_epochs=1)


def test_migration_reads_art_trainers():
    clf = classifier()
    madry = AdversarialTrainerMadryPGD(clf, nb_epochs=3, batch_size=32, eps=0.2, eps_step=0.05, max_iter=2,
                                       num_random_init=0)
    ours = from_art_trainer(madry, plugins=[CountingPlugin()], progress=False)
    c = ours.config
    assert ours.get_classifier() is clf and (ours.nb_epochs, ours.batch_size) == (3, 32)
    read = (c.objective, c.eps, c.eps_step, c.attack_steps, c.norm, ours.num_random_init)
    assert read == ("at", 0.2, 0.05, 2, "linf", 0)
    before = params(clf.model)
    x, y = digits(64)
    ours.fit(x, y, nb_epochs=1)
    assert all((a - b).abs().max() > 0 for a, b in zip(params(clf.model), before))

    pgd = ProjectedGradientDescent(clf, eps=0.1, eps_step=0.02, max_iter=5, verbose=False)
    trades = from_art_trainer(AdversarialTrainerTRADESPyTorch(clf, pgd, beta=4.0), eps_step=0.03)
    c = trades.config
    assert (c.objective, c.beta, c.eps, c.eps_step, c.attack_steps) == ("trades", 4.0, 0.1, 0.03, 5)
    assert from_art_trainer(AdversarialTrainer(clf, pgd, ratio=1.0)).config.attack_steps == 5
    with pytest.raises(ConfigError, match="ratio=0.5"):
        from_art_trainer(AdversarialTrainer(clf, pgd, ratio=0.5))
    with pytest.raises(ConfigError, match="cannot migrate a AdversarialTrainerFBFPyTorch"):
        from_art_trainer(AdversarialTrainerFBFPyTorch(clf, eps=0.1))


def test_tabular_mlp_with_per_feature_clip_and_preprocessing():
    wine = load_wine()
    x = wine.data
    x = (x - x.min(0)) / (x.max(0) - x.min(0))  # scaled to [0, 1], float64
    y = wine.target
    d = x.shape[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 3))
    clf = PyTorchClassifier(model, nn.CrossEntropyLoss(), (d,), 3,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                            clip_values=(np.zeros(d), np.ones(d)), preprocessing=(x.mean(0), x.std(0)))
    with pytest.raises(ConfigError, match="not smaller than the input range"):
        FairAdversarialTrainer(clf, eps=1.0, progress=False).fit(x, y, nb_epochs=1)
    trainer = FairAdversarialTrainer(clf, plugins=[CountingPlugin()], eps=0.05, max_iter=3, progress=False,
                                     class_names=wine.target_names)
    trainer.fit(x, y, nb_epochs=15, batch_size=32)
    pgd = ProjectedGradientDescent(clf, eps=0.05, eps_step=0.0125, max_iter=5, num_random_init=0, verbose=False)
    report = per_class_robustness(clf, x, y, pgd, class_names=wine.target_names)
    assert report.class_names == list(wine.target_names)
    assert report.summary()["clean_acc"]["avg"] > 0.85
    x_adv = pgd.generate(x.astype(np.float32), y=np.eye(3)[y])
    assert np.all(x_adv >= 0) and np.all(x_adv <= 1) and np.abs(x_adv - x).max() <= 0.05 + 1e-6
