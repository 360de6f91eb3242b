"""Helpers shared by the benchmark scripts: machine description, interleaved repeats,
medians and writing the generated parts of ``docs/``.

Not part of the ``fairdefense`` package: the scripts in this folder import it as a
sibling module (``python benchmarks/speed.py`` puts ``benchmarks/`` on ``sys.path``).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from fairdefense.jsonsafe import json_safe

__all__ = [
    "REPO",
    "DOCS",
    "machine_info",
    "load_average",
    "interleaved",
    "median",
    "paired_ratios",
    "replace_section",
    "write_json",
    "sync",
]

#: The repository root and its docs folder.
REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info(device: str) -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, threads, versions, GPU, load."""
    import fairdefense

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fairdefense": fairdefense.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else None,
        "load_average": load_average(),
    }
    try:
        import art

        info["art"] = art.__version__
    except ImportError:
        info["art"] = None
    return info


def interleaved(names: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """``(repeat, name)`` pairs: every name once per repeat, the order rotated by one each
    repeat, so that slow drift of the machine's speed hits every variant alike."""
    for r in range(repeats):
        k = r % len(names)
        for name in list(names[k:]) + list(names[:k]):
            yield r, name


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-repeat ratios ``numerator[r] / denominator[r]`` of two series measured side by side."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired series differ in length: {len(numerator)} vs {len(denominator)}.")
    return [a / b for a, b in zip(numerator, denominator)]


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if device == "cuda":
        torch.cuda.synchronize()


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``path``.

    The rest of the file (hand-written explanation) is kept; a file or section that
    does not exist yet is created at the end.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def write_json(path: Path, data: Any) -> None:
    """Write indented JSON (no NaN or infinity: they are written as ``null``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
