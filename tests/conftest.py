"""Shared test setup: single-threaded torch (deterministic, and fair on 2-core CI)."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    """Settings for a seconds-long training run on the embedded digits."""
    from fairdefense import TrainConfig

    return TrainConfig(epochs=1, attack_steps=2, batch_size=256, device="cpu")


@pytest.fixture(scope="session")
def digits_mlp():
    """A small MLP trained with plain CE on the digits (partly robust at eps 0.05, unevenly
    over classes), and the digits bundle. Shared: tests must not train it further."""
    import torch.nn.functional as F
    from torch import nn

    from fairdefense.data import load_dataset

    bundle = load_dataset("digits")
    x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), bundle.train_targets).backward()
        opt.step()
    return model.eval(), bundle
