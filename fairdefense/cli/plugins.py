"""``fairdefense plugins``: list the installed strategies; ``fairdefense plugins NAME``: one
plugin with its options (type, default, help).

An option's help is its dataclass field's ``metadata["help"]``, else the text after
````name``:`` in the ``Options`` docstring (the convention of the built-in plugins)::

    @dataclass
    class Options:
        \"\"\"``r``: radius of the KL ball.\"\"\"
        r: float = 0.5
        begin: int = field(default=0, metadata={"help": "first epoch with weighting"})
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["add_parser", "run", "print_listing", "OptionInfo", "plugin_options"]

#: ````a``/``b``: text`` at the start of a docstring line: the options the text describes.
_DOC_ENTRY = re.compile(r"^\s*((?:``\w+``\s*(?:/|,|and)?\s*)+):\s*(.*)$")


@dataclass(frozen=True)
class OptionInfo:
    """One option of a plugin: its name, type, default and help."""

    name: str
    type: str
    default: Any
    help: str


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _docstring_help(options_cls: type) -> dict[str, str]:
    """``{option: text}`` from ````name``: text`` entries of the Options docstring (an entry
    runs until the next entry or a blank line)."""
    found: dict[str, str] = {}
    names: list[str] = []
    for line in (inspect.getdoc(options_cls) or "").splitlines():
        entry = _DOC_ENTRY.match(line)
        if entry:
            names = re.findall(r"``(\w+)``", entry.group(1))
            for name in names:
                found[name] = entry.group(2).strip()
        elif line.strip() and names:
            for name in names:
                found[name] += " " + line.strip()
        else:
            names = []
    return found


def plugin_options(plugin: Any) -> list[OptionInfo]:
    """The options of a :class:`~fairdefense.FairnessPlugin` class (none for other plugins)."""
    from fairdefense.plugin import FairnessPlugin

    if not (isinstance(plugin, type) and issubclass(plugin, FairnessPlugin)):
        return []
    options_cls = plugin.Options
    hints = typing.get_type_hints(options_cls)
    documented = _docstring_help(options_cls)
    return [
        OptionInfo(f.name, _type_name(hints[f.name]), _default(f), str(f.metadata.get("help", documented.get(f.name, ""))))
        for f in dataclasses.fields(options_cls)
    ]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def add_parser(sub) -> None:
    pl = sub.add_parser(
        "plugins", help="list installed plugins; with a plugin's exact NAME, its options",
        description="List installed plugins (names containing FILTER). Given a plugin's exact name, also show its "
                    "options with their types, defaults and help (set them with -o NAME.OPTION=VALUE).",
    )
    pl.add_argument("filter", nargs="?", metavar="NAME_OR_FILTER",
                    help="a plugin's exact name (its options are shown too), or only names containing this "
                         "(case-insensitive), or matching it if it has * ? [...]")


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
    from importlib.metadata import entry_points

    from fairdefense.pluginhost import ENTRY_POINT_GROUP, list_plugins

    def detail(info) -> str:
        text = f"hooks: {', '.join(info.hooks)}"
        if info.name == args.filter:  # an exact name: its options too
            (ep,) = entry_points(group=ENTRY_POINT_GROUP, name=info.name)
            text += "\n" + _options_text(info.name, plugin_options(ep.load()))
        return text

    print_listing(list_plugins(args.filter), "plugins", args.filter, detail)
    return 0


def _options_text(name: str, options: list[OptionInfo]) -> str:
    if not options:
        return "    options: none"
    lines = [f"    options (-o {name}.OPTION=VALUE):"]
    width = max(len(f"{o.name}: {o.type} = {o.default!r}") for o in options)
    for o in options:
        head = f"{o.name}: {o.type} = {o.default!r}"
        lines.append(f"      {head:<{width}}  {o.help}".rstrip())
    return "\n".join(lines)
