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
