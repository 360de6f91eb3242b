"""``fairdefense train``: adversarial training with fairness plugins."""
from __future__ import annotations

import argparse
from typing import Sequence

from fairdefense.errors import ConfigError

__all__ = ["add_parser", "run", "parse_plugin_options"]

HELP = "adversarial training with fairness plugins"


def parse_plugin_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["cfa.lambda1=0.5", "bat.alpha=2"]`` -> ``{"cfa": {"lambda1": "0.5"}, "bat": {"alpha": "2"}}``."""
    options: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        plugin, dot, name = key.partition(".")
        if not sep or not dot or not plugin or not name:
            raise ConfigError(f"plugin option {item!r} must look like PLUGIN.KEY=VALUE (e.g. -o cfa.lambda1=0.5).")
        options.setdefault(plugin, {})[name] = value
    return options


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description="Adversarial training; with no --plugin it is the PGD-AT / TRADES baseline.")
    p.add_argument("--plugin", action="append", default=[], metavar="NAME", help="activate a plugin (repeatable)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE", help="plugin option (repeatable)")
    p.add_argument("--objective", metavar="NAME",
                   help="base objective: at, trades, mart, fat or an installed one (see 'fairdefense objectives'; "
                        "default: at, or what the plugin needs)")
    p.add_argument("--recipe", metavar="NAME", help="start from a named recipe (see 'fairdefense recipes'); flags override it")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as TOML and exit without training")
    p.add_argument("--dataset", help="dataset name (default: digits, embedded)")
    p.add_argument("--data-dir", help="where datasets are stored / downloaded")
    p.add_argument("--model", help="model name (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["multistep", "cosine", "constant"])
    p.add_argument("--eps", type=float, help="attack radius in input units (digits default 0.2; images 8/255)")
    p.add_argument("--eps-step", type=float, help="attack step (default eps/4)")
    p.add_argument("--attack-steps", type=int, help="PGD steps during training (default 10)")
    p.add_argument("--norm", choices=["linf", "l2"])
    p.add_argument("--random-start", choices=["uniform", "normal", "none"],
                   help="attack start (default: uniform for at, x + 0.001 N(0, I) for trades)")
    p.add_argument("--early-stop-extra-steps", type=int, metavar="TAU",
                   help="FAT's tau: steps a sample takes after it is first misclassified (fat objective, bat; default 1)")
    p.add_argument("--attack-mode", choices=["eval", "train"],
                   help="model mode during the training attack (default eval; train lets BatchNorm update, as CFA's AT code)")
    p.add_argument("--beta", type=float, help="TRADES and MART beta (default 6)")
    p.add_argument("--val-size", type=float, help="validation samples per class (count >= 1 or fraction < 1)")
    p.add_argument("--select-best", action="store_true", default=None,
                   help="also keep best.pt, the epoch with the highest average + worst-class validation robust accuracy")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision (fp16 uses a gradient scaler)")
    p.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model's forward")
    p.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and attacks (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--init", metavar="CKPT", help="fine-tune from these weights (checkpoint or state_dict)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run exactly")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<dataset>-<plugins>-<objective>-s<seed>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace):
    """The TrainConfig of the command line: the recipe's settings (if any) with the flags on top."""
    from fairdefense.config import TrainConfig

    given = {
        "dataset": args.dataset, "data_dir": args.data_dir, "model": args.model, "objective": args.objective,
        "beta": args.beta, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "schedule": args.schedule, "eps": args.eps, "eps_step": args.eps_step, "attack_steps": args.attack_steps,
        "norm": args.norm, "random_start": args.random_start, "attack_mode": args.attack_mode,
        "early_stop_extra_steps": args.early_stop_extra_steps, "val_size": args.val_size, "select_best": args.select_best, "amp": args.amp,
        "channels_last": args.channels_last, "compile": args.compile, "workers": args.workers, "seed": args.seed,
        "device": args.device, "init": args.init, "out": args.out,
        "plugins": tuple(args.plugin) or None, "plugin_options": parse_plugin_options(args.option) or None,
    }
    if args.recipe:
        from fairdefense.recipes import recipe_config

        return recipe_config(args.recipe, given, require_init=not args.dry_run)
    return TrainConfig.from_dict({k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from fairdefense.api import build_trainer, default_run_dir, resume
    from fairdefense.report import format_report

    progress = not args.no_progress
    if args.resume:
        result = resume(args.resume, epochs=args.epochs, progress=progress)
    else:
        config = _config(args)
        if args.dry_run:
            from fairdefense.recipes import config_to_toml, resolve_offline

            print(config_to_toml(resolve_offline(config)))
            return 0
        trainer = build_trainer(config, progress=progress)
        if trainer.run_dir is None:
            trainer.run_dir = default_run_dir(trainer.config)
        print(f"run folder: {trainer.run_dir}")
        result = trainer.fit()
    from fairdefense.reports import write_run_report

    write_run_report(result.run_dir)
    label = "+".join(result.config.plugins) or f"baseline ({result.config.objective})"
    if result.report is not None:
        print(format_report(result.report, title=f"\n{label} on {result.config.dataset}: test set, eps={result.config.eps:g}"))
    total = sum(e["time"] for e in result.history)
    print(f"\n{len(result.history)} epochs in {total:.1f} s; checkpoint: {result.run_dir / 'last.pt'}; "
          f"report: {result.run_dir / 'report.md'}")
    return 0
