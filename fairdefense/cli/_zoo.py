"""``fairdefense evaluate robustbench:NAME``: the options and the call (see :mod:`fairdefense.zoo`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_arguments", "evaluate"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a RobustBench target (``robustbench:NAME``)."""
    zoo = parser.add_argument_group("a RobustBench model (RUN_OR_CHECKPOINT = robustbench:NAME)")
    zoo.add_argument("--dataset", default="cifar10", help="its dataset: cifar10 (default) or cifar100")
    zoo.add_argument("--norm", choices=["linf", "l2"], default="linf",
                     help="its threat model (default linf; eps defaults to 8/255, 0.5 for l2)")
    zoo.add_argument("--model-dir", help="RobustBench's cache folder (default: ./models, as RobustBench's)")
    zoo.add_argument("--data-dir", help="where the dataset is stored")


def evaluate(args: argparse.Namespace, attacks: Sequence[str], autoattack: Sequence[str] | None
             ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate ``args.checkpoint`` (``robustbench:NAME``) as ``fairdefense evaluate`` does a run."""
    from fairdefense.errors import ConfigError
    from fairdefense.reports.zoo import evaluate_zoo

    if args.which or args.weights != "eval":
        raise ConfigError("--checkpoint and --weights choose among a run's weights; a RobustBench model has one set.")
    return evaluate_zoo(
        args.checkpoint, attacks, dataset=args.dataset, norm=args.norm, model_dir=args.model_dir,
        data_dir=args.data_dir, eps=args.eps, n_samples=args.n_samples, batch_size=args.batch_size or 128,
        device=args.device, seed=args.seed, autoattack=autoattack, progress=not args.no_progress, out=args.out,
    )
