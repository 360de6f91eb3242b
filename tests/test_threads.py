"""CPU thread selection: cgroup quotas, affinity and the --threads setting."""
from __future__ import annotations

import os

import pytest
import torch

from fairdefense.errors import ConfigError
from fairdefense.threads import cgroup_cpu_limit, set_threads, usable_cpus


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_unlimited(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None


def test_usable_cpus_is_capped_by_quota_and_affinity(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr("fairdefense.threads.cgroup_cpu_limit", lambda *a: None)
    assert usable_cpus() == affinity
    monkeypatch.setattr("fairdefense.threads.cgroup_cpu_limit", lambda *a: 0.5)
    assert usable_cpus() == 1  # a fraction of a CPU still gets one thread
    monkeypatch.setattr("fairdefense.threads.cgroup_cpu_limit", lambda *a: 1000.0)
    assert usable_cpus() == affinity


def test_set_threads_applies_and_refuses_bad_values():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(None) == usable_cpus()
        for bad in (0, -2, 1.5, "2", True):
            with pytest.raises(ConfigError, match="threads must be a whole number >= 1"):
                set_threads(bad)
    finally:
        torch.set_num_threads(before)
