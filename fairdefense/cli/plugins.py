"""``fairdefense plugins``: list the installed strategies."""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

__all__ = ["add_parser", "run", "print_listing"]


def add_parser(sub) -> None:
    pl = sub.add_parser("plugins", help="list installed plugins")
    pl.add_argument("filter", nargs="?", help="only names containing this (case-insensitive), or matching it if it has * ? [...]")


def print_listing(infos: Sequence, what: str, filter: str | None, detail: Callable[[object], str]) -> None:
    """Print entry-point listings: name, version, distribution, description and ``detail(info)``
    (or the error that loading raised)."""
    if not infos:
        print(f"no {what} installed" + (f" matching {filter!r}" if filter else ""))
    for info in infos:
        print(f"{info.name}  {info.version}  ({info.distribution})")
        if info.error:
            print(f"    failed to load: {info.error}")
            continue
        print(f"    {info.description}")
        print(f"    {detail(info)}")


def run(args: argparse.Namespace) -> int:
    from fairdefense.manager import list_plugins

    print_listing(list_plugins(args.filter), "plugins", args.filter, lambda info: f"hooks: {', '.join(info.hooks)}")
    return 0
