"""Settings on the command line, shared by ``train`` and ``recipes``: the ``--set KEY=VALUE``
grammar and the dry run (the resolved config, printed)."""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Sequence

from fairdefense.errors import ConfigError

__all__ = ["parse_settings", "print_resolved"]

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=2", "eps=8/255", "milestones=[0.5]", "init=runs/a/last.pt"]`` -> typed values.

    A value is read as a TOML value (numbers, booleans, ``[lists]``, ``"strings"``),
    a fraction ``a/b`` as its quotient, anything else as a plain string.
    """
    from fairdefense.recipes import tomllib

    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"setting {item!r} must look like KEY=VALUE (e.g. --set epochs=2).")
        fraction = _FRACTION.match(text)
        if fraction:
            settings[key.strip()] = float(fraction.group(1)) / float(fraction.group(2))
            continue
        try:
            settings[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = text
    return settings


def print_resolved(config, as_json: bool, command: str) -> None:
    """The dry run of ``train`` and ``recipes``: print ``config`` fully resolved (plugins'
    requirements, dataset defaults; no dataset file read) as TOML, or as JSON."""
    from fairdefense.recipes import config_to_toml, resolve_offline
    from fairdefense.zoo import is_zoo, zoo_id

    if is_zoo(config.init) and config.model is None:  # the architecture the zoo model brings
        config.model = zoo_id(config.init, config.dataset, config.norm)
    resolved = resolve_offline(config)
    if as_json:
        print(json.dumps(resolved.to_dict(), indent=2))
    else:
        sys.stdout.write(f"# {command}: the resolved training config\n")
        sys.stdout.write(config_to_toml(resolved))
