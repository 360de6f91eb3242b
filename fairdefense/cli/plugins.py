"""``fairdefense plugins``: list the installed strategies."""
from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    pl = sub.add_parser("plugins", help="list installed plugins")
    pl.add_argument("filter", nargs="?", help="only names containing this (case-insensitive), or matching it if it has * ? [...]")


def run(args: argparse.Namespace) -> int:
    from fairdefense.manager import list_plugins

    infos = list_plugins(args.filter)
    if not infos:
        print("no plugins installed" + (f" matching {args.filter!r}" if args.filter else ""))
    for info in infos:
        print(f"{info.name}  {info.version}  ({info.distribution})")
        if info.error:
            print(f"    failed to load: {info.error}")
            continue
        print(f"    {info.description}")
        print(f"    hooks: {', '.join(info.hooks)}")
    return 0
