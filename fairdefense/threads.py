"""How many CPU threads torch should use: the CPUs this process may actually run on.

torch starts one OpenMP thread per core of the *machine*. In a container limited by a
CPU quota, under ``taskset``, or beside other work (several runs at once, a CI runner),
those threads wait for each other and a run can take ten times longer (measured in
``docs/benchmarks.md``). :func:`usable_cpus` counts the CPUs this process may use:
its CPU affinity, capped by the cgroup CPU quota (cgroup v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``). :func:`set_threads` applies a choice to torch.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from fairdefense.errors import ConfigError

__all__ = ["usable_cpus", "cgroup_cpu_limit", "set_threads"]

_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = _CGROUP) -> float | None:
    """The cgroup CPU quota in CPUs (``1.5`` for 150 ms per 100 ms), or ``None`` if unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the cgroup quota (rounded down, at least 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, math.floor(limit))
    return max(1, n)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (``None``: :func:`usable_cpus`, the default); returns the number set."""
    if threads is None:
        threads = usable_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"threads must be a whole number >= 1, got {threads!r}; use 1 when several runs share the CPUs "
            f"(default: the {usable_cpus()} CPU(s) this process may use)."
        )
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
