"""Writing a strategy: the ``hookimpl`` marker and the ``FairnessPlugin`` base class.

A strategy written in plain Python subclasses :class:`FairnessPlugin`, declares its
options as a dataclass with the paper's defaults, and defines methods named after
hooks (see :mod:`fairdefense.hookspecs`). Marking them with ``@hookimpl`` is optional
for ``FairnessPlugin`` subclasses and required for any other plugin object::

    from dataclasses import dataclass
    import fairdefense

    class UpweightCats(fairdefense.FairnessPlugin):
        name = "upweight-cats"

        @dataclass
        class Options:
            factor: float = 2.0

        def reweight(self, batch, outputs):
            w = 1.0 + (self.options.factor - 1.0) * (batch.y == 3).float()
            return fairdefense.LossWeights(robust=w)
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, ClassVar, Mapping

import pluggy

from fairdefense.errors import PluginOptionError
from fairdefense.hookspecs import PROJECT_NAME

__all__ = ["hookimpl", "FairnessPlugin", "parse_options"]

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass
class _NoOptions:
    """A plugin without options."""


def _coerce(plugin: str, key: str, value: Any, annotation: Any) -> Any:
    """Convert a CLI string (or a Python value) to the option's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value
        expected = " or ".join(repr(c) for c in choices)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        expected = "a boolean (true/false)"
    elif annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
        except (TypeError, ValueError):
            expected = annotation.__name__
    else:
        return value
    raise PluginOptionError(f"plugin '{plugin}': option '{key}' expects {expected}, got {value!r}.")


def parse_options(plugin: str, options_cls: type, options: Mapping[str, Any]) -> Any:
    """Build ``options_cls`` from a mapping of option names to values.

    Strings (as given on the command line) are converted to the declared types.
    An unknown key raises :class:`~fairdefense.errors.PluginOptionError` listing
    the valid keys and the nearest match.
    """
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    values = {}
    for key, value in options.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none: this plugin takes no options)"
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise PluginOptionError(
                f"plugin '{plugin}' has no option '{key}'.{hint} Valid options: {valid}."
            )
        values[key] = _coerce(plugin, key, value, hints[key])
    return options_cls(**values)


class FairnessPlugin:
    """Base class of a fairness strategy written in Python.

    Subclasses set :attr:`name` (the name users activate it by), may declare an
    ``Options`` dataclass whose field defaults are the paper's defaults, and define
    hook methods. Instantiate with keyword options (``Plugin(lambda1=0.3)``) or a
    mapping (``Plugin.from_options({"lambda1": "0.3"})``); unknown keys are an error
    that lists the valid ones. The parsed options are in ``self.options``.

    Any public method whose name is a hook is registered as that hook's
    implementation (except those :meth:`inactive_hooks` names); a public method whose name is close to a hook's name but is
    not one is refused at registration (it is almost certainly a typo).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = _NoOptions

    def __init__(self, **options: Any) -> None:
        self.options = parse_options(self.plugin_name(), self.Options, options)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "FairnessPlugin":
        """Instantiate from a mapping of option names to values (CLI strings allowed)."""
        return cls(**dict(options))

    def plugin_name(self) -> str:
        """The name this plugin is known by (``name``, else the class name in lower case)."""
        return self.name or type(self).__name__.lower()

    def inactive_hooks(self) -> frozenset[str]:
        """Hooks this instance leaves out with its current options (they are not registered).

        Override it when an option switches a part of the strategy off, so that the
        part does not claim an exclusive hook: e.g. CFA without FAWA does not
        implement ``weights_to_evaluate`` and combines with EMA.
        """
        return frozenset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"
