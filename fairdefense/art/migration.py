"""From an ART adversarial trainer to a :class:`FairAdversarialTrainer` in one line.

:func:`from_art_trainer` reads an existing ART trainer's classifier and settings
and builds the equivalent fairdefense trainer with fairness plugins::

    art_trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=30, eps=8/255, eps_step=2/255, max_iter=7)
    trainer = from_art_trainer(art_trainer, plugins=["faal"])      # was: art_trainer
    trainer.fit(x_train, y_train)

How each argument maps (also in ``docs/art.md``):

=================================  =====================================================
ART                                fairdefense
=================================  =====================================================
``AdversarialTrainerMadryPGD``     ``FairAdversarialTrainer(objective="at")``
``classifier``                     ``classifier`` (trained in place)
``nb_epochs``, ``batch_size``      ``nb_epochs``, ``batch_size``
``eps``, ``eps_step``, ``max_iter``  ``eps``, ``eps_step``, ``max_iter``
``num_random_init`` (0 or 1)       ``num_random_init``
``AdversarialTrainerTRADESPyTorch``  ``FairAdversarialTrainer(objective="trades")``
``attack`` (a PGD)                 its ``eps``, ``eps_step``, ``max_iter``, ``norm``,
                                   ``num_random_init`` (attacking TRADES's KL term)
``beta``                           ``beta``
``AdversarialTrainer(ratio=1.0)``  ``FairAdversarialTrainer(objective="at")`` with its
                                   single PGD attack's settings
=================================  =====================================================
"""
from __future__ import annotations

from typing import Any, Sequence

from fairdefense.art.adapters import pgd_settings
from fairdefense.art.trainer import FairAdversarialTrainer
from fairdefense.errors import ConfigError

__all__ = ["from_art_trainer", "art_trainer_settings"]


def art_trainer_settings(art_trainer: Any) -> dict[str, Any]:
    """The :class:`FairAdversarialTrainer` arguments equivalent to an ART trainer instance.

    Supports ``AdversarialTrainerMadryPGD``, ``AdversarialTrainerTRADESPyTorch`` and
    ``AdversarialTrainer`` with ``ratio=1.0`` and one ``ProjectedGradientDescent``.
    """
    from art.defences.trainer import (
        AdversarialTrainer,
        AdversarialTrainerMadryPGD,
        AdversarialTrainerTRADESPyTorch,
    )

    if isinstance(art_trainer, AdversarialTrainerMadryPGD):
        classifier = art_trainer.get_classifier()
        return {
            "classifier": classifier, **_attack(art_trainer.attack, classifier), "objective": "at",
            "nb_epochs": art_trainer.nb_epochs, "batch_size": art_trainer.batch_size,
        }
    if isinstance(art_trainer, AdversarialTrainerTRADESPyTorch):
        classifier = art_trainer.get_classifier()
        return {
            "classifier": classifier, **_attack(art_trainer._attack, classifier),
            "objective": "trades", "beta": float(art_trainer._beta),
        }
    if isinstance(art_trainer, AdversarialTrainer):
        if art_trainer.ratio != 1.0 or len(art_trainer.attacks) != 1:
            raise ConfigError(
                f"AdversarialTrainer with ratio={art_trainer.ratio} and {len(art_trainer.attacks)} attack(s) mixes "
                f"clean and adversarial samples or attacks; fairdefense migrates ratio=1.0 with one PGD attack "
                f"(for a clean term use objective='trades')."
            )
        classifier = art_trainer.get_classifier()
        return {"classifier": classifier, **_attack(art_trainer.attacks[0], classifier), "objective": "at"}
    raise ConfigError(
        f"cannot migrate a {type(art_trainer).__name__}; from_art_trainer supports AdversarialTrainerMadryPGD, "
        f"AdversarialTrainerTRADESPyTorch and AdversarialTrainer (ratio=1.0, one PGD attack)."
    )


def _attack(attack: Any, classifier: Any) -> dict[str, Any]:
    settings = pgd_settings(attack, classifier)
    return {
        "eps": settings["eps"], "eps_step": settings["eps_step"], "max_iter": settings["max_iter"],
        "norm": settings["norm"], "num_random_init": settings["num_random_init"],
    }


def from_art_trainer(art_trainer: Any, plugins: Sequence[Any] = (), **overrides: Any) -> FairAdversarialTrainer:
    """Build a :class:`FairAdversarialTrainer` from an ART trainer instance, adding ``plugins``.

    ``overrides`` replace any argument read from the ART trainer or set further
    :class:`FairAdversarialTrainer` arguments (``plugin_options``, ``class_names``,
    ``config``, ...).
    """
    settings = art_trainer_settings(art_trainer)
    settings.update(overrides)
    return FairAdversarialTrainer(settings.pop("classifier"), plugins=plugins, **settings)
