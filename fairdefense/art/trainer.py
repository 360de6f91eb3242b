"""``FairAdversarialTrainer``: fairness plugins in an existing ART pipeline.

An ART ``Trainer`` (``art.defences.trainer.Trainer``) that trains the user's own
``PyTorchClassifier`` in place with :class:`fairdefense.Trainer` underneath: the
batched PGD-AT or TRADES loop with fairness plugins called every batch and epoch::

    from fairdefense.art import FairAdversarialTrainer

    trainer = FairAdversarialTrainer(classifier, plugins=["faal"], eps=8/255, eps_step=2/255, max_iter=10)
    trainer.fit(x_train, y_train, nb_epochs=30, batch_size=128)
    classifier = trainer.get_classifier()      # the same object, trained

Attack settings are ART's (``eps``, ``eps_step``, ``max_iter``, ``norm``,
``num_random_init``) or are read from an ART ``ProjectedGradientDescent`` passed
as ``attack``. ``objective="trades"`` trains with TRADES, whose inner attack
maximises TRADES's KL term (as the paper does) with those settings.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from art.defences.trainer.trainer import Trainer as ARTTrainer
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from fairdefense.art.adapters import check_settings, class_names_for, pgd_settings, to_inputs, to_labels, unwrap
from fairdefense.config import TrainConfig
from fairdefense.errors import ConfigError
from fairdefense.pluginhost import PluginHost
from fairdefense.metrics import ClassReport
from fairdefense.trainer import Trainer, TrainResult

__all__ = ["FairAdversarialTrainer"]


class _KeepLR:
    """The scheduler used when none is given: leaves the optimizer's learning rate as it is."""

    def step(self) -> None:
        """Nothing to do."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class _IndexLabels(Dataset):
    """A dataset's samples as float32 inputs and integer class labels (one-hot rows become indices)."""

    def __init__(self, base: Dataset, num_classes: int) -> None:
        self.base, self.num_classes = base, num_classes

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[i]
        y = torch.as_tensor(y)
        label = y.argmax() if y.dim() == 1 and y.numel() == self.num_classes > 1 else y.reshape(())
        return torch.as_tensor(x, dtype=torch.float32), label.long()


class FairAdversarialTrainer(ARTTrainer):
    """Adversarial training of an ART ``PyTorchClassifier`` with fairness plugins.

    Parameters
    ----------
    classifier:
        The ``PyTorchClassifier`` to train. Its module (``classifier.model``) and
        optimizer are trained in place; its preprocessing (mean/std, PyTorch
        preprocessing defences) is folded into the forward pass so that attacks run
        in input space, where ``clip_values`` and ``eps`` are given. Without
        ``clip_values`` the inputs are unbounded: attack iterates stay in the eps-ball
        and are not clipped, as ART's own attacks do.
    attack:
        Optional ART ``ProjectedGradientDescent`` on ``classifier`` whose ``eps``,
        ``eps_step``, ``max_iter``, ``norm`` and ``num_random_init`` are used (not its
        ``generate``: fairdefense runs its own batched PGD). Exclusive with the
        ART-style arguments below.
    plugins:
        Installed plugin names and/or :class:`fairdefense.FairnessPlugin` instances, mixed.
    plugin_options:
        Options of plugins given by name: ``{"faal": {"r": 0.25}}``.
    objective, beta:
        ``"at"`` (PGD-AT, Madry et al.), ``"trades"``, ``"mart"``, ``"fat"`` or any installed
        objective (``fairdefense objectives``), and the ``beta`` of TRADES or MART.
        Unset (``None``): a plugin may choose, else ``"at"`` and ``6.0``.
    eps, eps_step, max_iter, norm, num_random_init:
        The training attack, as in ART: radius and step in input units, number of
        steps, ``np.inf`` or ``2``, and ``1`` (random start) or ``0`` (start at the
        input). ``eps`` is required unless ``attack`` or ``config.eps`` gives it;
        ``eps_step`` defaults to ``eps / 4``, ``max_iter`` to 10.
    nb_epochs, batch_size:
        Defaults of :meth:`fit` (as in ART's ``AdversarialTrainerMadryPGD``).
    class_names:
        One name per class for reports (default ``"0"``, ``"1"``, ...).
    config:
        A :class:`fairdefense.TrainConfig` for the remaining settings (seed,
        validation split, evaluation attacks, ``out`` for checkpoints, ...); the
        arguments above override its fields.
    weights:
        What the classifier holds after :meth:`fit`: ``"eval"`` (the weights a plugin
        such as EMA supplies for evaluation, when one does; else the trained ones)
        or ``"trained"``.
    progress:
        Show progress bars.
    """

    def __init__(
        self,
        classifier: Any,
        attack: Any = None,
        *,
        plugins: Sequence[Any] = (),
        plugin_options: dict[str, dict[str, Any]] | None = None,
        objective: str | None = None,
        beta: float | None = None,
        eps: float | None = None,
        eps_step: float | None = None,
        max_iter: int | None = None,
        norm: Any = None,
        num_random_init: int | None = None,
        nb_epochs: int | None = None,
        batch_size: int | None = None,
        class_names: Sequence[str] | None = None,
        config: TrainConfig | None = None,
        weights: str = "eval",
        progress: bool = True,
    ) -> None:
        super().__init__(classifier)
        self.parts = unwrap(classifier, training=True)
        art_style = dict(eps=eps, eps_step=eps_step, max_iter=max_iter, norm=norm, num_random_init=num_random_init)
        if attack is not None:
            given = sorted(k for k, v in art_style.items() if v is not None)
            if given:
                raise ConfigError(
                    f"give the attack either as an ART ProjectedGradientDescent or as {given}, not both."
                )
            settings = pgd_settings(attack, classifier)
        else:
            settings = check_settings(**art_style)
        if weights not in ("eval", "trained"):
            raise ConfigError(f"weights must be 'eval' or 'trained', got {weights!r}.")
        cfg = copy.deepcopy(config) if config is not None else TrainConfig(dataset="art")
        overrides = {
            "objective": objective, "beta": beta, "eps": settings["eps"], "eps_step": settings["eps_step"],
            "attack_steps": settings["max_iter"], "norm": settings["norm"],
        }
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        if cfg.eps is None:
            raise ConfigError(
                "eps is required: the attack radius in the classifier's input units (e.g. eps=8/255 for images "
                "in [0, 1]); or pass an ART ProjectedGradientDescent as attack."
            )
        wanted_device = str(self.parts.device)
        if cfg.device is not None and torch.device(cfg.device) != self.parts.device:
            raise ConfigError(f"config.device={cfg.device!r} but the classifier lives on {wanted_device}.")
        cfg.device = wanted_device
        if cfg.lr is None:
            cfg.lr = float(self.parts.optimizer.param_groups[0]["lr"])
        cfg.plugin_options = {**cfg.plugin_options, **(plugin_options or {})}
        self.plugins = list(plugins)
        PluginHost(list(cfg.plugins) + self.plugins, cfg.plugin_options)  # refuse bad plugins/options now
        self.class_names = class_names_for(class_names, self.parts.num_classes)
        self.config = cfg
        self.num_random_init = settings["num_random_init"]
        self.nb_epochs = nb_epochs
        self.batch_size = batch_size
        self.weights = weights
        self.progress = progress
        self.result: TrainResult | None = None

    # ------------------------------------------------------------------ ART API
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int | None = None,
        nb_epochs: int | None = None,
        scheduler: Any = None,
        **kwargs: Any,
    ) -> TrainResult:
        """Train the classifier in place on ``x`` and ``y`` (class indices or one-hot).

        ``validation_data=(x_val, y_val)`` is scored per class under the config's
        evaluation attacks (``pgd20`` by default) after each ``eval_every`` epochs;
        the final report is :attr:`report`. ``scheduler`` is any object with
        ``step()`` driving the classifier's optimizer (modern torch LR schedulers
        included), stepped once per epoch. ``verbose`` (bool) shows progress bars.
        Returns the :class:`fairdefense.TrainResult` (history, final report).
        """
        progress = self._progress(kwargs)
        shape, nb = self.parts.input_shape, self.parts.num_classes
        x_t = to_inputs(x, shape, clip=self.parts.clip)
        y_t = to_labels(y, nb, len(x_t))
        test = None
        if validation_data is not None:
            x_val, y_val = validation_data
            x_v = to_inputs(x_val, shape, "validation_data[0]", self.parts.clip)
            test = TensorDataset(x_v, to_labels(y_val, nb, len(x_v), "validation_data[1]"))
        return self._train(TensorDataset(x_t, y_t), y_t, test, batch_size, nb_epochs, scheduler, progress)

    def fit_generator(
        self, generator: Any, nb_epochs: int | None = None, scheduler: Any = None, **kwargs: Any
    ) -> TrainResult:
        """Train from an ART ``NumpyDataGenerator`` or ``PyTorchDataGenerator``.

        The generator's data and batch size are used; fairdefense shuffles and
        batches them itself each epoch (a ``PyTorchDataGenerator``'s dataset keeps its
        per-sample transforms, so augmentation still happens every epoch).
        """
        from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator

        if isinstance(generator, NumpyDataGenerator):
            return self.fit(generator.x, generator.y, batch_size=generator.batch_size, nb_epochs=nb_epochs,
                            scheduler=scheduler, **kwargs)
        if not isinstance(generator, PyTorchDataGenerator):
            raise ConfigError(
                f"fit_generator takes an ART NumpyDataGenerator or PyTorchDataGenerator, got "
                f"{type(generator).__name__}; or call fit(x, y) with arrays."
            )
        progress = self._progress(kwargs)
        data = _IndexLabels(generator.iterator.dataset, self.parts.num_classes)
        return self._train(data, None, None, generator.batch_size, nb_epochs, scheduler, progress)

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """The classifier's predictions (as ART's trainers offer)."""
        return self._classifier.predict(x, **kwargs)

    @property
    def report(self) -> ClassReport | None:
        """Per-class report on ``validation_data`` from the last :meth:`fit` (``None`` without it)."""
        return None if self.result is None else self.result.report

    # ---------------------------------------------------------------- internals
    def _progress(self, kwargs: dict[str, Any]) -> bool:
        unknown = sorted(set(kwargs) - {"verbose"})
        if unknown:
            raise ConfigError(
                f"unsupported argument(s) {unknown} for FairAdversarialTrainer.fit: fairdefense runs its own "
                f"training loop; set training options through config=TrainConfig(...)."
            )
        return bool(kwargs.get("verbose", self.progress))

    def _scheduler(self, scheduler: Any) -> Any:
        if scheduler is None:
            return _KeepLR()
        if not callable(getattr(scheduler, "step", None)):
            raise ConfigError(f"scheduler must have a step() method, got {type(scheduler).__name__}.")
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError(
                "ReduceLROnPlateau needs a metric at every step, but the scheduler is stepped once per epoch "
                "without one; use a schedule such as StepLR, MultiStepLR or CosineAnnealingLR."
            )
        if self.config.out is not None and not callable(getattr(scheduler, "state_dict", None)):
            raise ConfigError(
                f"config.out is set, so checkpoints are written, but the scheduler {type(scheduler).__name__} has "
                f"no state_dict() to save; give it state_dict()/load_state_dict() or leave config.out unset."
            )
        driven = getattr(scheduler, "optimizer", None)
        if driven is not None and driven is not self.parts.optimizer:
            raise ConfigError(
                "the scheduler drives another optimizer than the classifier's; build it on classifier.optimizer."
            )
        return scheduler

    def _train(
        self,
        data: Dataset,
        targets: Tensor | None,
        test: Dataset | None,
        batch_size: int | None,
        nb_epochs: int | None,
        scheduler: Any,
        progress: bool,
    ) -> TrainResult:
        cfg = copy.deepcopy(self.config)
        epochs = nb_epochs if nb_epochs is not None else self.nb_epochs
        size = batch_size if batch_size is not None else self.batch_size
        if self.num_random_init == 0:
            cfg.random_start = "none"
        if epochs is not None:
            cfg.epochs = int(epochs)
        if size is not None:
            cfg.batch_size = int(size)
        trainer = Trainer(
            self.parts.model, data, self.class_names, cfg, self.plugins, test_data=test,
            optimizer=self.parts.optimizer, scheduler=self._scheduler(scheduler), clip=self.parts.clip,
            train_targets=targets, run_dir=cfg.out, progress=progress,
        )
        result = trainer.fit()
        if self.weights == "eval" and result.eval_model is not result.model:
            self.parts.model.load_state_dict(result.eval_model.state_dict())
        self.result = result
        return result
