"""fairdefense.stats against scipy.stats and hand-computed values; bootstrap reproducibility and coverage."""
import math

import numpy as np
import pytest
from scipy import stats as st

from fairdefense import ConfigError
from fairdefense.stats import (
    bootstrap_summaries,
    class_intervals,
    clopper_pearson,
    detectable_difference,
    paired_t_test,
    wilson,
)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 10), (18, 36), (1, 1), (0, 1), (35, 36)])
def test_clopper_pearson_matches_scipy_binomtest(k, n):
    ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (3, 10), (18, 36), (0, 1), (35, 36)])
def test_wilson_matches_scipy_binomtest(k, n):
    ci = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_hand_computed_boundaries():
    # k = 0: upper bound solves (1 - p)^n = a/2, i.e. 1 - 0.025^(1/n)
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    # k = n: lower bound is 0.025^(1/n)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    # Wilson at k = n/2, n = 100, z = 1.959964: centre 0.5, half-width z/(1+z^2/n) * sqrt(0.0025 + z^2/40000)
    z = 1.959963984540054
    half = z / (1 + z * z / 100) * math.sqrt(0.25 / 100 + z * z / 40000)
    assert wilson(50, 100) == pytest.approx((0.5 - half, 0.5 + half))
    assert all(math.isnan(v) for v in clopper_pearson(0, 0) + wilson(0, 0))
    assert class_intervals([0, 2], [0, 2])[1] == clopper_pearson(2, 2)


def test_bad_counts_are_refused():
    with pytest.raises(ConfigError, match="0 <= k <= n"):
        clopper_pearson(5, 3)
    with pytest.raises(ConfigError, match="level"):
        wilson(1, 2, level=95)
    with pytest.raises(ConfigError, match="one entry per class"):
        bootstrap_summaries([1, 2], [3])


def test_bootstrap_is_reproducible_under_its_seed_and_ordered():
    correct, counts = [30, 20, 10], [36, 36, 35]
    a = bootstrap_summaries(correct, counts, resamples=500, seed=3)
    assert a == bootstrap_summaries(correct, counts, resamples=500, seed=3)
    assert a != bootstrap_summaries(correct, counts, resamples=500, seed=4)
    point_avg = np.mean([30 / 36, 20 / 36, 10 / 35])
    assert a["avg"][0] < point_avg < a["avg"][1]
    assert a["worst"][0] < 10 / 35 < a["worst"][1]
    assert a["worst"][1] < a["avg"][0]  # the weak class is far below the mean


def test_bootstrap_equals_a_per_sample_resampling_loop_in_distribution():
    """Binomial draws per class are the stratified resampling of 0/1 outcomes: the same
    quantiles (to Monte-Carlo error) as resampling sample indices within each class."""
    correct, counts = [9, 5], [12, 10]
    rng = np.random.default_rng(0)
    outcomes = [np.r_[np.ones(k), np.zeros(n - k)] for k, n in zip(correct, counts)]
    draws = np.array([[rng.choice(o, size=o.size, replace=True).mean() for o in outcomes] for _ in range(20000)])
    ref = np.quantile(draws.mean(1), [0.025, 0.975]), np.quantile(draws.min(1), [0.025, 0.975])
    got = bootstrap_summaries(correct, counts, resamples=20000, seed=1)
    assert got["avg"] == pytest.approx(tuple(ref[0]), abs=0.02)
    assert got["worst"] == pytest.approx(tuple(ref[1]), abs=0.03)


def test_bootstrap_covers_at_about_the_nominal_rate():
    """Simulate 300 test sets from known class accuracies (one clearly weakest class): the
    95% intervals of the average and of the worst class cover the truth about 95% of the time."""
    truth = np.array([0.9, 0.85, 0.8, 0.75, 0.4])
    n = np.full(5, 150)
    rng = np.random.default_rng(11)
    hits = {"avg": 0, "worst": 0}
    trials = 300
    for t in range(trials):
        k = rng.binomial(n, truth)
        ci = bootstrap_summaries(k, n, resamples=400, seed=t)
        hits["avg"] += ci["avg"][0] <= truth.mean() <= ci["avg"][1]
        hits["worst"] += ci["worst"][0] <= truth.min() <= ci["worst"][1]
    for key, h in hits.items():
        assert 0.90 <= h / trials <= 0.99, (key, h / trials)


def test_paired_t_test_matches_scipy_on_fixed_numbers():
    a = [0.371, 0.286, 0.229, 0.314, 0.300]
    b = [0.400, 0.343, 0.286, 0.300, 0.371]
    res = paired_t_test(a, b)
    ref = st.ttest_rel(b, a)
    assert res.t == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert res.ci == pytest.approx((ci.low, ci.high))
    assert res.mean_diff == pytest.approx(np.mean(np.subtract(b, a)))
    assert res.test == "paired t-test" and res.n == 5
    assert res.significant(0.5) and not res.significant(res.p_value)


def test_paired_t_test_degenerate_cases():
    one = paired_t_test([0.1], [0.3])
    assert one.p_value is None and one.ci is None and not one.significant(0.05)
    same = paired_t_test([0.1, 0.2], [0.1, 0.2])
    assert same.p_value == 1.0 and same.mean_diff == 0
    shift = paired_t_test([0.25, 0.5], [0.5, 0.75])
    assert shift.p_value == 0.0 and shift.ci == (0.25, 0.25)
    with pytest.raises(ConfigError, match="equal length"):
        paired_t_test([0.1, 0.2], [0.1])


def test_detectable_difference_has_the_requested_power():
    """Check by simulation: at the returned difference, a paired t-test at 0.05 rejects ~80% of the time."""
    n, sd = 10, 1.0
    delta = detectable_difference(sd, n)
    # the normal approximation (z_a/2 + z_power) * sd / sqrt(n) is a lower bound for small n
    assert delta > (1.959964 + 0.841621) / math.sqrt(n)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(4000, n))
    rejected = st.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.025)
    assert detectable_difference(2.0, n) == pytest.approx(2 * delta)
