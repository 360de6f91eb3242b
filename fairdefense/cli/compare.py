"""``fairdefense compare``: a leaderboard of runs, seeds grouped with paired tests, and an average-vs-worst scatter."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

HELP = "rank runs by average + worst-class robust accuracy; group seeds and test differences to a baseline"


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help=HELP,
        description="Compare runs from their metrics.json (written by fairdefense evaluate) or, without one, their "
                    "last test evaluation during training. Runs that differ only by seed (or fold) are grouped: mean "
                    "and std over runs, and a paired t-test of average and worst-class robust accuracy against the "
                    "baseline on the seeds both ran. Prints the leaderboard; with --out, also writes "
                    "leaderboard.md, leaderboard.csv, leaderboard-configurations.csv and leaderboard.png there.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or metrics.json files)")
    c.add_argument("--attack", help="rank under this attack (default: worst-case, else autoattack, else the first "
                                    "attack all runs share)")
    c.add_argument("--baseline", metavar="NAME", help="configuration (as labelled in the table) or run folder name "
                                                      "to test against (default: the first run's configuration)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level of the paired tests "
                                                             "(default: %(default)s)")
    c.add_argument("--out", metavar="DIR", help="also write the leaderboard files into DIR (default: print only)")


def run(args: argparse.Namespace) -> int:
    from fairdefense.reports import write_leaderboard
    from fairdefense.run_folder import writable_folder

    if args.out is not None:
        writable_folder(args.out)
    text, files = write_leaderboard(args.runs, args.out, args.attack, baseline=args.baseline, alpha=args.alpha)
    print(text)
    if files:
        print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
