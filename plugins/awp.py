"""AWP: Adversarial Weight Perturbation as a ``perturb_weights`` plugin.

Paper: Dongxian Wu, Shu-Tao Xia, Yisen Wang. "Adversarial Weight Perturbation
Helps Robust Generalization". NeurIPS 2020. Code: https://github.com/csdongxian/AWP
(``AT_AWP/``, ``TRADES_AWP/``); as used by FAAL (Zhang et al., CVPR 2024,
https://github.com/TrustAI/FAAL, ``utils_awp.py``) for its FAAL-AWP rows.

Algorithm (one proxy step per batch, as the code's ``calc_awp``):

1. Copy the model's weights and buffers into a proxy model kept for the whole
   run (``proxy.load_state_dict(model.state_dict())``), put it in train mode.
2. One SGD step (learning rate ``proxy_lr``, no momentum, no weight decay) on the
   proxy that *increases* the unweighted base-objective loss on the batch:
   PGD-AT ``mean_i CE(proxy(x'_i), y_i)``; TRADES
   ``mean_i [CE(proxy(x_i), y_i) + beta * KL(proxy(x_i) || proxy(x'_i))]``
   (``batch.objective.terms`` and ``reduce`` without weights; fairness weights
   never enter the proxy loss, as in the FAAL code).
3. For every parameter whose name contains ``weight`` and which has more than one
   dimension (conv and linear kernels; biases and BatchNorm affine parameters are
   left alone), ``d = ||w|| / (||w_proxy - w|| + 1e-20) * (w_proxy - w)``, and
   the plugin returns ``{name: gamma * d}``.

The trainer adds the returned tensors to the weights before this batch's loss
forward and backward and subtracts them after the optimizer step, so the
gradient is taken at the perturbed weights and applied to the clean ones (the
code's ``perturb``/``restore``). Because the proxy uses plain SGD, ``w_proxy - w =
proxy_lr * grad`` and the per-layer normalisation cancels ``proxy_lr``: it only
matters through floating-point rounding; it is kept for faithfulness.

Defaults: ``gamma = 0.005`` and ``proxy_lr = 0.1`` (the FAAL code's setting, and
the AWP code's TRADES default, whose proxy lr is the initial training lr 0.1),
``begin = 0`` (AWP from the first epoch: FAAL fine-tuning and the AWP code's AT
default). The AWP code's PGD-AT defaults are ``gamma = 0.01`` with ``proxy_lr =
0.01`` (``-o awp.gamma=0.01 -o awp.proxy_lr=0.01``); its TRADES script warms up
for 10 epochs (``--awp-warmup 10`` with epochs counted from 1: ``-o awp.begin=9``
here, where epochs count from 0).

Deviations from the code, and why:

- The code selects the perturbed tensors by iterating ``state_dict()`` in
  parallel over model and proxy; this plugin iterates ``named_parameters()`` by
  name (buffers are never perturbed in either: they have one dimension or are
  not named ``weight``), so that the returned names are the parameter names the
  trainer expects.
- With ``select_examples`` active (e.g. a plugin choosing the natural term's
  input), the proxy's natural term still uses the clean batch: the hook
  receives only the robust term's inputs.
- Stateless across batches (the proxy is reloaded each batch and its optimizer
  has no state), so a resumed run needs no plugin state.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import fairdefense
from fairdefense.toolkit import check_options

__all__ = ["AWP", "perturbation_from_proxy"]

#: Guard against a zero update in the normalisation (the code's ``EPS``).
_EPS = 1e-20


def _perturbed(name: str, param: Tensor) -> bool:
    """Whether AWP perturbs a parameter: a multi-dimensional ``weight`` (as the code)."""
    return param.dim() > 1 and "weight" in name


def perturbation_from_proxy(model: nn.Module, proxy: nn.Module, gamma: float) -> dict[str, Tensor]:
    """``{name: gamma * ||w|| / (||w_proxy - w|| + 1e-20) * (w_proxy - w)}`` per perturbed weight.

    Perturbed weights are the parameters with more than one dimension whose name
    contains ``weight`` (the AWP code's rule). No gradient.
    """
    proxy_params = dict(proxy.named_parameters())
    out = {}
    with torch.no_grad():
        for name, w in model.named_parameters():
            if not _perturbed(name, w):
                continue
            diff = proxy_params[name] - w
            out[name] = gamma * w.norm() / (diff.norm() + _EPS) * diff
    return out


class AWP(fairdefense.FairnessPlugin):
    """AWP (Wu et al., NeurIPS 2020): per-batch adversarial weight perturbation from a one-step proxy."""

    name = "awp"

    @dataclass
    class Options:
        """AWP's options (defaults: the FAAL code's AWP setting).

        ``gamma``: size of the perturbation relative to each weight's norm (0.005;
        the AWP code's PGD-AT default is 0.01). ``proxy_lr``: the proxy's SGD step
        (0.1; 0.01 in the AWP code's PGD-AT script). ``begin``: first epoch (from 0)
        with AWP (0; the AWP code's TRADES script starts at 9 in this counting).
        """

        gamma: float = 0.005
        proxy_lr: float = 0.1
        begin: int = 0

        def __post_init__(self) -> None:
            check_options("awp", self, [
                (self.gamma >= 0 and math.isfinite(self.gamma), "gamma", "a finite number >= 0"),
                (self.proxy_lr > 0 and math.isfinite(self.proxy_lr), "proxy_lr", "a finite number > 0"),
                (self.begin >= 0, "begin", "an epoch >= 0"),
            ])

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._proxy: tuple[nn.Module, nn.Module, torch.optim.Optimizer] | None = None

    def _proxy_for(self, model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The proxy of ``model`` and its optimizer, built once per model."""
        if self._proxy is None or self._proxy[0] is not model:
            proxy = copy.deepcopy(model)
            self._proxy = (model, proxy, torch.optim.SGD(proxy.parameters(), lr=self.options.proxy_lr))
        return self._proxy[1], self._proxy[2]

    def perturb_weights(self, batch: fairdefense.BatchInfo, x_adv: Tensor) -> dict[str, Tensor] | None:
        """One ascent step of a proxy on the unweighted base loss, normalised per layer, times ``gamma``."""
        if batch.epoch < self.options.begin or self.options.gamma == 0:
            return None
        proxy, optim = self._proxy_for(batch.model)
        proxy.load_state_dict(batch.model.state_dict())
        proxy.train()
        with torch.enable_grad():
            loss = -batch.objective.reduce(batch.objective.terms(proxy, batch.x, batch.y, x_adv))
            optim.zero_grad(set_to_none=True)
            loss.backward()
        optim.step()
        return perturbation_from_proxy(batch.model, proxy, self.options.gamma)
