"""Discovering, activating and calling plugins.

Installed strategies are found through the ``fairdefense.plugins`` entry-point
group (built-in strategies are declared there too, exactly like third-party
ones). Discovery only lists them; :class:`PluginHost` activates the ones the user
names, validates them at registration, calls their hooks and checks what each
returns, so that every error names the plugin and the hook at fault.

The host calls implementations one at a time, in activation order, so that it
can check each return value. Of pluggy's ``hookimpl`` options it honours
``tryfirst``, ``trylast`` and ``specname``; it refuses ``wrapper`` and
``hookwrapper`` (the trainer applies results, nothing wraps a hook) and
``optionalhook`` on a name that is no hook (it would never be called). The
contract declares no ``firstresult`` or ``historic`` hook: its exclusive hooks
give one plugin the answer.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata as metadata
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import pluggy
import torch
from torch import Tensor

from fairdefense import hookspecs
from fairdefense.hookdata import LossWeights, Margins, Selection
from fairdefense.errors import FairDefenseError, HookReturnError, PluginError, PluginNotFoundError, PluginOptionError
from fairdefense.hookspecs import HOOK_NAMES
from fairdefense.listing import matches
from fairdefense.plugin import FairnessPlugin

if TYPE_CHECKING:
    from fairdefense.attacks import AttackRecord
    from fairdefense.hookdata import BatchInfo, BatchOutputs, EpochInfo, RunInfo
    from fairdefense.metrics import ClassStats

__all__ = [
    "ENTRY_POINT_GROUP", "PluginInfo", "list_plugins", "Installed", "installed", "entry_points", "nearest",
    "installed_plugins", "plugin_name", "plugin_options", "PluginHost",
]

ENTRY_POINT_GROUP = "fairdefense.plugins"

#: Calling rank of an implementation by its pluggy marker: tryfirst, unmarked, trylast.
_TRYFIRST, _PLAIN, _TRYLAST = range(3)


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin, as ``fairdefense plugins`` lists it."""

    name: str
    version: str
    distribution: str
    hooks: tuple[str, ...]
    description: str
    error: str | None = None


def entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, metadata.EntryPoint]:
    """The installed entry points of ``group`` by name (strategies by default)."""
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def _hooks_of(obj: Any) -> tuple[str, ...]:
    """The hooks a plugin (class or object) implements: methods named after hooks, or marked with a ``specname``."""
    found = set()
    for attr in dir(obj):
        value = getattr(obj, attr, None)
        if callable(value):
            opts = getattr(value, f"{hookspecs.PROJECT_NAME}_impl", None) or {}
            found.add(opts.get("specname") or attr)
    return tuple(h for h in HOOK_NAMES if h in found)


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass(frozen=True)
class Installed:
    """One entry point of a group: name, version and distribution, and the loaded
    ``target`` with the first line of its docstring, or the ``error`` loading raised."""

    name: str
    version: str
    distribution: str
    target: Any = None
    description: str = ""
    error: str | None = None


def nearest(name: str, names: Iterable[str]) -> str:
    """`` Did you mean 'a' or 'b'?`` for the names closest to ``name``, or ``""``."""
    near = difflib.get_close_matches(name, list(names), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""


def installed(
    group: str, filter: str | None = None, load: Callable[[metadata.EntryPoint], Any] = metadata.EntryPoint.load
) -> list[Installed]:
    """The entry points of ``group``, sorted by name, each loaded with ``load``.

    ``filter`` keeps the names it matches (:func:`fairdefense.listing.matches`). An entry
    point that fails to load is listed with its ``error`` rather than breaking the
    listing (a broken third-party package must not hide the others).
    """
    found = []
    for name, ep in sorted(entry_points(group).items()):
        if not matches(name, filter):
            continue
        dist = ep.dist
        dist_name, version = (dist.name, dist.version) if dist is not None else ("?", "?")
        try:
            target = load(ep)
        except Exception as exc:
            found.append(Installed(name, version, dist_name, error=f"{type(exc).__name__}: {exc}"))
            continue
        found.append(Installed(name, version, dist_name, target, _summary(target)))
    return found


def list_plugins(filter: str | None = None) -> list[PluginInfo]:
    """List the installed plugins (name, version, distribution, hooks, description).

    ``filter`` follows :func:`fairdefense.listing.matches` (``"fa"`` or ``"fa*"``). A
    plugin whose entry point fails to import is listed with its ``error`` rather
    than breaking the listing.
    """
    return [
        PluginInfo(i.name, i.version, i.distribution, () if i.error else _hooks_of(i.target), i.description, i.error)
        for i in installed(ENTRY_POINT_GROUP, filter)
    ]


def installed_plugins() -> set[str]:
    """Names of the plugins installed through the ``fairdefense.plugins`` entry points."""
    return set(entry_points())


def plugin_options(obj: Any) -> dict[str, Any]:
    """A plugin object's options as a dict (``{}`` for a plugin without an ``Options`` dataclass)."""
    options = getattr(obj, "options", None) if isinstance(obj, FairnessPlugin) else None
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) and not isinstance(options, type) else {}


def plugin_name(obj: Any) -> str:
    """The name a plugin object is activated and recorded under."""
    if isinstance(obj, FairnessPlugin):
        return obj.plugin_name()
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(obj, "__name__", None) or type(obj).__name__.lower()


class _Manager(pluggy.PluginManager):
    """pluggy's manager, taught that a FairnessPlugin's hook-named methods are hooks."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # noqa: D102 (pluggy API)
        opts = super().parse_hookimpl_opts(plugin, name)
        if isinstance(plugin, FairnessPlugin):
            hook = (opts or {}).get("specname") or name
            if hook in plugin.inactive_hooks():
                return None
            if opts is None and name in HOOK_NAMES and callable(getattr(plugin, name, None)):
                return {}
        return opts


class PluginHost:
    """The active plugins of one run, and the trainer's only way to call them.

    ``plugins`` is a sequence of installed plugin names and/or plugin objects
    (:class:`~fairdefense.FairnessPlugin` instances or any object with
    ``@hookimpl`` methods), mixed. ``options`` maps a plugin name to its options
    (values may be strings as given on the command line).

    Public for plugin authors' tests: constructing a host runs every check the
    trainer's activation runs, and its methods (``notify``, ``reweight``,
    ``remargin``, ``on_epoch_end``, ...) call the hooks and check the results
    exactly as the trainer does. Training code never needs it: ``Trainer`` and
    ``fairdefense.train`` build their own from ``plugins=``.
    """

    def __init__(
        self,
        plugins: Sequence[str | Any] = (),
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        options = dict(options or {})
        self._pm = _Manager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, Any] = {}
        for item in plugins:
            obj = self._resolve(item, options)
            self._register(obj)
        unused = set(options) - set(self.plugins)
        if unused:
            raise PluginOptionError(
                f"options were given for plugin(s) {sorted(unused)} that are not activated; "
                f"active plugins: {sorted(self.plugins) or 'none'}. Add --plugin NAME or fix the prefix."
            )
        order = {name: i for i, name in enumerate(self.plugins)}
        self._calls: dict[str, list[pluggy.HookImpl]] = {
            hook: sorted(getattr(self._pm.hook, hook).get_hookimpls(), key=lambda i: (_rank(i), order[i.plugin_name]))
            for hook in HOOK_NAMES
        }
        self._check_exclusive()

    # ------------------------------------------------------------ registration
    def _resolve(self, item: Any, options: dict[str, Mapping[str, Any]]) -> Any:
        if isinstance(item, type):
            raise PluginError(
                f"plugin {item.__name__!r} was passed as a class; pass an instance instead, "
                f"e.g. {item.__name__}() (or its installed name as a string)."
            )
        if not isinstance(item, str):
            name = plugin_name(item)
            if name in options:
                raise PluginOptionError(
                    f"options were given by name for plugin '{name}', which was passed as an object; "
                    f"pass its options to its constructor instead."
                )
            return item
        eps = entry_points()
        if item not in eps:
            raise PluginNotFoundError(
                f"unknown plugin '{item}'.{nearest(item, eps)} Installed plugins: {', '.join(sorted(eps)) or 'none'} "
                f"(run 'fairdefense plugins' to list them with descriptions)."
            )
        try:
            target = eps[item].load()
        except Exception as exc:
            raise PluginError(f"plugin '{item}' is installed but failed to import: {exc}") from exc
        opts = options.get(item, {})
        if isinstance(target, type) and issubclass(target, FairnessPlugin):
            obj = target.from_options(opts)
            if not target.name:
                obj.name = item
            return obj
        if isinstance(target, type):
            target = target()
        if opts:
            raise PluginOptionError(f"plugin '{item}' takes no options (it is not a FairnessPlugin).")
        return target

    def _register(self, obj: Any) -> None:
        name = plugin_name(obj)
        if name in self.plugins:
            raise PluginError(f"plugin '{name}' is activated twice; name each plugin once.")
        if isinstance(obj, FairnessPlugin):
            self._check_typos(name, obj)
        self._check_markers(name, obj)
        try:
            self._pm.register(obj, name=name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(name=name) if self._pm.has_plugin(name) else None
            detail = " ".join(str(exc).split())
            raise PluginError(f"plugin '{name}': {detail} Valid hooks and their arguments: docs/plugins.md.") from exc
        if not self._pm.get_hookcallers(obj):
            self._pm.unregister(name=name)
            raise PluginError(
                f"plugin '{name}' implements no hook. Define methods named after hooks "
                f"({', '.join(HOOK_NAMES)}) or mark functions with @fairdefense.hookimpl."
            )
        self.plugins[name] = obj

    def _check_markers(self, name: str, obj: Any) -> None:
        """Refuse the hookimpl options this host does not honour (see the module docstring)."""
        for attr in dir(obj):
            opts = self._pm.parse_hookimpl_opts(obj, attr)
            if opts is None:
                continue
            hook = opts.get("specname") or attr
            where = f"plugin '{name}', hook '{hook}'"
            for option in ("wrapper", "hookwrapper"):
                if opts.get(option):
                    raise PluginError(
                        f"{where}: @hookimpl({option}=True) is not supported: fairdefense calls each "
                        f"implementation on its own and applies its result; drop {option}=True and return "
                        f"the value (use tryfirst=True or trylast=True to run before or after the others)."
                    )
            if hook not in HOOK_NAMES:
                near = difflib.get_close_matches(hook, HOOK_NAMES, n=1, cutoff=0.6)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise PluginError(
                    f"{where}: '{hook}' is not a fairdefense hook, so it would never be called.{hint} "
                    f"Hooks: {', '.join(HOOK_NAMES)} (optionalhook=True does not make a name a hook)."
                )

    @staticmethod
    def _check_typos(name: str, obj: FairnessPlugin) -> None:
        for attr in dir(type(obj)):
            if attr.startswith("_") or attr in HOOK_NAMES or hasattr(FairnessPlugin, attr):
                continue
            near = difflib.get_close_matches(attr, HOOK_NAMES, n=1, cutoff=0.8)
            value = getattr(obj, attr) if near else None
            if near and callable(value) and not hasattr(value, f"{hookspecs.PROJECT_NAME}_impl"):
                raise PluginError(
                    f"plugin '{name}' defines '{attr}', which is not a hook; did you mean "
                    f"'{near[0]}'? Rename it (or make it private with a leading underscore)."
                )

    def _check_exclusive(self) -> None:
        for hook in hookspecs.EXCLUSIVE_HOOKS:
            owners = [impl.plugin_name for impl in self._impls(hook)]
            if len(owners) > 1:
                raise PluginError(
                    f"plugins {owners} all implement the exclusive hook '{hook}'; "
                    f"activate only one of them (see docs/strategies.md for valid combinations)."
                )

    # ------------------------------------------------------------------ calling
    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        # tryfirst, unmarked, trylast; each group in activation order (pluggy itself calls last-first)
        return self._calls[hook]

    def implements(self, hook: str) -> bool:
        """Whether any active plugin implements ``hook``."""
        return bool(self._impls(hook))

    def options(self) -> dict[str, dict[str, Any]]:
        """Every active plugin's options (defaults included), keyed by plugin name."""
        return {name: plugin_options(obj) for name, obj in self.plugins.items()}

    def implementers(self, hook: str) -> list[str]:
        """Names of the active plugins implementing ``hook``, in call order."""
        return [impl.plugin_name for impl in self._impls(hook)]

    def _each(self, hook: str, **kwargs: Any) -> Iterable[tuple[str, Any]]:
        for impl in self._impls(hook):
            yield impl.plugin_name, _call(impl, hook, {k: kwargs[k] for k in impl.argnames})

    def on_epoch_end(self, epoch: "EpochInfo", train_stats: "ClassStats") -> dict[str, dict[str, Any]]:
        """Call every ``on_epoch_end``; return what plugins asked to log, keyed by plugin name."""
        logged: dict[str, dict[str, Any]] = {}
        for name, result in self._each("on_epoch_end", epoch=epoch, train_stats=train_stats):
            if result is None:
                continue
            where = f"plugin '{name}', hook 'on_epoch_end'"
            if not isinstance(result, Mapping):
                raise HookReturnError(f"{where}: expected None or a dict of values to log, got {type(result).__name__}.")
            logged[name] = {str(key): _loggable(f"{where}, value '{key}'", value) for key, value in result.items()}
        return logged

    def configure(self, config: Any, run: "RunInfo", explicit: Iterable[str]) -> dict[str, Any]:
        """Collect the settings plugins require; refuse conflicts (see the hook)."""
        explicit = set(explicit)
        wanted: dict[str, tuple[str, Any]] = {}
        for name, result in self._each("configure", config=config, run=run):
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise HookReturnError(f"plugin '{name}', hook 'configure': expected a dict or None, got {type(result).__name__}.")
            for key, value in result.items():
                if not hasattr(config, key):
                    raise HookReturnError(f"plugin '{name}', hook 'configure': '{key}' is not a TrainConfig setting.")
                if key in wanted and wanted[key][1] != value:
                    other = wanted[key][0]
                    raise PluginError(
                        f"plugins '{other}' and '{name}' need different values of '{key}' "
                        f"({wanted[key][1]!r} vs {value!r}); they cannot be combined."
                    )
                if key in explicit and getattr(config, key) != value:
                    raise PluginError(
                        f"plugin '{name}' requires {key}={value!r} but it was set to {getattr(config, key)!r}; "
                        f"drop that setting, or change the plugin's options (see 'fairdefense plugins')."
                    )
                wanted[key] = (name, value)
        return {k: v for k, (_, v) in wanted.items()}

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a hook that returns nothing."""
        for _ in self._each(hook, **kwargs):
            pass

    def remargin(self, batch: "BatchInfo") -> Margins | None:
        """Per-class radius (and step) from the remargin plugin, validated."""
        for name, result in self._each("remargin", batch=batch):
            if result is None:
                return None
            margins = result if isinstance(result, Margins) else Margins(eps=result)
            where = f"plugin '{name}', hook 'remargin'"
            _check_vector(where, "eps", margins.eps, batch.num_classes, positive=True)
            if isinstance(margins.step, Tensor) and margins.step.dim() > 0:
                _check_vector(where, "step", margins.step, batch.num_classes, positive=True)
            elif margins.step is not None and not float(margins.step) > 0:
                raise HookReturnError(f"{where}: step must be positive, got {float(margins.step)}.")
            return margins
        return None

    def select_examples(self, batch: "BatchInfo", record: "AttackRecord") -> Selection | None:
        for name, result in self._each("select_examples", batch=batch, record=record):
            if result is None:
                return None
            if not isinstance(result, Selection):
                raise HookReturnError(
                    f"plugin '{name}', hook 'select_examples': expected a fairdefense.Selection, got {type(result).__name__}."
                )
            for field in ("natural", "adversarial"):
                value = getattr(result, field)
                if value is not None and tuple(value.shape) != tuple(batch.x.shape):
                    raise HookReturnError(
                        f"plugin '{name}', hook 'select_examples': '{field}' has shape {tuple(value.shape)}, "
                        f"expected the batch's {tuple(batch.x.shape)}."
                    )
            return result
        return None

    def perturb_weights(self, batch: "BatchInfo", x_adv: Tensor) -> dict[str, Tensor] | None:
        for name, result in self._each("perturb_weights", batch=batch, x_adv=x_adv):
            if result is None:
                return None
            params = dict(batch.model.named_parameters())
            for key, value in result.items():
                if key not in params or params[key].shape != value.shape:
                    raise HookReturnError(
                        f"plugin '{name}', hook 'perturb_weights': '{key}' is not a parameter of the model "
                        f"or has the wrong shape."
                    )
                if not torch.isfinite(value).all():
                    raise HookReturnError(f"plugin '{name}', hook 'perturb_weights': '{key}' is not finite.")
            return result
        return None

    def reweight(self, batch: "BatchInfo", outputs: "BatchOutputs") -> tuple[Tensor | None, Tensor | None]:
        """Elementwise product of every plugin's weights (``None`` where nobody weighted)."""
        natural = robust = None
        for name, result in self._each("reweight", batch=batch, outputs=outputs):
            if result is None:
                continue
            if not isinstance(result, LossWeights):
                raise HookReturnError(
                    f"plugin '{name}', hook 'reweight': expected a fairdefense.LossWeights, got {type(result).__name__}."
                )
            where = f"plugin '{name}', hook 'reweight'"
            if result.natural is not None:
                w = _check_vector(where, "natural", result.natural, len(batch.y)).detach()
                natural = w if natural is None else natural * w
            if result.robust is not None:
                w = _check_vector(where, "robust", result.robust, len(batch.y)).detach()
                robust = w if robust is None else robust * w
        return natural, robust

    def extra_loss(self, batch: "BatchInfo", outputs: "BatchOutputs") -> Tensor | None:
        """Sum of every plugin's extra loss term."""
        total = None
        for name, result in self._each("extra_loss", batch=batch, outputs=outputs):
            if result is None:
                continue
            if not isinstance(result, Tensor) or result.numel() != 1:
                raise HookReturnError(f"plugin '{name}', hook 'extra_loss': expected a scalar tensor.")
            if not torch.isfinite(result).all():
                raise HookReturnError(f"plugin '{name}', hook 'extra_loss': returned {result.item()} (not finite).")
            result = result.reshape(())
            total = result if total is None else total + result
        return total

    def weights_to_evaluate(self, epoch: "EpochInfo") -> dict[str, Tensor] | None:
        for name, result in self._each("weights_to_evaluate", epoch=epoch):
            if result is None:
                return None
            expected = set(epoch.model.state_dict())
            if not isinstance(result, Mapping) or set(result) != expected:
                raise HookReturnError(
                    f"plugin '{name}', hook 'weights_to_evaluate': expected a full state_dict of the model "
                    f"with keys {sorted(expected)[:3]}..."
                )
            return dict(result)
        return None

    def state(self) -> dict[str, Any]:
        """Every plugin's state, keyed by plugin name."""
        return {name: result for name, result in self._each("plugin_state") if result is not None}

    def load_state(self, states: Mapping[str, Any]) -> None:
        for impl in self._impls("load_plugin_state"):
            if impl.plugin_name in states:
                _call(impl, "load_plugin_state", {"state": states[impl.plugin_name]})


def _call(impl: pluggy.HookImpl, hook: str, args: Mapping[str, Any]) -> Any:
    """``impl(**args)``; an exception that is not fairdefense's becomes a :class:`PluginError`
    naming the plugin and the hook, the original chained."""
    try:
        return impl.function(**args)
    except FairDefenseError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin '{impl.plugin_name}', hook '{hook}' raised {type(exc).__name__}: {exc} (the original "
            f"traceback is chained); fix the plugin or its options, or run without it."
        ) from exc


def _rank(impl: pluggy.HookImpl) -> int:
    return _TRYFIRST if impl.tryfirst else _TRYLAST if impl.trylast else _PLAIN


def _loggable(where: str, value: Any) -> Any:
    """``value`` as JSON: tensors become numbers or lists; anything else that JSON cannot hold is refused."""
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_loggable(where, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _loggable(where, v) for k, v in value.items()}
    raise HookReturnError(
        f"{where}: cannot log a {type(value).__name__}; log numbers, strings, tensors, or lists and dicts of these."
    )


def _check_vector(where: str, what: str, value: Any, length: int, positive: bool = False) -> Tensor:
    if not isinstance(value, Tensor):
        raise HookReturnError(f"{where}: '{what}' must be a torch.Tensor, got {type(value).__name__}.")
    if tuple(value.shape) != (length,):
        raise HookReturnError(f"{where}: '{what}' has shape {tuple(value.shape)}, expected ({length},).")
    if not torch.isfinite(value).all():
        raise HookReturnError(f"{where}: '{what}' has non-finite entries.")
    if positive and not (value > 0).all():
        raise HookReturnError(f"{where}: '{what}' must be positive, got min {value.min().item():.4g}.")
    if not positive and (value < 0).any():
        raise HookReturnError(f"{where}: '{what}' must be non-negative, got min {value.min().item():.4g}.")
    return value
