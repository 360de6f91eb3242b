"""Evaluation reports: ``metrics.json``, ``report.md``, pictures, and run comparisons.

- :mod:`~fairdefense.reports.schema`: the versioned ``metrics.json`` layout;
- :mod:`~fairdefense.reports.runs`: evaluate a run folder or checkpoint and write
  its report files (:func:`evaluate_run`, :func:`write_run_report`);
- :mod:`~fairdefense.reports.markdown` and :mod:`~fairdefense.reports.plots`: the
  text and the pictures;
- :mod:`~fairdefense.reports.leaderboard`: ``fairdefense compare``.
"""
from __future__ import annotations

from fairdefense.reports.leaderboard import (
    LEADERBOARD_FILES,
    group_runs,
    groups_markdown,
    leaderboard,
    leaderboard_markdown,
    write_leaderboard,
)
from fairdefense.reports.markdown import render_report
from fairdefense.reports.plots import plot_classwise, plot_confusion, plot_curves, plot_scatter
from fairdefense.reports.runs import (
    DEFAULT_ATTACKS,
    REPORT_FILES,
    evaluate_run,
    metrics_from_training,
    read_history,
    resolve_checkpoint,
    run_metrics,
    write_report_files,
    write_run_report,
)
from fairdefense.reports.schema import (
    SCHEMA_VERSION,
    add_intervals,
    build_metrics,
    headline_attack,
    load_metrics,
    report_from_metrics,
    save_metrics,
    strategy_label,
)

__all__ = [
    "SCHEMA_VERSION",
    "DEFAULT_ATTACKS",
    "REPORT_FILES",
    "LEADERBOARD_FILES",
    "build_metrics",
    "add_intervals",
    "report_from_metrics",
    "save_metrics",
    "load_metrics",
    "headline_attack",
    "strategy_label",
    "render_report",
    "plot_classwise",
    "plot_confusion",
    "plot_curves",
    "plot_scatter",
    "resolve_checkpoint",
    "read_history",
    "evaluate_run",
    "write_report_files",
    "write_run_report",
    "metrics_from_training",
    "run_metrics",
    "leaderboard",
    "leaderboard_markdown",
    "group_runs",
    "groups_markdown",
    "write_leaderboard",
]
