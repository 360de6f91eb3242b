"""The CIFAR-style models: sizes, layouts that load the authors' checkpoints, blocks
against a hand-written reference, forward and one training step on CPU."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from fairdefense import ConfigError, Trainer, TrainConfig, create_model, list_models
from fairdefense.models.preact_resnet import PreActBlock
from fairdefense.models.resnet import BasicBlock
from fairdefense.models.wide_resnet import WideBlock, WideResNet
from fairdefense.trainer import load_weights

# Published sizes for 10 classes: kuangliu/pytorch-cifar's ResNet-18 and PreAct-ResNet-18,
# TRADES / RobustBench WRN-28-10 and WRN-34-10. This PreAct-ResNet-18 adds the final
# BatchNorm(512) of the CFA / FAAL code: 2 x 512 more parameters.
KNOWN_SIZES = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_171_146 + 2 * 512,
    "wrn28_10": 36_479_194,
    "wrn34_10": 46_160_474,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered():
    assert set(KNOWN_SIZES) <= set(list_models())
    assert list_models("*resnet*") == ["preact_resnet18", "resnet18"]
    assert list_models("wrn*") == ["wrn28_10", "wrn34_10"]


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn28_10", "wrn34_10"])
def test_parameter_count(name):
    assert n_params(create_model(name, 10, (3, 32, 32))) == KNOWN_SIZES[name]


def test_wrn34_10_forward_one_image():
    torch.manual_seed(0)
    model = create_model("wrn34_10", 10, (3, 32, 32)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_wrn_initialisation_is_he_fan_out():
    torch.manual_seed(0)
    model = WideResNet(depth=16, widen_factor=4)
    conv = model.block3.layer[1].conv2  # 256 -> 256 channels, 3x3
    expected = math.sqrt(2.0 / (3 * 3 * 256))
    assert abs(conv.weight.std().item() / expected - 1) < 0.01
    assert torch.equal(model.fc.bias, torch.zeros(10))
    with pytest.raises(ConfigError, match="6n \\+ 4"):
        WideResNet(depth=30)


def test_state_dict_layouts_match_the_authors_code():
    keys = {name: set(create_model(name, 10, (3, 32, 32)).state_dict()) for name in KNOWN_SIZES}
    assert {"conv1.weight", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "bn.running_mean",
            "linear.weight"} <= keys["preact_resnet18"]
    assert "layer1.0.shortcut.0.weight" not in keys["preact_resnet18"]
    assert {"bn1.weight", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
            "layer4.1.bn2.bias", "linear.bias"} <= keys["resnet18"]
    assert {"block1.layer.0.convShortcut.weight", "block2.layer.0.convShortcut.weight",
            "block3.layer.4.conv2.weight", "bn1.running_var", "fc.weight"} <= keys["wrn34_10"]
    assert "block1.layer.1.convShortcut.weight" not in keys["wrn34_10"]
    assert "block3.layer.4.conv2.weight" not in keys["wrn28_10"] and "block3.layer.3.conv2.weight" in keys["wrn28_10"]


def _bn(x, bn):  # eval-mode batch norm from the module's statistics
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _randomise(module):
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return module.eval()


@pytest.mark.parametrize("in_planes,planes,stride", [(4, 4, 1), (4, 6, 2)])
def test_blocks_against_reference(in_planes, planes, stride):
    x = torch.randn(2, in_planes, 8, 8)
    conv = lambda x, c: F.conv2d(x, c.weight, None, c.stride, c.padding)  # noqa: E731
    changes = stride != 1 or in_planes != planes

    b = _randomise(PreActBlock(in_planes, planes, stride))
    a = F.relu(_bn(x, b.bn1))
    ref = conv(F.relu(_bn(conv(a, b.conv1), b.bn2)), b.conv2) + (conv(a, b.shortcut[0]) if changes else x)
    assert torch.allclose(b(x), ref, atol=1e-5)

    w = _randomise(WideBlock(in_planes, planes, stride))
    a = F.relu(_bn(x, w.bn1))
    ref = conv(F.relu(_bn(conv(a, w.conv1), w.bn2)), w.conv2) + (conv(a, w.convShortcut) if changes else x)
    assert torch.allclose(w(x), ref, atol=1e-5)

    r = _randomise(BasicBlock(in_planes, planes, stride))
    short = _bn(conv(x, r.shortcut[0]), r.shortcut[1]) if changes else x
    ref = F.relu(_bn(conv(F.relu(_bn(conv(x, r.conv1), r.bn1)), r.conv2), r.bn2) + short)
    assert torch.allclose(r(x), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18"])
def test_other_shapes(name):
    model = create_model(name, 100, (1, 64, 64)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 100)


@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18"])
def test_one_adversarial_training_step(name):
    torch.manual_seed(0)
    model = create_model(name, 10, (3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = TensorDataset(torch.rand(2, 3, 32, 32), torch.tensor([3, 7]))
    config = TrainConfig(epochs=1, attack_steps=1, batch_size=2, eps=8 / 255, device="cpu")
    result = Trainer(model, data, [str(k) for k in range(10)], config, progress=False).fit()
    assert math.isfinite(result.history[0]["loss"])
    after = model.state_dict()
    assert not torch.equal(after["net.linear.weight"], before["net.linear.weight"])
    assert not torch.equal(after["net.conv1.weight"], before["net.conv1.weight"])
    assert not torch.equal(after["net.layer4.1.bn2.running_mean"], before["net.layer4.1.bn2.running_mean"])


@pytest.mark.parametrize("name", ["preact_resnet18", "resnet18", "wrn28_10"])
def test_plain_state_dict_loads_for_init(tmp_path, name):
    """--init accepts a state_dict saved from the bare network (e.g. the authors' files)."""
    torch.manual_seed(0)
    source = create_model(name, 10, (3, 32, 32))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    target = create_model(name, 10, (3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    load_weights(target, tmp_path / "w.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.net.state_dict()[key], value), key
    other = "resnet18" if name != "resnet18" else "preact_resnet18"
    with pytest.raises(ConfigError, match="do not fit"):
        load_weights(create_model(other, 10, (3, 32, 32)), tmp_path / "w.pt")
