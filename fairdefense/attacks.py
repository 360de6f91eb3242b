"""Projected gradient descent in torch, batched, with per-sample radius and step.

One forward and one backward pass per step, all on the device; nothing goes
through numpy. Three losses: ``"ce"`` (cross-entropy, Madry et al.), ``"kl"``
(TRADES's ``KL(f(x) || f(x'))``, Zhang et al. 2019) and ``"cw"`` (the margin
``max_{j != y} z_j - z_y``, Carlini & Wagner). Two norms: ``"linf"`` and ``"l2"``.

The caller chooses the model's mode; the trainer and the evaluators run attacks
in eval mode, as the papers' code does.

Example::

    x_adv = pgd(model, x, y, eps=8/255, step=2/255, steps=10)
    record = pgd_early_stop(model, x, y, eps=8/255, step=0.007, steps=10,
                            loss="kl", random_start="normal", extra_steps=1)
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.errors import ConfigError

__all__ = ["AttackRecord", "pgd", "pgd_early_stop", "attack_loss", "project", "global_batch", "LOSSES", "NORMS"]

LOSSES = ("ce", "kl", "cw")
NORMS = ("linf", "l2")
Start = Literal["uniform", "normal", "none"]
_WINDOW: ContextVar[tuple[int, int] | None] = ContextVar("fairdefense_attack_window", default=None)


@contextlib.contextmanager
def global_batch(offset: int, total: int) -> Iterator[None]:
    """Within this block, random starts are drawn for a batch of ``total`` rows of which the
    attacked inputs are rows ``offset, offset + 1, ...`` (data-parallel training: each
    process attacks its share of a global batch, and every sample gets the start one
    process would give it). Outside any block, the start is drawn for the inputs alone.
    """
    previous = _WINDOW.get()
    _WINDOW.set((int(offset), int(total)))
    try:
        yield
    finally:
        _WINDOW.set(previous)


def _noise(draw, x: Tensor, tail: tuple[int, ...], generator) -> Tensor:
    """``draw((B, *tail))`` for the inputs' rows of the current :func:`global_batch` window."""
    offset, total = _WINDOW.get() or (0, x.shape[0])
    return draw((total, *tail), generator=generator, device=x.device, dtype=x.dtype)[offset:offset + x.shape[0]]


@dataclass
class AttackRecord:
    """Iterates of an early-stopped attack, one row per sample (all ``(B, ...)``).

    - ``x_first_wrong``: the first misclassified iterate after the extra steps
      (where the sample stopped); the final iterate for samples never fooled.
    - ``x_last_correct``: the last iterate the model still classified correctly
      before the sample stopped; the start for a sample wrong at the start; the
      final iterate for a sample never fooled.
    - ``fooled``: ``(B,)`` bool, whether the sample was ever misclassified.
    - ``stop_step``: ``(B,)`` int64, the step at which the sample stopped
      (``steps`` for samples that never stopped).
    - ``steps``: the number of steps the batch actually ran (early stopping ends
      a batch once every sample has stopped).
    """

    x_first_wrong: Tensor
    x_last_correct: Tensor
    fooled: Tensor
    stop_step: Tensor
    steps: int

    @property
    def x_adv(self) -> Tensor:
        """The attack's output: each sample's final iterate (``x_first_wrong``)."""
        return self.x_first_wrong


def _per_sample(value: float | Tensor, x: Tensor, what: str) -> Tensor:
    """A radius or step as a ``(B, 1, ..., 1)`` tensor broadcastable against ``x``."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ConfigError(f"{what} must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}.")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ConfigError(f"{what} must be finite and non-negative.")
    return t.view(-1, *([1] * (x.dim() - 1)))


def _norms(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: Tensor, norm: str, clip: tuple | None) -> Tensor:
    """Project ``x_adv`` onto the ``norm``-ball of radius ``eps`` (per sample) around ``x``,
    then into the valid input range ``clip`` (which keeps it inside the ball)."""
    delta = x_adv - x
    if norm == "linf":
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
    else:
        delta = delta * torch.clamp(eps / _norms(delta).clamp_min(1e-12), max=1.0)
    out = x + delta
    if clip is not None:
        out = torch.clamp(out, *clip) if not isinstance(clip[0], Tensor) else torch.maximum(torch.minimum(out, clip[1]), clip[0])
    return out


def attack_loss(logits: Tensor, y: Tensor, loss: str, clean_probs: Tensor | None = None) -> Tensor:
    """Per-sample attack loss ``(B,)``: the quantity PGD ascends."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), clean_probs, reduction="none").sum(dim=1)
    if loss == "cw":
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
        return other - true
    raise ConfigError(f"unknown attack loss {loss!r}; use one of {LOSSES}.")


def _check(norm: str, loss: str, steps: int) -> None:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; use one of {NORMS}.")
    if loss not in LOSSES:
        raise ConfigError(f"unknown attack loss {loss!r}; use one of {LOSSES}.")
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}.")


def _start(x: Tensor, eps: Tensor, norm: str, random_start: str, sigma: float, clip, generator) -> Tensor:
    if random_start == "none":
        return x.clone()
    if random_start == "normal":
        noise = sigma * _noise(torch.randn, x, x.shape[1:], generator)
        return project(x + noise, x, eps, norm, clip)
    if random_start != "uniform":
        raise ConfigError(f"unknown random_start {random_start!r}; use 'uniform', 'normal' or 'none'.")
    if norm == "linf":
        u = _noise(torch.rand, x, x.shape[1:], generator)
        return project(x + (2 * u - 1) * eps, x, eps, norm, clip)
    direction = _noise(torch.randn, x, x.shape[1:], generator)
    radius = _noise(torch.rand, x, (), generator)
    radius = radius.view(-1, *([1] * (x.dim() - 1)))
    return project(x + direction / _norms(direction).clamp_min(1e-12) * eps * radius, x, eps, norm, clip)


def _ascend(x_adv: Tensor, grad: Tensor, step: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return x_adv + step * grad.sign()
    return x_adv + step * grad / _norms(grad).clamp_min(1e-12)


def _grad(model: nn.Module, x_adv: Tensor, y: Tensor, loss: str, clean_probs: Tensor | None):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        value = attack_loss(logits, y, loss, clean_probs).sum()
        (grad,) = torch.autograd.grad(value, x_adv)
    return logits.detach(), grad


def _clean_probs(model: nn.Module, x: Tensor, loss: str) -> Tensor | None:
    if loss != "kl":
        return None
    with torch.no_grad():
        return F.softmax(model(x), dim=1)


def _setup(model, x, eps, step, steps, norm, loss, random_start, sigma, clip, generator):
    """Checked arguments, per-sample radius and step, clean probabilities (KL loss) and the start."""
    _check(norm, loss, steps)
    eps_t = _per_sample(eps, x, "eps")
    step_t = _per_sample(step, x, "step")
    x = x.detach()
    clean_probs = _clean_probs(model, x, loss)
    return x, eps_t, step_t, clean_probs, _start(x, eps_t, norm, random_start, sigma, clip, generator)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    step: float | Tensor,
    steps: int,
    *,
    norm: str = "linf",
    loss: str = "ce",
    random_start: Start = "uniform",
    sigma: float = 0.001,
    clip: tuple | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``steps`` steps of PGD and return the final iterates ``(B, ...)``.

    ``eps`` and ``step`` are scalars or ``(B,)`` tensors (per-sample radius and
    step). ``random_start`` is ``"uniform"`` (uniform in the ball), ``"normal"``
    (``x + sigma * N(0, I)``, TRADES's start) or ``"none"``. Every iterate lies in
    the ball around ``x`` and in ``clip``.
    """
    x, eps_t, step_t, clean_probs, x_adv = _setup(model, x, eps, step, steps, norm, loss, random_start, sigma, clip, generator)
    for _ in range(steps):
        _, grad = _grad(model, x_adv, y, loss, clean_probs)
        x_adv = project(_ascend(x_adv, grad, step_t, norm), x, eps_t, norm, clip)
    return x_adv.detach()


def pgd_early_stop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float | Tensor,
    step: float | Tensor,
    steps: int,
    *,
    extra_steps: int = 1,
    norm: str = "linf",
    loss: str = "ce",
    random_start: Start = "uniform",
    sigma: float = 0.001,
    clip: tuple | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> AttackRecord:
    """PGD with FAT-style early stopping, recording each sample's boundary iterates.

    Before each step the current iterates are classified. A misclassified sample
    with ``extra_steps`` left takes one more step (its budget decreases); one with
    none left stops there (Zhang et al. 2020, ``tau``; BAT's code uses 1). Only
    samples still running are forwarded, so the cost falls as samples stop, and
    the batch ends once all have stopped. See :class:`AttackRecord` for what is
    returned.
    """
    if extra_steps < 0:
        raise ConfigError(f"extra_steps must be >= 0, got {extra_steps}.")
    x, eps_t, step_t, clean_probs, x_adv = _setup(model, x, eps, step, steps, norm, loss, random_start, sigma, clip, generator)
    n = x.shape[0]
    last_correct = x_adv.clone()
    budget = torch.full((n,), extra_steps, device=x.device, dtype=torch.long)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    stop_step = torch.full((n,), steps, dtype=torch.long, device=x.device)
    running = torch.arange(n, device=x.device)
    taken = 0
    for t in range(steps):
        xr, yr = x_adv[running], y[running]
        probs = clean_probs[running] if clean_probs is not None else None
        logits, grad = _grad(model, xr, yr, loss, probs)
        wrong = logits.argmax(dim=1) != yr
        last_correct[running[~wrong]] = xr[~wrong]
        fooled[running[wrong]] = True
        stop = wrong & (budget[running] == 0)
        budget[running[wrong & ~stop]] -= 1
        stop_step[running[stop]] = t
        keep = ~stop
        running, xr, grad = running[keep], xr[keep], grad[keep]
        if running.numel() == 0:
            break
        taken += 1
        x_adv[running] = project(
            _ascend(xr, grad, step_t[running], norm), x[running], eps_t[running], norm, clip
        )
    never = ~fooled
    last_correct[never] = x_adv[never]
    return AttackRecord(
        x_first_wrong=x_adv.detach(),
        x_last_correct=last_correct.detach(),
        fooled=fooled,
        stop_step=stop_step,
        steps=taken,
    )
