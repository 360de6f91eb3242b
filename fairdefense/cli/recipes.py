"""``fairdefense recipes``: the papers' settings, what they reproduce, and the numbers to expect.

- ``fairdefense recipes``: list the recipes with the paper's numbers;
- ``fairdefense recipes NAME``: a recipe's details and settings;
- ``fairdefense recipes NAME --dry-run [--json] [--set KEY=VALUE] [-o PLUGIN.KEY=VALUE]``:
  the fully resolved training config (plugins' requirements and dataset defaults
  applied) without reading any dataset file.
"""
from __future__ import annotations

import argparse
import textwrap
from typing import Any

from fairdefense.cli._settings import parse_settings, print_resolved
from fairdefense.errors import ConfigError

__all__ = ["add_parser", "run", "parse_settings"]


def add_parser(sub) -> None:
    r = sub.add_parser(
        "recipes", help="the papers' settings and the numbers they report",
        description="List the recipes (papers' settings), show one, or print its resolved config (--dry-run).",
    )
    r.add_argument("name", nargs="?", metavar="NAME", help="a recipe name or a recipe .toml file")
    r.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved training config (reads no dataset file)")
    r.add_argument("--json", action="store_true", help="with --dry-run: JSON instead of TOML")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (repeatable), e.g. --set epochs=2 --set eps=8/255")
    r.add_argument("-o", "--option", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                   help="plugin option (repeatable)")


def run(args: argparse.Namespace) -> int:
    from fairdefense.recipes import config_to_toml, list_recipes, load_recipe

    if args.name is None:
        if args.dry_run or args.set or args.option:
            raise ConfigError("--dry-run, --set and -o need a recipe NAME (see 'fairdefense recipes').")
        for info in list_recipes():
            _print_summary(info)
        return 0
    if args.dry_run:
        return _dry_run(args)
    recipe = load_recipe(args.name)
    _print_summary(recipe, every_result=True)
    if recipe.notes:
        print("\n    " + recipe.notes.replace("\n", "\n    "))
    print("\n    [config]  (TrainConfig fields; unset ones take the plugins', the dataset's or the library's defaults)")
    print(textwrap.indent(config_to_toml(recipe.config), "      "), end="")
    print(f"\n    resolved: fairdefense recipes {recipe.name} --dry-run")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from fairdefense.cli.train import parse_plugin_options
    from fairdefense.recipes import recipe_config

    overrides: dict[str, Any] = parse_settings(args.set)
    if args.option:
        overrides["plugin_options"] = parse_plugin_options(args.option)
    print_resolved(recipe_config(args.name, overrides, require_init=False), args.json,
                   f"fairdefense recipes {args.name} --dry-run")
    return 0


def _print_summary(info, every_result: bool = False) -> None:
    start = f"  (fine-tunes the weights of {info.starts_from}: --init)" if info.starts_from else ""
    print(f"{info.name}{start}\n    {info.description}\n    reproduces: {info.reproduces}")
    shown = info.results if every_result else info.results[:1]
    for result in shown:
        numbers = ", ".join(f"{key} {avg:g}/{worst:g}" for key, (avg, worst) in result.metrics.items())
        print(f"    paper (avg/worst %): {numbers}\n      [{result.source}]")
    if len(info.results) > len(shown):
        print(f"    ... {len(info.results) - len(shown)} more result(s): fairdefense recipes {info.name}")
