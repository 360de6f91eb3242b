"""Checking training and evaluation inputs before any work is done.

Two mistakes pass silently through an adversarial trainer: inputs on another scale
than the valid range (0..255 pixels with ``clip=(0, 1)``: every attack then leaves its
eps-ball by 250) and inputs of a type the model does not take (integers, float64).
The rule here: a dtype whose conversion to float32 changes no value (float64, float16,
integers, booleans) is converted and said once; values outside ``clip`` are refused
with the range found, the range expected and the usual fix.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fairdefense.errors import ConfigError

__all__ = ["check_inputs", "check_dataset_inputs", "SAMPLE_SIZE"]

#: How many samples :func:`check_dataset_inputs` reads (spread evenly over the data).
SAMPLE_SIZE = 256
_TOLERANCE = 1e-6


def _note_conversion(dtype: torch.dtype, what: str) -> None:
    if dtype != torch.float32:
        warnings.warn(f"{what} has dtype {str(dtype).removeprefix('torch.')}; it is converted to float32.", stacklevel=3)


def _check_range(x: Tensor, clip: tuple | None, what: str) -> None:
    if clip is None or x.numel() == 0:
        return
    low = torch.as_tensor(clip[0]).to(x.device, torch.float64)
    high = torch.as_tensor(clip[1]).to(x.device, torch.float64)
    xd = x.double()
    if bool((xd < low - _TOLERANCE).any() | (xd > high + _TOLERANCE).any()):
        found = (xd.min().item(), xd.max().item())
        hint = " Divide 0..255 pixels by 255." if found[1] > 1.5 and float(high.max()) <= 1.0 else ""
        raise ConfigError(
            f"{what} has values in [{found[0]:g}, {found[1]:g}], outside the valid input range clip={_clip_text(clip)}: "
            f"attacks would not stay in their eps-ball.{hint} Scale the inputs into the range, or pass the clip "
            f"range they are in."
        )


def _clip_text(clip: tuple) -> str:
    return "(" + ", ".join(f"{float(v):g}" if torch.as_tensor(v).numel() == 1 else "per-feature" for v in clip) + ")"


def check_inputs(x: Any, clip: tuple | None, what: str = "x") -> Tensor:
    """``x`` as a float32 tensor after checking it lies within ``clip`` (``None``: unbounded).

    float64/float16/bfloat16, integer and boolean inputs are converted to float32 with a
    warning; complex or non-numeric inputs and values outside ``clip`` raise
    :class:`~fairdefense.errors.ConfigError`.
    """
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} must be an array of real numbers ({exc}).") from exc
    if t.is_complex():
        raise ConfigError(f"{what} must be real numbers, got dtype {t.dtype}.")
    _check_range(t, clip, what)
    _note_conversion(t.dtype, what)
    return t.float()


def check_dataset_inputs(data: Dataset, clip: tuple | None, what: str = "the training data") -> None:
    """Check a sample of ``data``'s inputs (:data:`SAMPLE_SIZE` items spread over it) against ``clip``.

    Raises :class:`~fairdefense.errors.ConfigError` for values outside the range or a
    non-real dtype; warns when the inputs are not float32 (the trainer converts them).
    """
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        return
    indices: Sequence[int] = torch.linspace(0, n - 1, min(n, SAMPLE_SIZE)).round().long().unique().tolist()
    xs = [torch.as_tensor(data[i][0]) for i in indices]
    if any(x.is_complex() for x in xs):
        raise ConfigError(f"{what} must hold real numbers, got dtype {xs[0].dtype}.")
    _check_range(torch.stack([x.double() for x in xs]), clip, what)
    _note_conversion(xs[0].dtype, what)
