"""Render the hook contract (the docstrings of :mod:`fairdefense.hookspecs`) as Markdown.

``docs/plugins.md`` embeds this rendering between ``<!-- hooks:begin -->`` and
``<!-- hooks:end -->``; a test fails when the two differ. Regenerate with::

    python -m fairdefense.hookdoc --write docs/plugins.md
"""
from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from fairdefense import hookspecs
from fairdefense.hookspecs import HOOK_NAMES

__all__ = ["render_reference", "BEGIN", "END"]

BEGIN, END = "<!-- hooks:begin -->", "<!-- hooks:end -->"


def render_reference() -> str:
    """Every hook: its signature, whether it is exclusive, and its docstring."""
    parts = []
    for name in HOOK_NAMES:
        spec = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(spec).parameters)
        exclusive = " (exclusive)" if name in hookspecs.EXCLUSIVE_HOOKS else ""
        parts.append(f"### `{name}({params})`{exclusive}\n\n{inspect.getdoc(spec)}\n")
    return "\n".join(parts)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="MARKDOWN", help="replace the marked section of this file")
    args = parser.parse_args()
    if not args.write:
        print(render_reference())
        return
    path = Path(args.write)
    text = path.read_text()
    block = f"{BEGIN}\n{render_reference()}{END}"
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S))


if __name__ == "__main__":
    _main()
