"""Rebuild a trained model from its checkpoint: :func:`load_model`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from fairdefense.errors import ConfigError
from fairdefense.run_folder import RunFolder, load_training_state

__all__ = ["LoadedModel", "load_model", "model_from_state"]


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the module in eval mode and its class names
    (index ``i`` of the logits is ``class_names[i]``). Unpacks as ``model, class_names``."""

    model: nn.Module
    class_names: tuple[str, ...]


def model_from_state(state: dict[str, Any], weights: str = "eval", where: str = "the checkpoint") -> LoadedModel:
    """The model of a loaded training state (see :func:`load_model`), on the CPU, in eval mode."""
    from fairdefense.models import create_model

    if weights not in ("eval", "trained"):
        raise ConfigError(f"weights must be 'eval' or 'trained', got {weights!r}.")
    meta = state["data"]
    if "model" not in meta:
        raise ConfigError(
            f"{where} was trained from Python on a model of your own (no model name recorded), so it "
            f"cannot be rebuilt here. Build your model, then load its weights: "
            f"fairdefense.trainer.load_weights(model, {where!r}); or train with a registered model "
            f"(fairdefense.list_models())."
        )
    model = create_model(meta["model"], len(meta["class_names"]), tuple(meta["input_shape"]), meta["mean"], meta["std"])
    chosen = state["eval_model"] if weights == "eval" and state.get("eval_model") is not None else state["model"]
    model.load_state_dict(chosen)
    return LoadedModel(model.eval(), tuple(meta["class_names"]))


def load_model(
    checkpoint: str | Path, weights: str = "eval", device: str | None = None, *, which: str | None = None
) -> LoadedModel:
    """The trained model of a run folder or checkpoint file, ready to use, and its class names.

    ``checkpoint`` is a run folder (``which``: ``"last"``, the default, or ``"best"``) or a
    ``.pt`` file written by the trainer. ``weights="eval"`` gives the weights a plugin supplied
    for evaluation (EMA, FAWA, CFA) when there are any, else the trained ones;
    ``"trained"`` always the trained ones. The model is rebuilt as the run recorded it
    (registered architecture or RobustBench zoo architecture, with the run's input
    standardisation), in eval mode, on ``device`` (default: as :func:`fairdefense.config.select_device`).
    Returns a :class:`LoadedModel` ``(model, class_names)``.
    """
    from fairdefense.config import select_device

    ckpt, _ = RunFolder.resolve(checkpoint, which)
    loaded = model_from_state(load_training_state(ckpt), weights, str(ckpt))
    return LoadedModel(loaded.model.to(select_device(device)), loaded.class_names)
