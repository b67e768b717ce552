"""Intervals over seeds x data draws: the results table's estimator (:func:`pkd.demo.summarize`).

A row's runs are ``x_{d,s}``: data draw ``d`` (``data_seed``, the benchmark generated again;
rows without it are draw 0), training seed ``s`` in the seeds ``S_d`` of that draw.

One draw (``D = 1``): the Student-t interval over seeds (:func:`pkd.stats.mean_ci`)::

    mean ± t_{0.975, n-1} · sd_s(x_s) / √n,      n = |S|

Several draws: the two-stage (cluster) estimator, the draws the units of the interval::

    m_d    = (1/|S_d|) Σ_{s ∈ S_d} x_{d,s}       each draw's mean over its seeds
    mean   = (1/D) Σ_d m_d
    95% CI = mean ± t_{0.975, D-1} · sd_d(m_d) / √D,      n = D

``Var(mean)`` is estimated by ``s²_m / D``, the spread of the draw means, and
``Var(m_d) = σ²_draw + σ²_seed / |S_d|`` holds the seed noise too: one interval covers both.

Paired differences to a reference row ``r`` use ``x_{d,s} - r_{d,s}`` in place of ``x_{d,s}``
(:func:`pkd.stats.paired_difference` for one draw): both rows must hold the same runs — the same
draws, and in each draw the same seeds — else a one-line PkdError.
"""

from __future__ import annotations

from collections.abc import Mapping

from pkd.errors import PkdError
from pkd.stats import Estimate, mean_ci, paired_difference

Runs = Mapping[tuple[int, int], float]  # (seed, data_seed) -> value of one run


def run_key(row: dict) -> tuple[int, int]:
    """``(seed, data_seed)`` of a results row; rows without ``data_seed`` are draw 0."""
    return int(row["seed"]), int(row.get("data_seed", 0))


def by_draw(runs: Runs) -> dict[int, dict[int, float]]:
    """``{data_seed: {seed: value}}``, draws and seeds sorted."""
    out: dict[int, dict[int, float]] = {}
    for seed, draw in sorted(runs, key=lambda k: (k[1], k[0])):
        out.setdefault(draw, {})[seed] = runs[(seed, draw)]
    return out


def mean_over_runs(runs: Runs) -> Estimate:
    """The mean and its 95% interval (module doc): over seeds for one draw, else over the
    draws' means over their seeds; ``n`` is the number of seeds or draws."""
    draws = by_draw(runs)
    if len(draws) == 1:
        (seeds,) = draws.values()
        return mean_ci(list(seeds.values()))
    return mean_ci([sum(seeds.values()) / len(seeds) for seeds in draws.values()])


def paired_over_runs(a: Runs, b: Runs, names: tuple[str, str] = ("a", "b")) -> Estimate:
    """The paired difference ``a - b`` with its 95% interval (module doc). ``a`` and ``b``
    must hold the same (seed, data_seed) runs (``names`` name them in the error)."""
    da, db = by_draw(a), by_draw(b)
    if set(da) != set(db):
        raise PkdError(f"paired difference {names[0]} - {names[1]}: data draws differ "
                       f"({names[0]}: {sorted(da)}, {names[1]}: {sorted(db)})")
    if len(da) == 1:
        (draw,) = da
        return paired_difference(da[draw], db[draw], names=names)
    means = []
    for draw, seeds in da.items():
        if set(seeds) != set(db[draw]):
            raise PkdError(f"paired difference {names[0]} - {names[1]}: seeds of data draw "
                           f"{draw} differ ({names[0]}: {sorted(seeds)}, "
                           f"{names[1]}: {sorted(db[draw])})")
        means.append(sum(seeds[s] - db[draw][s] for s in seeds) / len(seeds))
    return mean_ci(means)
