"""ART PyTorchClassifier -> fairdefense: folding, conversions and refusals, checked against ART itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.preprocessor import GaussianAugmentation, MixupPyTorch, SpatialSmoothing
from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
from art.estimators.classification import PyTorchClassifier, SklearnClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

import fairdefense
from fairdefense.art import InputSpaceModel, unwrap
from fairdefense.art.adapters import check_settings, norm_name, pgd_settings, to_inputs, to_labels
from fairdefense.errors import ConfigError

MEAN, STD = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6, 0.7])


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Squash(PreprocessorPyTorch):
    """A differentiable PyTorch preprocessing defence (tanh squashing)."""

    def __init__(self, apply_fit: bool = True, apply_predict: bool = True) -> None:
        super().__init__(device_type="cpu", apply_fit=apply_fit, apply_predict=apply_predict)

    def forward(self, x, y=None):
        return torch.tanh(3 * x), y


def images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


def classifier(model: nn.Module | None = None, **kwargs) -> PyTorchClassifier:
    torch.manual_seed(0)
    model = model if model is not None else TinyCNN()
    settings = dict(clip_values=(0.0, 1.0), preprocessing=(MEAN, STD),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    settings.update(kwargs)
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (3, 8, 8), 10, **settings)


def sequential() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


@pytest.mark.parametrize("make", [TinyCNN, sequential], ids=["module", "sequential"])
def test_folded_model_matches_art_predictions_and_gradients(make):
    clf = classifier(make())
    parts = unwrap(clf)
    x, y = images()
    assert parts.module is clf.model and isinstance(parts.model, InputSpaceModel) and parts.model.net is clf.model
    parts.model.eval()
    logits = parts.model(torch.from_numpy(x))
    np.testing.assert_allclose(logits.detach().numpy(), clf.predict(x), rtol=1e-5, atol=1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(parts.model(xt), torch.from_numpy(y)), xt)
    np.testing.assert_allclose(grad.numpy(), clf.loss_gradient(x, np.eye(10)[y]), rtol=1e-4, atol=1e-8)


def test_standardisation_is_per_channel_by_hand():
    clf = classifier()
    x, _ = images(4)
    net = clf.model.eval()
    by_hand = (torch.from_numpy(x) - torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float32).view(1, 3, 1, 1)
    torch.testing.assert_close(unwrap(clf).model(torch.from_numpy(x)), net(by_hand))


def test_no_preprocessing_gives_the_users_module_and_scalar_clip():
    clf = classifier(preprocessing=None)
    parts = unwrap(clf)
    assert parts.model is clf.model
    assert parts.clip == (0.0, 1.0) and parts.input_shape == (3, 8, 8) and parts.num_classes == 10
    assert parts.device == torch.device("cpu") and parts.optimizer is clf.optimizer


def test_tabular_per_feature_preprocessing_and_clip():
    rng = np.random.default_rng(1)
    x = rng.random((30, 5)).astype(np.float32)
    high = np.array([1.0, 2.0, 1.0, 1.0, 1.0])
    clf = PyTorchClassifier(nn.Linear(5, 3), nn.CrossEntropyLoss(), (5,), 3, clip_values=(np.zeros(5), high),
                            preprocessing=(x.mean(0), x.std(0)))
    parts = unwrap(clf)
    np.testing.assert_allclose(parts.model(torch.from_numpy(x)).detach().numpy(), clf.predict(x), rtol=1e-5, atol=1e-6)
    low_t, high_t = parts.clip
    assert torch.equal(low_t, torch.zeros(5)) and torch.equal(high_t, torch.tensor(high, dtype=torch.float32))


def test_pytorch_preprocessing_defence_folds_with_art_fit_predict_semantics():
    x, y = images(8)
    clf = classifier(preprocessing_defences=[Squash(apply_fit=False, apply_predict=True)])
    model = unwrap(clf).model
    model.eval()  # attacks and evaluation: ART's predict path applies the defence
    np.testing.assert_allclose(model(torch.from_numpy(x)).detach().numpy(), clf.predict(x), rtol=1e-5, atol=1e-6)
    xt = torch.from_numpy(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xt), torch.from_numpy(y)), xt)
    np.testing.assert_allclose(grad.numpy(), clf.loss_gradient(x, np.eye(10)[y]), rtol=1e-4, atol=1e-8)
    model.train()  # fitting: apply_fit=False skips the defence, standardisation still applies
    plain = unwrap(classifier()).model.eval()
    torch.testing.assert_close(model(torch.from_numpy(x)), plain(torch.from_numpy(x)))


def test_our_pgd_on_the_folded_model_equals_arts_pgd():
    clf = classifier()
    x, y = images(32)
    art_pgd = ProjectedGradientDescent(clf, eps=0.1, eps_step=0.03, max_iter=5, num_random_init=0, verbose=False)
    x_art = art_pgd.generate(x, y=np.eye(10)[y])
    x_ours = fairdefense.pgd(unwrap(clf).model.eval(), torch.from_numpy(x), torch.from_numpy(y), 0.1, 0.03, 5,
                             random_start="none")
    assert np.abs(x_art - x).max() > 0.05
    np.testing.assert_allclose(x_ours.numpy(), x_art, atol=1e-6)


def test_labels_and_inputs_conversion():
    idx = np.array([2, 0, 1])
    for y in (idx, idx[:, None], np.eye(3)[idx], idx.astype(np.float64)):
        assert torch.equal(to_labels(y, 3), torch.tensor([2, 0, 1]))
    with pytest.raises(ConfigError, match="0..2"):
        to_labels(np.array([0, 3]), 3)
    with pytest.raises(ConfigError, match="2 labels for 3 inputs"):
        to_labels(np.array([0, 1]), 3, n=3)
    x = to_inputs(np.ones((2, 5), dtype=np.float64), (5,))
    assert x.dtype == torch.float32
    with pytest.raises(ConfigError, match="input_shape"):
        to_inputs(np.ones((2, 4)), (5,))


def test_norms_and_settings():
    assert norm_name(np.inf) == norm_name("inf") == norm_name(float("inf")) == "linf"
    assert norm_name(2) == norm_name("2") == "l2"
    with pytest.raises(ConfigError, match="L-inf and L2"):
        norm_name(1)
    with pytest.raises(ConfigError, match="num_random_init=3"):
        check_settings(0.1, None, None, None, 3)
    assert check_settings(np.float32(0.1), None, 7, "inf", 0)["eps"] == pytest.approx(0.1)


def test_pgd_settings_read_and_refused():
    clf = classifier()
    pgd = ProjectedGradientDescent(clf, norm=2, eps=0.5, eps_step=0.1, max_iter=7, num_random_init=1, verbose=False)
    assert pgd_settings(pgd, clf) == {"eps": 0.5, "eps_step": 0.1, "max_iter": 7, "norm": "l2", "num_random_init": 1}
    with pytest.raises(ConfigError, match="targeted"):
        pgd_settings(ProjectedGradientDescent(clf, eps=0.1, targeted=True, verbose=False), clf)
    with pytest.raises(ConfigError, match="num_random_init=2"):
        pgd_settings(ProjectedGradientDescent(clf, eps=0.1, num_random_init=2, verbose=False), clf)
    with pytest.raises(ConfigError, match="another estimator"):
        pgd_settings(ProjectedGradientDescent(classifier(), eps=0.1, verbose=False), clf)
    eps = np.full((1, 3, 8, 8), 0.1, dtype=np.float32)
    with pytest.raises(ConfigError, match="array of shape"):
        pgd_settings(ProjectedGradientDescent(clf, eps=eps, eps_step=eps / 4, verbose=False), clf)


def test_refusals_name_the_problem_and_the_fix():
    with pytest.raises(ConfigError, match="no optimizer.*optimizer=torch.optim"):
        unwrap(classifier(optimizer=None), training=True)
    assert unwrap(classifier(optimizer=None)).optimizer is None  # evaluation needs none
    other = torch.optim.SGD(TinyCNN().parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="holds none of its model's parameters"):
        unwrap(classifier(optimizer=other), training=True)
    sk = SklearnClassifier(LogisticRegression(max_iter=50).fit(np.random.rand(20, 4), np.arange(20) % 3))
    with pytest.raises(ConfigError, match="scikitlearn.*PyTorchClassifier"):
        unwrap(sk)
    with pytest.raises(ConfigError, match="SpatialSmoothing runs in numpy.*SpatialSmoothingPyTorch"):
        unwrap(classifier(preprocessing_defences=SpatialSmoothing(window_size=3)))
    with pytest.raises(ConfigError, match="GaussianAugmentation runs in numpy.*remove it"):
        unwrap(classifier(preprocessing_defences=GaussianAugmentation(sigma=0.1)))
    with pytest.raises(ConfigError, match="MixupPyTorch mixes labels"):
        unwrap(classifier(preprocessing_defences=MixupPyTorch(num_classes=10)))
    model = TinyCNN()
    mse = PyTorchClassifier(model, nn.MSELoss(), (3, 8, 8), 10, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="MSELoss.*CrossEntropyLoss"):
        unwrap(mse, training=True)
    weighted = PyTorchClassifier(model, nn.CrossEntropyLoss(weight=torch.ones(10)), (3, 8, 8), 10,
                                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="class weights"):
        unwrap(weighted, training=True)
