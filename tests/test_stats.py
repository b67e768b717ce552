"""pkd.stats: t quantiles against tables and scipy, intervals by hand, the bootstrap's mechanics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from pkd.errors import PkdError
from pkd.stats import (
    bootstrap_ci,
    bootstrap_means,
    mean_ci,
    paired_difference,
    t_cdf,
    t_quantile,
)

# two-sided 95% critical values t_{0.975, df} as printed in any t table
TABLE = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 30: 2.042272456}


@pytest.mark.parametrize("df,t", TABLE.items())
def test_t_quantile_matches_the_table(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-8)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=1e-8)


def test_t_quantile_matches_scipy():
    for df in [*range(1, 101), 150, 500, 1000]:
        for p in (0.6, 0.75, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.1, 0.025):
            assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-10)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959966, abs=1e-5)  # -> normal


def test_t_cdf_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0, 40.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)
        assert t_cdf(t, 7) == pytest.approx(scipy.stats.t.cdf(t, 7), abs=1e-13)


def test_t_quantile_refuses_bad_arguments():
    for p, df in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_ci_by_hand():
    one = mean_ci([25.98])
    assert (one.mean, one.low, one.high, one.n, one.half_width) == (25.98, None, None, 1, None)
    two = mean_ci([50.0, 51.0])  # s = 0.7071, hw = 12.7062 * 0.7071 / sqrt(2) = 6.3531
    assert two.mean == 50.5 and two.n == 2
    assert two.half_width == pytest.approx(6.353102368, abs=1e-8)
    assert (two.low, two.high) == pytest.approx((50.5 - 6.353102368, 50.5 + 6.353102368))
    three = mean_ci([1.0, 2.0, 3.0])  # s = 1, hw = 4.302653 / sqrt(3) = 2.484138
    assert (three.low, three.high) == pytest.approx((-0.484137712, 4.484137712), abs=1e-8)
    assert mean_ci([1.0, 2.0, 3.0], level=0.90).half_width == pytest.approx(
        2.919985580 / math.sqrt(3), abs=1e-8)  # t_{0.95, 2}
    const = mean_ci([3.0, 3.0, 3.0])
    assert (const.mean, const.low, const.high, const.half_width) == (3.0, 3.0, 3.0, 0.0)


def test_mean_ci_refuses_bad_input():
    for values, msg in (([], "no values"), ([1.0, float("nan")], "not finite")):
        with pytest.raises(PkdError, match=msg):
            mean_ci(values)
    with pytest.raises(PkdError, match="between 0 and 1"):
        mean_ci([1.0, 2.0], level=95)


def test_paired_difference_by_hand():
    a = {0: 26.0, 1: 27.0, 2: 25.0}
    b = {2: 24.0, 0: 24.0, 1: 25.5}  # order of the keys does not matter: pairs by seed
    d = paired_difference(a, b)  # d = [2, 1.5, 1]: mean 1.5, s = 0.5, hw = 4.302653 * 0.5 / sqrt 3
    assert d.mean == pytest.approx(1.5) and d.n == 3
    assert d.half_width == pytest.approx(1.242069, abs=1e-6)
    # the shared seed noise cancels: tighter than either method's own interval
    assert d.half_width < mean_ci(list(a.values())).half_width
    single = paired_difference({4: 30.0}, {4: 28.3})
    assert single.mean == pytest.approx(1.7) and single.low is None


def test_paired_difference_refuses_unpaired_seeds():
    with pytest.raises(PkdError) as err:
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0}, names=("pkd", "baseline"))
    assert str(err.value) == ("paired difference pkd - baseline: seeds differ "
                              "(pkd: [0, 1], baseline: [0, 2])")


def test_bootstrap_two_questions_by_hand():
    """Scores (0, 1): a resample's mean is 0, 0.5, 1 with probability 1/4, 1/2, 1/4, so the
    95% percentile interval is [0, 1] and the resample means have those frequencies."""
    ci = bootstrap_ci([0.0, 1.0], n=4000)
    assert (ci.mean, ci.low, ci.high, ci.n) == (0.5, 0.0, 1.0, 2)
    means = bootstrap_means(np.array([0.0, 1.0]), 4000, seed=0)
    freq = [np.mean(means == v) for v in (0.0, 0.5, 1.0)]
    assert freq == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_bootstrap_degenerate_and_deterministic():
    one = bootstrap_ci([0.6])
    assert (one.low, one.high, one.n) == (0.6, 0.6, 1)
    const = bootstrap_ci([0.9] * 40, n=50)
    assert const.low == pytest.approx(0.9) and const.high == pytest.approx(0.9)
    scores = np.random.default_rng(3).choice([0.0, 0.3, 0.6, 0.9, 1.0], size=500)
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores, seed=7) != bootstrap_ci(scores, seed=8)
    with pytest.raises(PkdError, match="at least 1"):
        bootstrap_ci(scores, n=0)


def test_bootstrap_by_value_counts_matches_index_resampling():
    """Fast path (multinomial counts of ~5 distinct scores) against the plain one (indices;
    taken when every score is distinct): same distribution of resample means, and both match
    the theory, sd = sqrt(var / m) (population variance)."""
    scores = np.random.default_rng(0).choice([0.0, 0.3, 0.6, 0.9, 1.0], size=400,
                                             p=[0.4, 0.1, 0.1, 0.1, 0.3])
    jittered = scores + np.arange(scores.size) * 1e-12  # 400 distinct values: the index path
    fast = bootstrap_means(scores, 20000, seed=1)
    slow = bootstrap_means(jittered, 20000, seed=1)
    theory = math.sqrt(scores.var() / scores.size)
    for means in (fast, slow):
        assert means.mean() == pytest.approx(scores.mean(), abs=0.003)
        assert means.std() == pytest.approx(theory, rel=0.03)
    assert np.quantile(fast, [0.025, 0.975]) == pytest.approx(
        np.quantile(slow, [0.025, 0.975]), abs=0.006)
    ci = bootstrap_ci(scores, n=20000, seed=1)
    assert ci.low == pytest.approx(scores.mean() - 1.96 * theory, abs=0.006)
    assert ci.high == pytest.approx(scores.mean() + 1.96 * theory, abs=0.006)
