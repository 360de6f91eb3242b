"""``fairdefense objectives``: list the installed base objectives."""
from __future__ import annotations

import argparse

from fairdefense.cli.plugins import print_listing

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("objectives", help="list installed base objectives")
    p.add_argument("filter", nargs="?", help="only names containing this (case-insensitive), or matching it if it has * ? [...]")


def _attack(info) -> str:
    stop = ", early-stopped" if info.early_stop else ""
    return f"attack: {info.attack_loss} loss, {info.random_start} start{stop}"


def run(args: argparse.Namespace) -> int:
    from fairdefense.objectives import list_objectives

    print_listing(list_objectives(args.filter), "objectives", args.filter, _attack)
    return 0
