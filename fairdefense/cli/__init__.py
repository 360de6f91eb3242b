"""The ``fairdefense`` command.

Each subcommand is a module of this package defining ``add_parser(subparsers)``
and ``run(args) -> int``; :func:`subcommands` finds them (in :data:`ORDER` first).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from fairdefense.errors import FairDefenseError

__all__ = ["main", "build_parser", "subcommands", "ORDER"]

#: Help order of the subcommands; any other module of this package follows.
ORDER = ("train", "evaluate", "compare", "plugins", "recipes")
#: Subcommands that run models and take ``--threads``.
THREADED = ("train", "evaluate")


def subcommands() -> list[str]:
    """Names of the subcommand modules in this package."""
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairdefense", description="Robust fairness for adversarial training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in subcommands():
        importlib.import_module(f"fairdefense.cli.{name}").add_parser(sub)
    for name in THREADED:
        sub.choices[name].add_argument(
            "--threads", type=int, metavar="N",
            help="CPU threads for torch (default: the CPUs this process may use, from its affinity and cgroup "
                 "quota); use 1 when several runs share the machine",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in THREADED:
            from fairdefense.threads import set_threads

            set_threads(args.threads)
        return importlib.import_module(f"fairdefense.cli.{args.command}").run(args)
    except FairDefenseError as exc:
        print(f"fairdefense {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
