"""The toolkit for strategy authors: mechanics that several strategies share.

Every built-in strategy is written with the public API of :mod:`fairdefense` and
these helpers only (no strategy imports another); a third-party strategy uses them
the same way (``docs/plugins.md``, "The toolkit")::

    from fairdefense.toolkit import WeightAverage, check_options

- Options: :func:`check_options` refuses out-of-range option values from the
  ``Options`` dataclass's ``__post_init__`` with a
  :class:`~fairdefense.errors.PluginOptionError`.
- Weight averaging: :class:`WeightAverage` (EMA, CFA's FAWA).
- Validation statistics: :func:`validation_counts`, :func:`pooled_mean` (FRL, WAT,
  Baseline Reweight).
- Per-class values on the batch's device: :class:`DeviceCache`, and
  :func:`batch_mean_weights` to turn class weights into a weighted batch mean.
- Lagrangian class weights: :func:`normalize_multipliers`,
  :func:`cost_sensitive_weights` (FRL, Baseline Reweight).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Mapping, TypeVar

import torch
from torch import Tensor

from fairdefense.errors import ConfigError, PluginOptionError

if TYPE_CHECKING:
    from fairdefense.metrics import ClassReport

__all__ = [
    "check_options",
    "WeightAverage",
    "validation_counts",
    "pooled_mean",
    "DeviceCache",
    "batch_mean_weights",
    "normalize_multipliers",
    "cost_sensitive_weights",
]

T = TypeVar("T", Tensor, dict[str, Tensor])


# ------------------------------------------------------------------ options
def check_options(plugin: str, options: Any, checks: Iterable[tuple[bool, str, str]]) -> None:
    """Refuse the first failed check: ``(ok, key, expected)`` -> :class:`~fairdefense.errors.PluginOptionError`.

    Call it from the ``Options`` dataclass's ``__post_init__``, which runs whenever
    options are built (keywords in Python, ``-o NAME.KEY=VALUE`` on the command
    line after conversion to the declared types, a recipe)::

        def __post_init__(self) -> None:
            check_options("ema", self, [(0 <= self.decay < 1, "decay", "in [0, 1)")])

    The message reads ``plugin 'ema': option 'decay' must be in [0, 1), got 1.0.``
    A rule that ties several options together raises ``PluginOptionError`` itself,
    from the same place, naming the plugin, the options and the fix.
    """
    for ok, key, expected in checks:
        if not ok:
            raise PluginOptionError(f"plugin '{plugin}': option '{key}' must be {expected}, got {getattr(options, key)!r}.")


# --------------------------------------------------------- weight averaging
class WeightAverage:
    """An exponential moving average of a module's full ``state_dict``.

    The first :meth:`update` stores a copy; each later one sets every floating-point
    entry to ``decay * average + (1 - decay) * current`` (parameters and buffers,
    BatchNorm's running statistics included). Integer entries (BatchNorm's
    ``num_batches_tracked``) take the current value. Tensors stay on the device of
    the state they come from; the strategy decides when to call :meth:`update`
    (EMA: every epoch from ``begin``; FAWA: when its validation gate opens).

    Why not ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``: its EMA
    (``get_ema_multi_avg_fn``) computes ``lerp``, which rounds differently from
    ``decay * average + (1 - decay) * current``, and it averages integer buffers
    (truncating the counter); it deep-copies the module and keeps its state as
    ``module.<key>`` plus ``n_averaged``, so the plugin state would no longer be the
    model's ``state_dict`` and could not be restored before the model is seen
    (``load_plugin_state`` receives no model). This class keeps the arithmetic and the
    checkpoint layout of the strategies' papers and code.
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)
        self._average: dict[str, Tensor] | None = None

    @property
    def weights(self) -> dict[str, Tensor] | None:
        """The averaged ``state_dict``, or ``None`` before the first update."""
        return None if self._average is None else dict(self._average)

    def update(self, state: Mapping[str, Tensor]) -> None:
        """Fold one ``state_dict`` into the average (new tensors; nothing is changed in place)."""
        previous = self._average
        average = {}
        for key, value in state.items():
            value = value.detach()
            if previous is None or not value.is_floating_point():
                average[key] = value.clone()
            else:
                average[key] = self.decay * previous[key] + (1.0 - self.decay) * value
        self._average = average

    def state(self) -> dict[str, Any]:
        """``{"average": state_dict}`` once something was averaged, else ``{}``."""
        return {} if self._average is None else {"average": dict(self._average)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        average = state.get("average")
        self._average = None if average is None else dict(average)


# ---------------------------------------------------- validation statistics
def validation_counts(plugin: str, report: "ClassReport") -> Tensor:
    """The report's per-class sample counts; a :class:`~fairdefense.errors.ConfigError` if a class has none.

    A strategy that compares classes on the validation split calls it first, so that
    an empty class is an error naming the fix rather than a NaN in its update.
    """
    empty = [report.class_names[c] for c in torch.nonzero(report.counts == 0).flatten().tolist()]
    if empty:
        raise ConfigError(
            f"plugin '{plugin}': the validation split has no sample of class(es) {empty}; "
            f"raise val_size (e.g. -o {plugin}.val_size=300) so that every class is held out."
        )
    return report.counts


def pooled_mean(values: Tensor, counts: Tensor) -> Tensor:
    """Mean of per-class ``values`` weighted by the class ``counts``: the rate over all samples."""
    counts = counts.to(values.dtype)
    return (values * counts).sum() / counts.sum()


# --------------------------------------------------- per-class values on device
def _to(values: T, like: Tensor) -> T:
    if isinstance(values, Tensor):
        return values.to(like)
    return {key: value.to(like) for key, value in values.items()}


class DeviceCache(Generic[T]):
    """Per-class values kept where the strategy's state lives, handed out on the batch's device.

    A strategy keeps its per-class state in float64 on the CPU (exact, and what
    ``plugin_state`` saves) and needs it every batch on the training device in the
    batch's dtype. ``compute`` returns the values (a tensor or a dict of tensors);
    :meth:`like` returns them on a tensor's device and dtype, copied once per
    device and dtype until :meth:`clear` (call it whenever the state changes)::

        self._weights = DeviceCache(self.class_weights)
        ...
        w = self._weights.like(outputs.robust)[batch.y]   # in reweight
        self._weights.clear()                              # after an update
    """

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self._copies: dict[tuple[torch.device, torch.dtype], T] = {}

    def like(self, tensor: Tensor) -> T:
        """The values on ``tensor``'s device and dtype."""
        key = (tensor.device, tensor.dtype)
        if key not in self._copies:
            self._copies[key] = _to(self._compute(), tensor)
        return self._copies[key]

    def clear(self) -> None:
        """Forget the copies (the next :meth:`like` recomputes)."""
        self._copies.clear()


def batch_mean_weights(class_weights: Tensor, y: Tensor) -> Tensor:
    """Per-sample weights ``w_{y_i} * B / sum_j w_{y_j}``.

    The trainer reduces a loss term as ``mean_i(w_i * term_i)`` without
    renormalising; with these weights that is the weighted batch mean
    ``sum_i w_{y_i} term_i / sum_i w_{y_i}``.
    """
    w = class_weights[y]
    return w * (len(y) / w.sum())


# --------------------------------------------------- Lagrangian class weights
def normalize_multipliers(lam: Tensor, lim: float) -> Tensor:
    """FRL's ``Norm``: clip at 0, then rescale to sum ``lim`` if the sum exceeds ``lim``."""
    lam = lam.clamp_min(0.0)
    total = lam.sum()
    return lam * (lim / total) if total > lim else lam


def cost_sensitive_weights(lam: Tensor) -> Tensor:
    """Class weights of the Lagrangian with per-class multipliers: ``1/C + lam_c - mean(lam)`` (they sum to 1)."""
    return 1.0 / lam.numel() + lam - lam.mean()
