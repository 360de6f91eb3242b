"""RobustBench's model zoo in and out: fine-tune or audit a published robust model.

``init="robustbench:<name>"`` (``--init robustbench:<name>``) builds the zoo model
``<name>`` for the run's dataset and threat model (``linf`` -> ``Linf``, ``l2`` -> ``L2``)
through the ``robustbench`` package (extra ``fairdefense[robustbench]``) and loads its
weights from RobustBench's cache folder, laid out as RobustBench's ``load_model`` lays it
out::

    <model_dir>/<dataset>/<threat>/<name>.pt        e.g. models/cifar10/Linf/Ding2020MMA.pt

``model_dir`` defaults to RobustBench's own default, ``./models``. An absent file is
downloaded by RobustBench (gdown) when the machine is online; offline, the error names
the file, the folder and the command that fetches it (``python -m fairdefense.zoo NAME``).
A zoo model takes inputs in [0, 1] and normalises them itself, so it is not wrapped in
the dataset's normalisation and ``eps`` stays in pixel units (8/255).

The run records the architecture as ``model = "robustbench:<dataset>/<threat>/<name>"``
(:func:`fairdefense.models.create_model` rebuilds it, with random weights, for evaluation and
resuming). :func:`fairdefense.reports.zoo.evaluate_zoo` scores a zoo model per class with the
reports of a run (``fairdefense evaluate robustbench:<name>``).

robustbench 1.1.1 from PyPI imports ``autoattack`` (PyPI ships it as ``pyautoattack``) and
``pkg_resources`` (setuptools < 81): the import below lends it ``pyautoattack`` under the
name it expects, for the import only, and the extra pins ``setuptools<81``.
"""
from __future__ import annotations

import difflib
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from fairdefense.errors import ConfigError, FairDefenseError, MissingDependencyError, require

__all__ = [
    "ZOO_PREFIX",
    "DEFAULT_MODEL_DIR",
    "import_robustbench",
    "is_zoo",
    "zoo_id",
    "parse_zoo_id",
    "threat_model",
    "weights_path",
    "zoo_factory",
    "load_zoo_model",
    "zoo_model",
    "DEFAULT_EPS",
]

ZOO_PREFIX = "robustbench:"
#: RobustBench's default cache folder (``load_model(model_dir="./models")``).
DEFAULT_MODEL_DIR = "models"
_THREATS = {"linf": "Linf", "l2": "L2"}
#: RobustBench's radius per norm (pixel units).
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


def is_zoo(spec: Any) -> bool:
    """Whether ``spec`` (an ``init`` or ``model`` value) names a RobustBench model."""
    return isinstance(spec, str) and spec.startswith(ZOO_PREFIX)


def threat_model(norm: str | None) -> str:
    """RobustBench's threat model for fairdefense's ``norm`` (``None``: L-inf)."""
    norm = norm or "linf"
    if norm not in _THREATS:
        raise ConfigError(f"norm must be 'linf' or 'l2' for a RobustBench model, got {norm!r}.")
    return _THREATS[norm]


def zoo_id(spec: str, dataset: str, norm: str | None) -> str:
    """``"robustbench:<name>"`` -> ``"robustbench:<dataset>/<threat>/<name>"`` (the model's full id)."""
    name = spec[len(ZOO_PREFIX):].strip()
    if not name or "/" in name:
        raise ConfigError(f"{spec!r} must look like robustbench:NAME, e.g. robustbench:Rice2020Overfitting.")
    return f"{ZOO_PREFIX}{dataset}/{threat_model(norm)}/{name}"


def parse_zoo_id(model: str) -> tuple[str, str, str]:
    """``"robustbench:cifar10/Linf/Name"`` -> ``("cifar10", "Linf", "Name")``."""
    parts = model[len(ZOO_PREFIX):].split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"{model!r} is not a RobustBench model id robustbench:DATASET/THREAT/NAME.")
    return parts[0], parts[1], parts[2]


def weights_path(model: str, model_dir: str | Path | None = None) -> Path:
    """Where RobustBench keeps the weights of ``model`` (a full id)."""
    dataset, threat, name = parse_zoo_id(model)
    return Path(model_dir or DEFAULT_MODEL_DIR) / dataset / threat / f"{name}.pt"


def import_robustbench():
    """``(robustbench.utils, robustbench.model_zoo)``, imported as robustbench 1.1.1 from PyPI needs
    (see the module's notes); :class:`~fairdefense.errors.MissingDependencyError` without the extra."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench.utils"], sys.modules["robustbench.model_zoo"]
    lent = []
    try:
        import autoattack  # noqa: F401  (the upstream package, when installed)
    except ImportError:
        pyautoattack = require("pyautoattack", "robustbench", "RobustBench models")
        import pyautoattack.state

        sys.modules["autoattack"], sys.modules["autoattack.state"] = pyautoattack, pyautoattack.state
        lent = ["autoattack", "autoattack.state"]
    try:
        with warnings.catch_warnings():  # its imports' deprecation notices (timm, pkg_resources, torch.jit)
            warnings.simplefilter("ignore")
            require("robustbench", "robustbench", "RobustBench models")
            import robustbench.model_zoo as zoo
            import robustbench.utils as utils
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            raise
        raise MissingDependencyError(
            "robustbench imports pkg_resources, which setuptools 81 and later no longer ship; install "
            "pip install 'setuptools<81' (pip install 'fairdefense[robustbench]' pins it)."
        ) from exc
    finally:
        for name in lent:
            sys.modules.pop(name, None)
    return utils, zoo


def _entry(model: str) -> dict[str, Any]:
    _, zoo = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    dataset, threat, name = parse_zoo_id(model)
    datasets = {d.value: d for d in BenchmarkDataset}
    if dataset not in datasets:
        raise ConfigError(f"RobustBench has models for {sorted(datasets)}, not for dataset {dataset!r}.")
    models = zoo.model_dicts[datasets[dataset]][ThreatModel(threat)]
    if name not in models:
        near = difflib.get_close_matches(name, list(models), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(
            f"RobustBench has no model {name!r} for {dataset} / {threat}.{hint} The leaderboard at "
            f"https://robustbench.github.io lists them (or pass --norm l2 for the L2 models)."
        )
    return models[name]


def zoo_factory(model: str) -> Callable[..., nn.Module]:
    """A model factory (as :data:`fairdefense.models.MODELS` holds) building the architecture of
    ``model`` (a full id) with random weights; the name is checked at once."""
    build = _entry(model)["model"]

    def factory(num_classes: int | None = None, input_shape: tuple[int, ...] | None = None) -> nn.Module:
        return build().eval()

    return factory


def _fetch_command(model: str, model_dir: str | Path | None) -> str:
    dataset, threat, name = parse_zoo_id(model)
    norm = {v: k for k, v in _THREATS.items()}[threat]
    return (f"python -m fairdefense.zoo {name} --dataset {dataset} --norm {norm} "
            f"--model-dir {Path(model_dir or DEFAULT_MODEL_DIR)}")


def load_zoo_model(model: str, model_dir: str | Path | None = None, download: bool = True) -> nn.Module:
    """``model`` (a full id) with its published weights, through RobustBench's ``load_model``.

    The weights are read from :func:`weights_path`; an absent file is downloaded when
    ``download`` and the machine is online. Otherwise a
    :class:`~fairdefense.errors.ConfigError` names the file, the folder and the command
    that fetches it.
    """
    utils, _ = import_robustbench()
    entry = _entry(model)
    dataset, threat, name = parse_zoo_id(model)
    path = weights_path(model, model_dir)
    if isinstance(entry.get("gdrive_id"), list):
        raise ConfigError(f"RobustBench model {name!r} is an ensemble of several networks; fairdefense trains one "
                          f"network: pick a single-network model.")
    missing = (
        f"the weights of RobustBench model {name!r} ({dataset}, {threat}) are not in {path.parent}: expected the "
        f"file {path}. Fetch them on a machine that is online with\n    {_fetch_command(model, model_dir)}\n"
        f"and copy that file here, or point --model-dir (Python: model_dir=) at the folder that holds "
        f"{dataset}/{threat}/{name}.pt."
    )
    if not path.is_file() and not download:
        raise ConfigError(missing)
    try:
        net = utils.load_model(name, model_dir=str(Path(model_dir or DEFAULT_MODEL_DIR)), dataset=dataset,
                               threat_model=threat)
    except Exception as exc:  # gdown's and requests' network errors have no common base class
        if path.is_file():
            raise
        raise ConfigError(f"{missing}\n(the download failed: {type(exc).__name__}: {exc})") from exc
    return net.eval()


def zoo_model(config: Any, download: bool = True) -> tuple[str, nn.Module]:
    """``(full id, model with weights)`` for a :class:`~fairdefense.TrainConfig` whose ``init``
    is ``"robustbench:<name>"`` (its ``dataset``, ``norm`` and ``model_dir``)."""
    model = zoo_id(config.init, config.dataset, config.norm)
    if config.model not in (None, model):
        raise ConfigError(f"init={config.init!r} brings its own architecture ({model}); drop model={config.model!r}.")
    return model, load_zoo_model(model, config.model_dir, download)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fairdefense.zoo",
                                     description="Download a RobustBench model's weights into its cache folder.")
    parser.add_argument("name", help="the model's name in RobustBench's zoo, e.g. Rice2020Overfitting")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 (default), cifar100 or imagenet")
    parser.add_argument("--norm", default="linf", choices=sorted(_THREATS), help="threat model (default linf)")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="cache folder (default: %(default)s)")
    args = parser.parse_args(argv)
    model = zoo_id(ZOO_PREFIX + args.name, args.dataset, args.norm)
    try:
        load_zoo_model(model, args.model_dir, download=True)
    except FairDefenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"weights in {weights_path(model, args.model_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
