"""``fairdefense train``: adversarial training with fairness plugins."""
from __future__ import annotations

import argparse
import os
import sys
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
    p.add_argument("--json", action="store_true", help="with --dry-run: JSON instead of TOML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any training setting (repeatable), as in 'recipes --set': --set momentum=0.9 "
                        "--set milestones=[0.5,0.75] --set eval_attacks=[\"pgd20\",\"cw20\"] --set eps=8/255")
    p.add_argument("--dataset", help="dataset name (default: digits, embedded)")
    p.add_argument("--data-dir", help="where datasets are stored / downloaded")
    p.add_argument("--fold", metavar="I/K", help="test on fold I (from 0) of a stratified K-fold split (digits)")
    p.add_argument("--model", help="model name (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--schedule", choices=["multistep", "cosine", "constant"])
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum in SGD (default off)")
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
    p.add_argument("--log-every", type=int,
                   help="read the loss, the finite-loss check and the progress bar every N batches (default 50)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)")
    p.add_argument("--dist-backend", choices=["nccl", "gloo"],
                   help="under torchrun: collective backend (default nccl on CUDA, gloo on CPU)")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="under torchrun: how long a process waits for a dead or stalled peer (default 600)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and attacks (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--init", metavar="CKPT", help="fine-tune from these weights (checkpoint or state_dict), or "
                                                "robustbench:NAME, a RobustBench zoo model (for --dataset and --norm)")
    p.add_argument("--model-dir", help="RobustBench's cache folder for --init robustbench:NAME (default ./models)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run exactly (its last.pt, or the run folder)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<dataset>-<plugins>-<objective>-s<seed>); "
                   "one that holds a run is refused unless --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (its files are removed)")
    p.add_argument("--log", action="append", default=[], metavar="LOGGER",
                   help="experiment tracking (repeatable or comma-separated): tensorboard, mlflow, or an installed "
                        "logger; needs the extra of the same name, e.g. pip install 'fairdefense[tensorboard]'")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _given(args: argparse.Namespace) -> dict:
    """The settings of the command line's flags (``None`` where a flag was not given)."""
    return {
        "dataset": args.dataset, "data_dir": args.data_dir, "fold": args.fold, "model": args.model,
        "objective": args.objective, "beta": args.beta, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "schedule": args.schedule, "nesterov": args.nesterov, "eps": args.eps,
        "eps_step": args.eps_step, "attack_steps": args.attack_steps,
        "norm": args.norm, "random_start": args.random_start, "attack_mode": args.attack_mode,
        "early_stop_extra_steps": args.early_stop_extra_steps, "val_size": args.val_size,
        "select_best": args.select_best, "amp": args.amp, "channels_last": args.channels_last, "compile": args.compile,
        "workers": args.workers, "threads": args.threads, "seed": args.seed,
        "log_every": args.log_every, "sync_bn": args.sync_bn,
        "device": args.device, "init": args.init, "model_dir": args.model_dir, "out": args.out,
        "plugins": tuple(args.plugin) or None, "plugin_options": parse_plugin_options(args.option) or None,
        "loggers": tuple(n.strip() for item in args.log for n in item.split(",") if n.strip()) or None,
    }


def _config(args: argparse.Namespace):
    """The TrainConfig of the command line: the recipe's settings (if any) with the flags and
    ``--set`` settings on top (a setting given both ways is an error)."""
    from fairdefense.cli._settings import parse_settings
    from fairdefense.config import TrainConfig

    given = _given(args)
    settings = parse_settings(args.set)
    both = sorted(k for k in settings if given.get(k) is not None)
    if both:
        raise ConfigError(f"{both} given both as a flag and with --set; give each setting once.")
    given.update(settings)
    if args.recipe:
        from fairdefense.recipes import recipe_config

        return recipe_config(args.recipe, given, require_init=not args.dry_run)
    return TrainConfig.from_dict({k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from fairdefense import distributed

    try:
        return _run(args)
    except distributed.PeerFailureError as exc:
        # a group that lost a peer cannot be torn down cleanly (gloo and NCCL may abort the process at
        # exit): say why, then leave at once with the CLI's error status
        print(f"fairdefense train: error: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)


def _run(args: argparse.Namespace) -> int:
    from fairdefense import distributed
    from fairdefense.api import build_trainer, default_run_dir, resume
    from fairdefense.cli._settings import print_resolved
    from fairdefense.textreport import format_report

    if not args.dry_run:
        distributed.init_from_env(args.dist_backend, args.dist_timeout)
    main = distributed.is_main()
    progress = not args.no_progress
    if args.resume:
        if args.recipe:
            raise ConfigError("--recipe starts a run; --resume continues one with its own settings: drop one of them.")
        changes = {k: v for k, v in _given(args).items() if v is not None}
        result = resume(args.resume, progress=progress, **changes)
    else:
        config = _config(args)
        if args.dry_run:
            print_resolved(config, args.json, "fairdefense train --dry-run")
            return 0
        trainer = build_trainer(config, progress=progress, overwrite=args.overwrite)
        if trainer.run_dir is None:  # chosen by the main process: numbering must not race
            trainer.run_dir = distributed.broadcast_object(default_run_dir(trainer.config) if main else None)
        if main:
            print(f"run folder: {trainer.run_dir}" + (f" ({distributed.world_size()} processes)"
                                                       if distributed.world_size() > 1 else ""))
        result = trainer.fit()
    if not main:
        return 0
    from fairdefense.reports import write_run_report
    from fairdefense.run_folder import RunFolder
    from fairdefense.tracking import log_report_files

    log_report_files(result.run_dir, result.config, write_run_report(result.run_dir))
    label = "+".join(result.config.plugins) or f"baseline ({result.config.objective})"
    if result.report is not None:
        print(format_report(result.report, title=f"\n{label} on {result.config.dataset}: test set, eps={result.config.eps:g}"))
    total = sum(e["time"] for e in result.history)
    folder = RunFolder(result.run_dir)
    print(f"\n{len(result.history)} epochs in {total:.1f} s; checkpoint: {folder.last}; "
          f"report: {folder.report_file('report.md')}")
    return 0
