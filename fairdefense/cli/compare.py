"""``fairdefense compare``: a leaderboard of runs and an average-vs-worst scatter."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

HELP = "rank runs by average + worst-class robust accuracy (Markdown, CSV and a scatter plot)"


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare", help=HELP,
        description="Compare runs from their metrics.json (written by fairdefense evaluate) or, without one, their "
                    "last test evaluation during training. Writes leaderboard.md, leaderboard.csv and "
                    "leaderboard.png.",
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or metrics.json files)")
    c.add_argument("--attack", help="rank under this attack (default: worst-case, else autoattack, else the first "
                                    "attack all runs share)")
    c.add_argument("--out", metavar="DIR", default=".", help="where the files go (default: the current folder)")


def run(args: argparse.Namespace) -> int:
    from fairdefense.reports import write_leaderboard

    _, files = write_leaderboard(args.runs, args.out, args.attack)
    print(files["leaderboard.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
