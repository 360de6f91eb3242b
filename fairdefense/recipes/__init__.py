"""Recipes: the papers' training settings as TOML files, with the numbers to compare against.

A recipe (``fairdefense/recipes/<name>.toml``, or any ``.toml`` file given by path)
holds::

    description = "one line"
    reproduces  = "paper, table, row"
    starts_from = "pgdat-cifar10-prn18"   # optional: fine-tunes that recipe's weights (--init)
    notes       = "deviations, paper-vs-code settings"   # optional

    [config]                              # TrainConfig fields
    dataset = "cifar10"
    plugins = ["frl"]
    [config.plugin_options.frl]
    tau1 = 0.05

    [[results]]                           # the paper's numbers, in percent
    source = "FRL (Xu et al., ICML 2021), Table 2, row ..."
    clean_error = { avg = 17.0, worst = 26.8 }
    "pgd20/robust_error" = { avg = 52.7, worst = 69.5 }

Result keys are those of :meth:`fairdefense.ClassReport.summary` (whose values are
fractions, not percent). See docs/recipes.md.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping


from fairdefense.config import TrainConfig
from fairdefense.data import dataset_spec
from fairdefense.errors import ConfigError
from fairdefense.evaluation import parse_attack
from fairdefense.models import model_factory
from fairdefense.trainer import resolve_run

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "PaperResult",
    "RecipeInfo",
    "Recipe",
    "list_recipes",
    "load_recipe",
    "recipe_config",
    "resolve_recipe",
    "resolve_offline",
    "config_to_toml",
]

_KEYS = {"description", "reproduces", "starts_from", "notes", "config", "results"}
_METRICS = {"robust_acc", "boundary_error", "robust_error"}


@dataclass(frozen=True)
class PaperResult:
    """Numbers a paper reports for one setting: ``metrics`` maps a
    :meth:`~fairdefense.ClassReport.summary` key (``"clean_error"``,
    ``"pgd20/robust_error"``, ``"autoattack/robust_acc"``...) to ``(avg, worst)`` in percent."""

    source: str
    metrics: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class RecipeInfo:
    """What ``fairdefense recipes`` lists: a recipe without its settings."""

    name: str
    description: str
    reproduces: str
    results: tuple[PaperResult, ...]
    starts_from: str | None = None


@dataclass(frozen=True)
class Recipe(RecipeInfo):
    """A recipe: ``config`` holds its :class:`~fairdefense.TrainConfig` settings as written."""

    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: str = ""
    path: Path | None = None


# ------------------------------------------------------------------ loading
def _builtin_files() -> dict[str, Any]:
    return {
        f.name[: -len(".toml")]: f
        for f in resources.files(__name__).iterdir()
        if f.name.endswith(".toml")
    }


def list_recipes() -> list[RecipeInfo]:
    """The built-in recipes, sorted by name."""
    return [
        RecipeInfo(r.name, r.description, r.reproduces, r.results, r.starts_from)
        for r in (load_recipe(name) for name in sorted(_builtin_files()))
    ]


def load_recipe(name: str) -> Recipe:
    """A built-in recipe by name, or a recipe file by path (``*.toml``).

    Unknown names suggest the nearest built-in ones. The file is checked: unknown
    keys, ``config`` settings that are not TrainConfig fields and malformed
    results are errors naming the file.
    """
    files = _builtin_files()
    if name in files:
        source, path = files[name], Path(str(files[name]))
    elif name.endswith(".toml") and Path(name).is_file():
        source = path = Path(name)
        name = path.stem
    else:
        near = difflib.get_close_matches(name, list(files), n=3, cutoff=0.4)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"unknown recipe {name!r}.{hint} Run 'fairdefense recipes' to list them "
            f"(or give the path of a .toml recipe file)."
        )
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe file {path}: not valid TOML: {exc}.") from exc
    return _parse(name, path, data)


def _parse(name: str, path: Path, data: dict[str, Any]) -> Recipe:
    where = f"recipe {name!r} ({path})"
    unknown = set(data) - _KEYS
    missing = {"description", "reproduces", "config"} - set(data)
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                          f"a recipe has {sorted(_KEYS)}.")
    config = dict(data["config"])
    try:
        TrainConfig.from_dict(config)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}, [config]: {exc}") from exc
    results = tuple(_parse_result(where, entry) for entry in data.get("results", []))
    return Recipe(
        name, str(data["description"]), str(data["reproduces"]), results,
        data.get("starts_from") or None, config, str(data.get("notes", "")).strip(), path,
    )


def _parse_result(where: str, entry: Mapping[str, Any]) -> PaperResult:
    entry = dict(entry)
    source = entry.pop("source", None)
    if not source:
        raise ConfigError(f"{where}: every [[results]] entry needs a 'source' (paper, table, row).")
    metrics = {}
    for key, value in entry.items():
        attack, _, metric = key.rpartition("/")
        valid = key in ("clean_acc", "clean_error") or (attack and metric in _METRICS)
        if valid and attack:
            try:
                parse_attack(attack)
            except ConfigError:
                valid = False
        if not valid:
            raise ConfigError(
                f"{where}: result key {key!r} is not a report summary key; use clean_acc, clean_error or "
                f"ATTACK/{{robust_acc,boundary_error,robust_error}} with ATTACK like pgd20, cw20, autoattack."
            )
        if not (isinstance(value, Mapping) and set(value) == {"avg", "worst"}):
            raise ConfigError(f"{where}: result {key!r} must be {{ avg = ..., worst = ... }} (percent).")
        metrics[key] = (float(value["avg"]), float(value["worst"]))
    return PaperResult(str(source), metrics)


# ------------------------------------------------------------- configuring
def recipe_config(name: str, overrides: Mapping[str, Any] | None = None, *, require_init: bool = True) -> TrainConfig:
    """The recipe's :class:`~fairdefense.TrainConfig`, with ``overrides`` on top.

    ``overrides`` maps TrainConfig field names to values; ``None`` values are
    ignored (a command-line option that was not given). ``plugins`` are added to the
    recipe's plugins; ``plugin_options`` are merged key by key (``{"frl": {"tau1": 0.07}}``
    changes only ``tau1``); every other field replaces the recipe's value. Unknown
    names are an error listing the valid ones. A recipe that ``starts_from`` another
    one needs ``init`` (the weights to fine-tune) unless ``require_init`` is false.
    """
    recipe = load_recipe(name)
    values = copy.deepcopy(recipe.config)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown} for recipe {recipe.name!r}; valid settings: {sorted(fields)}.")
    for key, value in given.items():
        if key == "plugins":
            values["plugins"] = list(dict.fromkeys([*values.get("plugins", ()), *value]))
        elif key == "plugin_options":
            merged = values.setdefault("plugin_options", {})
            for plugin, options in value.items():
                merged[plugin] = {**merged.get(plugin, {}), **options}
        else:
            values[key] = value
    if recipe.starts_from and require_init and not values.get("init"):
        raise ConfigError(
            f"recipe {recipe.name!r} fine-tunes the weights trained by recipe {recipe.starts_from!r}: give them "
            f"with --init CKPT (Python: init=...), e.g. the last.pt of 'fairdefense train --recipe {recipe.starts_from}'."
        )
    return TrainConfig.from_dict(values)


def resolve_offline(config: TrainConfig) -> TrainConfig:
    """The fully resolved config a run of ``config`` would use, without reading dataset
    files (from :func:`fairdefense.data.dataset_spec`); the model name is checked too.

    ``plugin_options`` lists every option of every active plugin with the value it
    takes (defaults included, command-line strings converted)."""
    spec = dataset_spec(config.dataset, config.data_dir)
    resolved, _, _ = resolve_run(config, spec.names(), spec.defaults, spec.clip)
    if resolved.model is None:
        resolved.model = spec.defaults.get("model", "small_cnn")
    model_factory(resolved.model)
    return resolved


def resolve_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The fully resolved config of a recipe with ``overrides`` (see :func:`recipe_config`),
    without reading dataset files; ``init`` may be missing."""
    return resolve_offline(recipe_config(name, overrides, require_init=False))


# --------------------------------------------------------------- printing
def config_to_toml(config: TrainConfig | Mapping[str, Any]) -> str:
    """A config (or a recipe's ``[config]`` mapping) as TOML, loadable as a recipe's
    ``[config]``; unset (``None``) values become comments."""
    values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, Mapping):
            for table, entries in value.items():
                tables.append(f"\n[{_toml_key(key)}.{_toml_key(table)}]")
                tables += [_toml_line(k, v) for k, v in entries.items()]
        else:
            lines.append(_toml_line(key, value))
    return "\n".join(lines + tables) + "\n"


def _toml_line(key: str, value: Any) -> str:
    return f"# {key} = (unset)" if value is None else f"{_toml_key(key)} = {_toml_value(value)}"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
