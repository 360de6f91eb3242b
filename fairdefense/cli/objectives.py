"""``fairdefense objectives``: list the installed base objectives."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("objectives", help="list installed base objectives")
    p.add_argument("filter", nargs="?", help="only names containing this")


def run(args: argparse.Namespace) -> int:
    from fairdefense.objectives import list_objectives

    infos = list_objectives(args.filter)
    if not infos:
        print("no objectives installed" + (f" matching {args.filter!r}" if args.filter else ""))
    for info in infos:
        print(f"{info.name}  {info.version}  ({info.distribution})")
        if info.error:
            print(f"    failed to load: {info.error}")
            continue
        print(f"    {info.description}")
        stop = ", early-stopped" if info.early_stop else ""
        print(f"    attack: {info.attack_loss} loss, {info.random_start} start{stop}")
    return 0
