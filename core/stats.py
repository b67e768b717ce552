"""Intervals for results: a mean with its 95% CI over seeds, a paired difference, a bootstrap.

A result is a mean with its 95% CI over seeds and a paired difference to its reference; a single
seed is an anecdote. Three estimators, numpy only (scipy is a test dependency):

* :func:`mean_ci` — Student-t interval of a mean over ``n`` runs (seeds):
  ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)``, ``s`` the sample standard deviation (``n - 1``
  in the denominator). No interval for ``n = 1``.
* :func:`paired_difference` — the same interval over the per-seed differences ``d_i = a_i - b_i``
  of two methods run on the same seeds (and stores): the seed-to-seed noise the two share cancels,
  so the interval is tighter than comparing two separate intervals (Student 1908; any textbook's
  paired t-test).
* :func:`bootstrap_ci` — percentile bootstrap of a mean over questions (Efron & Tibshirani 1993,
  ch. 13): the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the means of ``n`` resamples,
  each ``m`` questions drawn with replacement. Within one model this is the test-set sampling
  noise only, not the training noise that :func:`mean_ci` over seeds measures.

The t quantile is computed here (:func:`t_quantile`): bisection on the t CDF, written with the
regularized incomplete beta function ``I_x(a, b)`` evaluated by its continued fraction
(Numerical Recipes, 3rd ed., §6.4, modified Lentz). It matches ``scipy.stats.t.ppf`` to ~1e-12
for df <= 1000 (tests/test_stats.py); ``lgamma`` cancellation limits it to ~1e-8 at df = 1e7.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pkd.errors import PkdError

LEVEL = 0.95  # default confidence level


@dataclass(frozen=True)
class Estimate:
    mean: float  # the point estimate (mean of the values / differences / scores)
    low: float | None  # lower end of the interval; None when there is none (n = 1)
    high: float | None  # upper end
    n: int  # seeds (mean_ci, paired_difference) or questions (bootstrap_ci)

    @property
    def half_width(self) -> float | None:
        """``(high - low) / 2``: the ``± hw`` of a symmetric (t) interval."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of ``I_x(a, b)`` (Numerical Recipes ``betacf``, modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """Regularized incomplete beta ``I_x(a, b) = B(x; a, b) / B(a, b)`` for ``0 <= x <= 1``,
    using the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where the fraction converges slowly.
    ``y = 1 - x`` may be given exactly (for ``x`` within rounding of 1)."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def t_cdf(t: float, df: float) -> float:
    """Student-t CDF: ``P(T <= t) = 1 - I_{df/(df+t²)}(df/2, 1/2) / 2`` for ``t >= 0`` (and
    ``1 - P(T <= -t)`` below zero)."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``0 < p < 1``): bisection
    of :func:`t_cdf` (monotone) to a relative width of 1e-13."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: the quantile lies in [hi/2, hi]
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-13 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise PkdError(f"{what}: no values")
    if not np.isfinite(x).all():
        raise PkdError(f"{what}: a value is not finite ({x[~np.isfinite(x)][0]})")
    return x


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise PkdError(f"confidence level {level}: expected a number between 0 and 1")


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean of ``values`` (one per seed) with its Student-t interval.

    ``mean ± t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s = sqrt(sum (x_i - mean)² / (n - 1))``.
    ``n = 1``: ``low = high = None`` (one seed has no spread to estimate); constant values give
    the zero-width interval ``[mean, mean]``.
    """
    _check_level(level)
    x = _finite(values, "mean_ci")
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(mean, None, None, 1)
    hw = t_quantile((1.0 + level) / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Estimate(mean, mean - hw, mean + hw, int(x.size))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL,
                      names: tuple[str, str] = ("a", "b")) -> Estimate:
    """Mean of the per-seed differences ``d_s = a_s - b_s`` with their t interval
    (:func:`mean_ci` of ``d``). ``a`` and ``b`` map seed -> value and must hold the same seeds:
    a difference over unpaired runs is not a paired difference (``names`` name them in the
    error)."""
    if set(a) != set(b):
        raise PkdError(f"paired difference {names[0]} - {names[1]}: seeds differ "
                       f"({names[0]}: {sorted(a)}, {names[1]}: {sorted(b)})")
    seeds = sorted(a)
    return mean_ci([a[s] - b[s] for s in seeds], level)


BLOCK = 1 << 22  # cells (resamples x categories or questions) drawn per rng call (~32 MB)


def bootstrap_means(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Means of ``n`` bootstrap resamples of ``x`` (``m`` values drawn with replacement), (n,).

    Without an (n, m) index array when ``x`` has few distinct values (VQA scores have ~5): a
    resample's mean depends only on how often each distinct value ``v_k`` (count ``c_k``) is
    drawn, and those counts are ``Multinomial(m, c_k / m)``, so ``mean_r = sum_k v_k N_rk / m``
    — the same distribution as drawing indices. Many distinct values: indices, in blocks."""
    values, counts = np.unique(x, return_counts=True)  # (K,), (K,)
    m, rng = int(x.size), np.random.default_rng(seed)
    by_value = 8 * values.size < m
    block = max(1, BLOCK // (values.size if by_value else m))  # resamples per rng call
    out = []
    for i in range(0, n, block):
        k = min(block, n - i)
        if by_value:
            out.append(rng.multinomial(m, counts / m, size=k) @ values / m)  # (k, K) @ (K,)
        else:
            out.append(x[rng.integers(0, m, size=(k, m))].mean(axis=1))  # (k, m) -> (k,)
    return np.concatenate(out)


def bootstrap_ci(per_question_scores: Sequence[float], n: int = 1000, seed: int = 0,
                 level: float = LEVEL) -> Estimate:
    """Percentile bootstrap interval of the mean score over questions.

    ``n`` resamples of the ``m`` scores with replacement (:func:`bootstrap_means`); the interval
    is the ``(1-level)/2`` and ``(1+level)/2`` quantiles (``np.quantile``, linear) of their
    means; ``mean`` is the mean of the scores themselves. Deterministic for a given ``seed``
    (numpy ``default_rng``).
    """
    _check_level(level)
    if n < 1:
        raise PkdError(f"bootstrap: {n} resamples; expected at least 1")
    x = _finite(per_question_scores, "bootstrap_ci")
    means = bootstrap_means(x, n, seed)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))
