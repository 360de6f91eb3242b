"""``fairdefense evaluate``: per-class robustness of a run or checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="per-class robustness of a checkpoint")
    e.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    e.add_argument("--attacks", help="comma-separated, e.g. clean,pgd20,cw20 (default: the run's)")
    e.add_argument("--eps", type=float)
    e.add_argument("--n-samples", type=int)
    e.add_argument("--batch-size", type=int)
    e.add_argument("--weights", choices=["eval", "trained"], default="eval",
                   help="evaluate the weights a plugin supplied (EMA/FAWA) or the trained ones")
    e.add_argument("--device")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from fairdefense.api import evaluate_checkpoint
    from fairdefense.report import format_report

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "last.pt"
    attacks = [a for a in args.attacks.split(",") if a and a != "clean"] if args.attacks else None
    report = evaluate_checkpoint(
        path, attacks, eps=args.eps, n_samples=args.n_samples, batch_size=args.batch_size,
        weights=args.weights, device=args.device, seed=args.seed,
    )
    print(format_report(report, title=f"{path}"))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0
