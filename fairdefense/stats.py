"""Uncertainty of per-class figures and significance of comparisons.

- :func:`clopper_pearson` and :func:`wilson`: a 95% (or any ``level``) interval of
  one class's accuracy from its count of correct samples ``k`` out of ``n``.
- :func:`bootstrap_summaries`: percentile intervals of the summaries over classes
  (average, worst, best, gap, std) by a stratified bootstrap of the test samples.
  Resampling the 0/1 outcomes of class ``c`` with replacement gives
  ``Binomial(n_c, k_c / n_c)`` correct samples, so the bootstrap needs only the
  per-class counts (evaluation stays streamed, and counts add up across processes).
- :func:`paired_t_test`: Student's paired t-test of two configurations measured on
  the same units (seeds, or folds x seeds), with the interval of the mean difference.
- :func:`detectable_difference`: the smallest true mean difference a paired t-test
  detects with a given power (the power analysis behind the benchmark's protocol).

Every function takes plain numbers or sequences and returns floats; ``docs/evaluation.md``
says what each interval covers and what it does not.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st

from fairdefense.errors import ConfigError

__all__ = [
    "LEVEL",
    "RESAMPLES",
    "BOOTSTRAP_SEED",
    "SUMMARY_KEYS",
    "clopper_pearson",
    "wilson",
    "class_intervals",
    "bootstrap_summaries",
    "PairedTest",
    "paired_t_test",
    "detectable_difference",
]

#: Default confidence level of every interval.
LEVEL = 0.95
#: Default number of bootstrap resamples (Monte-Carlo error of a 2.5% quantile: about 0.3% of its rank).
RESAMPLES = 2000
#: Default seed of the bootstrap's generator (the same counts always give the same interval).
BOOTSTRAP_SEED = 0
#: The summaries over classes that :func:`bootstrap_summaries` gives intervals for.
SUMMARY_KEYS = ("avg", "worst", "best", "gap", "std")


def _check_count(k: float, n: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise ConfigError(f"a count needs 0 <= k <= n, got k={k}, n={n}.")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.95, got {level}.")


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion ``k / n``; ``(nan, nan)`` when ``n == 0``.

    Bounds are Beta quantiles: ``Beta(a/2; k, n-k+1)`` and ``Beta(1-a/2; k+1, n-k)``,
    with 0 for ``k == 0`` and 1 for ``k == n``. Coverage is at least ``level``.
    """
    _check_count(k, n)
    _check_level(level)
    if n == 0:
        return math.nan, math.nan
    a = 1 - level
    lo = 0.0 if k == 0 else float(_st.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n``; ``(nan, nan)`` when ``n == 0``."""
    _check_count(k, n)
    _check_level(level)
    if n == 0:
        return math.nan, math.nan
    z = float(_st.norm.ppf(1 - (1 - level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def class_intervals(
    correct: Sequence[int], counts: Sequence[int], level: float = LEVEL
) -> list[tuple[float, float]]:
    """:func:`clopper_pearson` of every class (``(nan, nan)`` for a class without samples)."""
    if len(correct) != len(counts):
        raise ConfigError(f"correct ({len(correct)}) and counts ({len(counts)}) must have one entry per class.")
    return [clopper_pearson(int(k), int(n), level) for k, n in zip(correct, counts)]


def _summaries(acc: np.ndarray) -> dict[str, np.ndarray]:
    """``SUMMARY_KEYS`` over the last axis of accuracies (higher is better)."""
    worst, best = acc.min(-1), acc.max(-1)
    return {"avg": acc.mean(-1), "worst": worst, "best": best, "gap": best - worst, "std": acc.std(-1)}


def bootstrap_summaries(
    correct: Sequence[int],
    counts: Sequence[int],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of the accuracy summaries over classes.

    Each resample draws the samples of every class with replacement (stratified),
    that is ``Binomial(n_c, k_c / n_c)`` correct ones per class; the summaries of
    the resampled accuracies give the ``(1-level)/2`` and ``(1+level)/2`` quantiles.
    Classes without samples are left out. Keys: :data:`SUMMARY_KEYS` (``worst`` is
    the lowest accuracy, ``gap = best - worst``, ``std`` over classes with ddof 0).

    The interval covers the test-sample noise of this evaluation only, not the
    variation between training runs (seeds): compare configurations with
    :func:`paired_t_test` over seeds for that. For ``worst`` the percentile
    interval is reliable when one class is clearly the weakest; with several
    classes within a few points of each other the minimum is biased low and the
    interval is too.
    """
    _check_level(level)
    if resamples < 1:
        raise ConfigError(f"resamples must be >= 1, got {resamples}.")
    k = np.asarray(correct, dtype=np.int64)
    n = np.asarray(counts, dtype=np.int64)
    if k.shape != n.shape or (k < 0).any() or (k > n).any():
        raise ConfigError("correct and counts must have one entry per class with 0 <= correct <= count.")
    keep = n > 0
    k, n = k[keep], n[keep]
    if n.size == 0:
        return {key: (math.nan, math.nan) for key in SUMMARY_KEYS}
    rng = np.random.default_rng(seed)
    acc = rng.binomial(n, k / n, size=(resamples, n.size)) / n
    q = [(1 - level) / 2, (1 + level) / 2]
    return {key: tuple(float(v) for v in np.quantile(values, q)) for key, values in _summaries(acc).items()}


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_t_test` on ``b - a`` (JSON-ready with :meth:`to_dict`).

    ``p_value`` is two-sided; ``ci`` the interval of the mean difference at
    ``level``; ``None`` where it is undefined (fewer than two pairs, or every
    difference equal).
    """

    test: str
    n: int
    mean_diff: float
    std_diff: float | None
    t: float | None
    p_value: float | None
    ci: tuple[float, float] | None
    level: float

    def significant(self, alpha: float) -> bool:
        """Whether ``p_value < alpha`` (False when the test is undefined)."""
        return self.p_value is not None and self.p_value < alpha

    def to_dict(self) -> dict:
        return asdict(self)


def paired_t_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedTest:
    """Student's paired t-test of ``mean(b - a) = 0``, two-sided, ``n - 1`` degrees of freedom.

    ``a[i]`` and ``b[i]`` must come from the same unit (the same seed, or the same
    fold and seed). Identical differences give ``p_value`` 1.0 when they are all
    zero and 0.0 otherwise (no variance), with the interval collapsed on the mean.
    """
    _check_level(level)
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(a) != len(b) or d.ndim != 1:
        raise ConfigError(f"a paired test needs two sequences of equal length, got {len(a)} and {len(b)}.")
    n = d.size
    if n == 0:
        raise ConfigError("a paired test needs at least one pair.")
    mean = float(d.mean())
    if n < 2:
        return PairedTest("paired t-test", n, mean, None, None, None, None, level)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return PairedTest("paired t-test", n, mean, 0.0, None, 1.0 if mean == 0 else 0.0, (mean, mean), level)
    se = sd / math.sqrt(n)
    t = mean / se
    p = float(2 * _st.t.sf(abs(t), n - 1))
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * se
    return PairedTest("paired t-test", n, mean, sd, t, p, (mean - half, mean + half), level)


def detectable_difference(sd_diff: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` detects
    with probability ``power`` over ``n`` pairs whose differences have standard deviation
    ``sd_diff`` (exact, from the noncentral t distribution)."""
    if n < 2:
        raise ConfigError(f"a paired t-test needs n >= 2 pairs, got {n}.")
    if sd_diff < 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ConfigError("detectable_difference needs sd_diff >= 0, 0 < alpha < 1 and 0 < power < 1.")
    df = n - 1
    crit = float(_st.t.ppf(1 - alpha / 2, df))

    def reached(delta: float) -> float:
        nc = delta * math.sqrt(n)
        return float(_st.nct.sf(crit, df, nc) + _st.nct.cdf(-crit, df, nc)) - power

    lo, hi = 0.0, 1.0
    while reached(hi) < 0:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reached(mid) < 0 else (lo, mid)
    return hi * sd_diff
