"""Training configuration.

Every field left at ``None`` is *unset*: a plugin's ``configure`` hook may fill it,
otherwise :func:`resolve` gives it the dataset's or the library's default. A
field the user set is explicit: a plugin that needs another value is an error.
"""
from __future__ import annotations

import dataclasses
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from fairdefense.errors import ConfigError
from fairdefense.evaluation import ATTACK_FAMILIES

__all__ = ["TrainConfig", "DEFAULTS", "resolve", "select_device"]


@dataclass
class TrainConfig:
    """All settings of a training run (``None`` = unset, see :data:`DEFAULTS`)."""

    dataset: str = "digits"
    data_dir: str | None = None
    fold: str | None = None  # "I/K": test on fold I of a K-fold protocol (digits), not the fixed test split
    model: str | None = None
    objective: str | None = None
    beta: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    milestones: tuple[float, ...] | None = None
    gamma: float | None = None
    eps: float | None = None
    eps_step: float | None = None
    attack_steps: int | None = None
    norm: str | None = None
    random_start: str | None = None
    early_stop_extra_steps: int | None = None
    attack_mode: str | None = None
    val_size: float | None = None
    val_steps: int | None = None
    val_attack: str | None = None  # attack family of the validation split ("pgd", "cw", "trades"), val_steps steps
    validate_first: bool | None = None
    eval_attacks: tuple[str, ...] | None = None
    eval_every: int | None = None
    select_best: bool | None = None
    seed: int = 0
    device: str | None = None
    amp: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    workers: int | None = None
    threads: int | None = None  # torch CPU threads (None: leave torch's setting)
    log_every: int | None = None
    sync_bn: bool | None = None
    init: str | None = None
    model_dir: str | None = None
    out: str | None = None
    plugins: tuple[str, ...] = ()
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    loggers: tuple[str, ...] = ()

    def validation_attack(self) -> str:
        """The validation split's attack name, ``f"{val_attack}{val_steps}"`` (unset: the defaults')."""
        family = DEFAULTS["val_attack"] if self.val_attack is None else self.val_attack
        return f"{family}{DEFAULTS['val_steps'] if self.val_steps is None else self.val_steps}"

    def explicit(self) -> set[str]:
        """Names of the fields the user set (not ``None``)."""
        return {f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid settings: {sorted(names)}.")
        values = dict(data)
        for key in ("milestones", "eval_attacks", "plugins", "loggers"):
            value = values.get(key)
            if value is not None:  # one name given alone (--set plugins=bat) is a list of one
                values[key] = (value,) if isinstance(value, (str, int, float)) else tuple(value)
        return cls(**values)


#: Library defaults for unset fields (a dataset may override eps, epochs, lr, model, val_size).
DEFAULTS: dict[str, Any] = {
    "objective": "at",
    "beta": 6.0,
    "epochs": 30,
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "multistep",
    "milestones": (0.5, 0.75),
    "gamma": 0.1,
    "eps": 8 / 255,
    "attack_steps": 10,
    "norm": "linf",
    "early_stop_extra_steps": 1,
    "attack_mode": "eval",
    "val_size": 0.1,
    "val_steps": 10,
    "val_attack": "pgd",
    "validate_first": False,
    "eval_attacks": ("pgd20",),
    "eval_every": 1,
    "select_best": False,
    "amp": "off",
    "channels_last": False,
    "compile": False,
    "workers": 0,
    "log_every": 50,
    "sync_bn": False,
}


def resolve(
    config: TrainConfig, dataset_defaults: Mapping[str, Any], required: Mapping[str, Any], clip: tuple | None
) -> TrainConfig:
    """Fill unset fields (plugin requirements, then dataset defaults, then :data:`DEFAULTS`)
    and check ranges. ``eps_step`` defaults to ``eps / 4``."""
    values = config.to_dict()
    for key, value in values.items():
        if value is None:
            for source in (required, dataset_defaults, DEFAULTS):
                if key in source:
                    values[key] = source[key]
                    break
    if values["eps_step"] is None:
        values["eps_step"] = values["eps"] / 4
    out = TrainConfig.from_dict(values)
    _check(out, clip)
    return out


def select_device(name: str | None) -> torch.device:
    """The device ``name`` names (``None``: ``cuda`` if available, else ``cpu``), checked to exist here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {name!r} is not a device name; use cpu, cuda, cuda:1, mps ... ({exc}).") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} asks for a GPU but torch sees none here; use --device cpu.")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: torch sees {count} GPU(s), numbered 0..{count - 1}.")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu.")
    return device


_KINDS = {bool: "true or false", int: "a whole number", float: "a number"}


def _kind_ok(kind: type, value: Any) -> bool:
    if kind is bool:
        return type(value).__name__ in ("bool", "bool_")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return kind is float or float(value).is_integer()


def _check_types(c: TrainConfig) -> None:
    """Refuse a numeric or boolean setting of another type (``epochs="abc"`` from ``--set``)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        kinds = [t for t in (typing.get_args(hints[f.name]) or (hints[f.name],)) if t in _KINDS]
        if value is not None and kinds and not _kind_ok(kinds[0], value):
            raise ConfigError(f"{f.name} must be {_KINDS[kinds[0]]}, got {value!r}.")


def _check(c: TrainConfig, clip: tuple | None) -> None:
    _check_types(c)
    if not c.eps > 0:
        raise ConfigError(f"eps must be > 0, got {c.eps}; it is the attack radius in input units.")
    if c.norm == "linf" and clip is not None and not isinstance(clip[0], (list, tuple)):
        # per-feature bounds (tensors, e.g. tabular data): every input is reachable only if eps covers the widest
        span = float((torch.as_tensor(clip[1]) - torch.as_tensor(clip[0])).max())
        if c.eps >= span:
            raise ConfigError(
                f"eps={c.eps} is not smaller than the input range {clip} (width {span}): every input "
                f"would be reachable. Give eps in input units, e.g. 8/255 = {8 / 255:.4f} for images in [0, 1]."
            )
    if c.norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be 'linf' or 'l2', got {c.norm!r}.")
    if not c.eps_step > 0:
        raise ConfigError(f"eps_step must be > 0, got {c.eps_step}.")
    for name in ("epochs", "batch_size", "attack_steps", "val_steps", "log_every"):
        if int(getattr(c, name)) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}.")
    if not c.lr > 0:
        raise ConfigError(f"lr must be > 0, got {c.lr}.")
    if c.nesterov and not c.momentum > 0:
        raise ConfigError(f"nesterov needs momentum > 0, got momentum={c.momentum}; set a momentum or drop nesterov.")
    if c.schedule not in ("multistep", "cosine", "constant"):
        raise ConfigError(f"schedule must be 'multistep', 'cosine' or 'constant', got {c.schedule!r}.")
    if c.val_size < 0:
        raise ConfigError(f"val_size must be >= 0 (a fraction < 1 or a count per class), got {c.val_size}.")
    if c.random_start not in (None, "uniform", "normal", "none"):
        raise ConfigError(f"random_start must be 'uniform', 'normal' or 'none' (unset: the objective's), got {c.random_start!r}.")
    if c.amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"amp must be 'off', 'bf16' or 'fp16', got {c.amp!r}.")
    if int(c.workers) < 0:
        raise ConfigError(f"workers must be >= 0 (0 loads data in the training process), got {c.workers}.")
    if c.attack_mode not in ("eval", "train"):
        raise ConfigError(
            f"attack_mode must be 'eval' (attack with BatchNorm's running statistics, no update) or 'train' "
            f"(batch statistics; the attack's forwards update the running statistics), got {c.attack_mode!r}."
        )
    if c.val_attack not in ATTACK_FAMILIES:
        raise ConfigError(
            f"val_attack must be one of {sorted(ATTACK_FAMILIES)} (the validation attack's family, run for val_steps "
            f"steps: 'pgd' CE-PGD, 'cw' the CW margin, 'trades' TRADES's KL attack), got {c.val_attack!r}."
        )
    if c.early_stop_extra_steps < 0:
        raise ConfigError(f"early_stop_extra_steps must be >= 0, got {c.early_stop_extra_steps}.")
