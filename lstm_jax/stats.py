"""Statistical comparison of two models on the same test examples, and summaries over runs.

Plain numpy/scipy, deterministic (seeded), so a reported interval or p-value can be
reproduced without JAX:

* ``paired_bootstrap``: confidence interval of a metric difference (accuracy, RMSE, any
  per-example loss) by resampling the test examples, both models on the same resample.
* ``mcnemar``: paired classifiers (exact binomial, or chi-square with continuity correction).
* ``diebold_mariano``: equal predictive accuracy of two forecasters, with the
  Harvey-Leybourne-Newbold small-sample correction and ``h - 1`` autocovariance lags.
* ``summarize`` / ``mean_ci``: mean, sd, min, max, n of values over seeds; a t interval.

Shapes: ``n`` test examples, ``B`` bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional, Union

import numpy as np

__all__ = [
    "BootstrapResult",
    "paired_bootstrap",
    "McNemarResult",
    "mcnemar",
    "DMResult",
    "diebold_mariano",
    "summarize",
    "mean_ci",
]

Statistic = Union[str, Callable[[np.ndarray], np.ndarray]]


def _paired(a, b, name_a: str, name_b: str) -> tuple:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"expected {name_a} and {name_b} of the same shape [n] with n >= 2, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"expected finite {name_a} and {name_b}, got NaN or Inf")
    return a, b


def _statistic(statistic: Statistic) -> Callable[[np.ndarray], np.ndarray]:
    if callable(statistic):
        return statistic
    if statistic == "mean":
        return lambda v: v.mean(-1)
    if statistic == "rmse":
        return lambda v: np.sqrt(v.mean(-1))
    raise ValueError(f"expected statistic 'mean', 'rmse' or a callable, got {statistic!r}")


class BootstrapResult(NamedTuple):
    """Result of ``paired_bootstrap``: ``stat(a) - stat(b)`` and its percentile interval."""

    difference: float  # statistic of a minus statistic of b on the full test set
    low: float  # lower end of the percentile interval
    high: float  # upper end
    level: float  # e.g. 0.95
    p_value: float  # two-sided bootstrap p-value of "no difference"
    n_boot: int


def paired_bootstrap(
    a,
    b,
    *,
    statistic: Statistic = "mean",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``statistic(a) - statistic(b)``, resampling examples in pairs.

    Args:
      a, b: ``[n]`` per-example values of two models on the same examples: correctness
        (0/1, for accuracy), squared errors (with ``statistic="rmse"``), any per-example loss.
      statistic: ``"mean"``, ``"rmse"`` (square root of the mean: pass squared errors) or a
        function ``[B, n] -> [B]`` applied to every resample.
      n_boot: number of resamples ``B``; level: coverage of the interval; seed: numpy seed.

    Returns:
      ``BootstrapResult``; the p-value is twice the smaller tail fraction of resampled
      differences on either side of 0 (at least ``1 / B``).

    >>> r = paired_bootstrap([1, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0], n_boot=500)
    >>> round(r.difference, 3), r.low <= r.difference <= r.high
    (0.5, True)
    """
    a, b = _paired(a, b, "a", "b")
    if not 0.0 < level < 1.0:
        raise ValueError(f"expected 0 < level < 1, got {level!r}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 10:
        raise ValueError(f"expected n_boot to be an int >= 10, got {n_boot!r}")
    fn = _statistic(statistic)
    n = len(a)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // n))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        diffs[start : start + len(idx)] = fn(a[idx]) - fn(b[idx])
    alpha = 1.0 - level
    low, high = np.quantile(diffs, [alpha / 2, 1.0 - alpha / 2])
    tail = min(np.mean(diffs <= 0.0), np.mean(diffs >= 0.0))
    p = float(min(1.0, max(2.0 * tail, 1.0 / n_boot)))
    full = float(fn(a[None])[0] - fn(b[None])[0])
    return BootstrapResult(full, float(low), float(high), float(level), p, int(n_boot))


class McNemarResult(NamedTuple):
    """Result of ``mcnemar``."""

    b: int  # examples model A got right and model B wrong
    c: int  # examples model B got right and model A wrong
    statistic: float  # min(b, c) for the exact test; the chi-square statistic otherwise
    p_value: float  # two-sided
    method: str  # "exact" or "chi2"


def mcnemar(correct_a, correct_b, *, exact: Optional[bool] = None) -> McNemarResult:
    """McNemar's test that two classifiers have the same error rate on the same examples.

    Args:
      correct_a, correct_b: ``[n]`` booleans (or 0/1): was each example classified correctly.
      exact: ``True``: exact two-sided binomial test on the discordant pairs (``b`` of
        ``b + c`` with p = 1/2); ``False``: chi-square with continuity correction,
        ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom; ``None`` (default): exact when
        ``b + c < 25``.

    >>> r = mcnemar([1, 1, 1, 1, 0, 1], [0, 0, 0, 1, 0, 1])
    >>> r.b, r.c, r.method, round(r.p_value, 4)
    (3, 0, 'exact', 0.25)
    """
    from scipy import stats as st

    ca, cb = (np.asarray(v) for v in (correct_a, correct_b))
    if ca.ndim != 1 or ca.shape != cb.shape or ca.size == 0:
        raise ValueError(f"expected correct_a and correct_b of the same shape [n], got {ca.shape} and {cb.shape}")
    for name, v in (("correct_a", ca), ("correct_b", cb)):
        if not np.isin(v, (0, 1)).all():
            raise ValueError(f"expected {name} to hold booleans or 0/1, got values like {v[~np.isin(v, (0, 1))][:3]}")
    ca, cb = ca.astype(bool), cb.astype(bool)
    b, c = int(np.sum(ca & ~cb)), int(np.sum(~ca & cb))
    if exact is None:
        exact = b + c < 25
    if b + c == 0:
        return McNemarResult(b, c, 0.0, 1.0, "exact" if exact else "chi2")
    if exact:
        p = st.binomtest(min(b, c), b + c, 0.5).pvalue
        return McNemarResult(b, c, float(min(b, c)), float(min(1.0, p)), "exact")
    stat = (abs(b - c) - 1.0) ** 2 / (b + c)
    return McNemarResult(b, c, float(stat), float(st.chi2.sf(stat, 1)), "chi2")


class DMResult(NamedTuple):
    """Result of ``diebold_mariano``."""

    statistic: float  # HLN-corrected DM statistic (plain DM with harvey=False)
    p_value: float  # two-sided
    mean_difference: float  # mean of loss_a - loss_b (negative: A has the smaller loss)
    h: int
    n: int


def diebold_mariano(loss_a, loss_b, *, h: int = 1, harvey: bool = True) -> DMResult:
    """Diebold-Mariano test of equal expected loss of two forecasts of the same targets.

    With ``d_t = loss_a[t] - loss_b[t]`` (``n`` of them), mean ``d̄`` and autocovariances
    ``γ_k = (1/n) Σ_{t>=k} (d_t - d̄)(d_{t-k} - d̄)``, the long-run variance of ``d̄`` is
    ``V = (γ_0 + 2 Σ_{k=1}^{h-1} γ_k) / n`` (an ``h``-step forecast's errors are MA(h-1));
    ``DM = d̄ / sqrt(V)``. With ``harvey`` (Harvey, Leybourne & Newbold 1997) the statistic
    is multiplied by ``sqrt((n + 1 - 2h + h(h-1)/n) / n)`` and compared with Student's t on
    ``n - 1`` degrees of freedom; otherwise with the standard normal. A non-positive ``V``
    (possible for ``h > 1``) falls back to ``γ_0 / n``.

    Args:
      loss_a, loss_b: ``[n]`` per-time-step losses (e.g. squared errors) in time order.
      h: forecast horizon (number of autocovariance lags ``h - 1``).

    >>> r = diebold_mariano([1.0, 2.0, 1.5, 3.0], [2.0, 2.5, 2.0, 2.0])
    >>> round(r.mean_difference, 3)
    -0.25
    """
    from scipy import stats as st

    a, b = _paired(loss_a, loss_b, "loss_a", "loss_b")
    n = len(a)
    if not isinstance(h, (int, np.integer)) or isinstance(h, bool) or not 1 <= h < n:
        raise ValueError(f"expected an int horizon 1 <= h < n = {n}, got {h!r}")
    d = a - b
    dbar = float(d.mean())
    e = d - dbar
    gamma = [float(e[k:] @ e[: n - k]) / n for k in range(h)]
    var = (gamma[0] + 2.0 * sum(gamma[1:])) / n
    if var <= 0.0:
        var = gamma[0] / n
    if var <= 0.0:  # identical losses everywhere
        return DMResult(0.0, 1.0, dbar, int(h), n)
    dm = dbar / np.sqrt(var)
    if harvey:
        dm *= np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
        p = 2.0 * st.t.sf(abs(dm), n - 1)
    else:
        p = 2.0 * st.norm.sf(abs(dm))
    return DMResult(float(dm), float(p), dbar, int(h), n)


def summarize(values: Sequence[float]) -> dict:
    """``{"mean", "sd", "min", "max", "n"}`` of values (e.g. one metric over seeds).

    ``sd`` is the sample standard deviation (``ddof=1``; 0.0 for a single value).

    >>> summarize([1.0, 2.0, 3.0])
    {'mean': 2.0, 'sd': 1.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(
            f"expected at least one finite value, got {v.size} values with {np.sum(~np.isfinite(v))} NaN/Inf"
        )
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def mean_ci(values: Sequence[float], *, level: float = 0.95) -> tuple:
    """Student-t confidence interval ``(low, high)`` of the mean of ``values`` (``n >= 2``)."""
    from scipy import stats as st

    s = summarize(values)
    if s["n"] < 2:
        raise ValueError(f"expected at least 2 values for a confidence interval, got {s['n']}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"expected 0 < level < 1, got {level!r}")
    half = st.t.ppf(0.5 + level / 2, s["n"] - 1) * s["sd"] / np.sqrt(s["n"])
    return float(s["mean"] - half), float(s["mean"] + half)
