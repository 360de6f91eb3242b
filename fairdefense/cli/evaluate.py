"""``fairdefense evaluate``: per-class robustness of a run or checkpoint, with report files."""
from __future__ import annotations

import argparse

from fairdefense.cli._zoo import add_arguments as add_zoo_arguments
from fairdefense.errors import ConfigError

__all__ = ["add_parser", "run"]

HELP = "per-class robustness of a run or checkpoint (clean, PGD-20, CW-20, AutoAttack) with report files"


def add_parser(sub) -> None:
    e = sub.add_parser(
        "evaluate", help=HELP,
        description="Evaluate a run folder (last.pt, or best.pt with --checkpoint best) or a checkpoint file on its "
                    "test split and write metrics.json, report.md, classwise.png and curves.png.",
    )
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder, a checkpoint file, or robustbench:NAME (a RobustBench zoo model)")
    e.add_argument("--attacks", default="clean,pgd20,cw20,autoattack",
                   help="comma-separated from clean, pgdK, cwK, autoattack (default: %(default)s; "
                        "clean accuracy is always measured)")
    e.add_argument("--autoattack-set", metavar="A,B", help="custom AutoAttack attacks, e.g. apgd-ce,apgd-t "
                   "(default: the standard version, reduced below 10 classes)")
    e.add_argument("--eps", type=float, help="attack radius (default: the run's)")
    e.add_argument("--n-samples", type=int, help="evaluate the first N test samples (default: all)")
    e.add_argument("--batch-size", type=int, help="default: the run's")
    e.add_argument("--checkpoint", dest="which", choices=["last", "best"],
                   help="in a run folder: last.pt (default) or best.pt (written by train --select-best)")
    e.add_argument("--weights", choices=["eval", "trained"], default="eval",
                   help="evaluate the weights a plugin supplied (EMA/FAWA) or the trained ones")
    e.add_argument("--device")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", metavar="DIR", help="where the report files go (default: the run folder)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_zoo_arguments(e)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    from fairdefense.textreport import format_report
    from fairdefense.reports import evaluate_run, report_from_metrics
    from fairdefense.reports.schema import eps_text

    attacks = [a for a in _split(args.attacks) or [] if a != "clean"]
    if not attacks:
        raise ConfigError("--attacks needs at least one attack besides clean, e.g. --attacks clean,pgd20.")
    if args.checkpoint.startswith("robustbench:"):
        from fairdefense.cli._zoo import evaluate as evaluate_zoo

        metrics, files = evaluate_zoo(args, attacks, _split(args.autoattack_set))
    else:
        metrics, files = evaluate_run(
            args.checkpoint, attacks, checkpoint=args.which, eps=args.eps, n_samples=args.n_samples,
            batch_size=args.batch_size, weights=args.weights, device=args.device, seed=args.seed,
            autoattack=_split(args.autoattack_set), progress=not args.no_progress, out=args.out,
        )
    ev = metrics["evaluated"]
    title = f"{metrics['run']['strategy']} on {metrics['run']['dataset']}: {ev['checkpoint']} (epoch {ev['epoch']}, " \
            f"{ev['weights_used']} weights), eps={eps_text(metrics['settings']['eps'])}"
    print(format_report(report_from_metrics(metrics), title=title))
    aa = metrics["settings"]["attacks"].get("autoattack")
    if aa:
        print(f"\nautoattack: {aa['note']} (package {aa['package']})")
    print("\nwrote " + ", ".join(str(p) for p in files.values()))
    return 0
