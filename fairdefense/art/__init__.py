"""fairdefense for IBM ART pipelines: add fairness plugins to an existing ``PyTorchClassifier``.

- :class:`FairAdversarialTrainer`: an ART ``Trainer`` that trains the user's classifier
  in place with fairdefense's trainer and plugins.
- :func:`from_art_trainer`: the same settings as an existing ART adversarial trainer.
- :func:`per_class_robustness`: per-class robust accuracy under fairdefense's PGD or any
  ART evasion attack.
- :func:`unwrap`: the adapter from a ``PyTorchClassifier`` to module, optimizer, clip values
  and preprocessing folded into the forward pass.

See ``docs/art.md``.
"""
from __future__ import annotations

from fairdefense.art.adapters import ARTParts, InputSpaceModel, unwrap
from fairdefense.art.migration import art_trainer_settings, from_art_trainer
from fairdefense.art.robustness import per_class_robustness
from fairdefense.art.trainer import FairAdversarialTrainer

__all__ = [
    "FairAdversarialTrainer",
    "from_art_trainer",
    "art_trainer_settings",
    "per_class_robustness",
    "unwrap",
    "ARTParts",
    "InputSpaceModel",
]
