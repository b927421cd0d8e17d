"""lstm_jax.stats against scipy, statsmodels and computations written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from lstm_jax import stats


# --------------------------------------------------------------------------- McNemar
def _pairs(b, c, both=7, neither=5):
    """Correctness vectors with b (A right, B wrong) and c (B right, A wrong) discordant pairs."""
    a = np.r_[np.ones(b), np.zeros(c), np.ones(both), np.zeros(neither)].astype(bool)
    bb = np.r_[np.zeros(b), np.ones(c), np.ones(both), np.zeros(neither)].astype(bool)
    return a, bb


@pytest.mark.parametrize("b, c", [(3, 0), (9, 4), (12, 30), (40, 22), (5, 5)])
def test_mcnemar_matches_statsmodels_exact_and_chi2(b, c):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a, bb = _pairs(b, c)
    table = [[7, b], [c, 5]]
    exact = stats.mcnemar(a, bb, exact=True)
    ref = sm_mcnemar(table, exact=True)
    assert (exact.b, exact.c, exact.method) == (b, c, "exact")
    np.testing.assert_allclose(exact.p_value, ref.pvalue, rtol=1e-10)
    np.testing.assert_allclose(exact.p_value, st.binomtest(min(b, c), b + c, 0.5).pvalue, rtol=1e-12)
    chi = stats.mcnemar(a, bb, exact=False)
    ref = sm_mcnemar(table, exact=False, correction=True)
    np.testing.assert_allclose([chi.statistic, chi.p_value], [ref.statistic, ref.pvalue], rtol=1e-10)
    np.testing.assert_allclose(chi.p_value, st.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), 1), rtol=1e-12)
    assert stats.mcnemar(a, bb).method == ("exact" if b + c < 25 else "chi2")


def test_mcnemar_rejects_bad_input_and_handles_no_discordance():
    assert stats.mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="same shape"):
        stats.mcnemar([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="booleans or 0/1"):
        stats.mcnemar([1, 2], [1, 0])


# --------------------------------------------------------------------------- Diebold-Mariano
def test_diebold_mariano_h1_by_hand():
    la = np.array([1.0, 4.0, 2.0, 0.5, 3.0, 1.0])
    lb = np.array([2.0, 3.0, 3.0, 1.5, 3.5, 2.0])
    d = la - lb  # -1, 1, -1, -1, -0.5, -1
    n = 6
    dbar = d.sum() / n  # -3.5 / 6
    gamma0 = sum((x - dbar) ** 2 for x in d) / n
    dm = dbar / np.sqrt(gamma0 / n)
    plain = stats.diebold_mariano(la, lb, harvey=False)
    np.testing.assert_allclose(plain.mean_difference, -3.5 / 6, rtol=1e-12)
    np.testing.assert_allclose(plain.statistic, dm, rtol=1e-12)
    np.testing.assert_allclose(plain.p_value, 2 * st.norm.sf(abs(dm)), rtol=1e-12)
    hln = stats.diebold_mariano(la, lb)
    corrected = dm * np.sqrt((n + 1 - 2 + 0) / n)
    np.testing.assert_allclose(hln.statistic, corrected, rtol=1e-12)
    np.testing.assert_allclose(hln.p_value, 2 * st.t.sf(abs(corrected), n - 1), rtol=1e-12)


def test_diebold_mariano_h3_uses_two_autocovariance_lags():
    rng = np.random.default_rng(1)
    la, lb = rng.gamma(2.0, size=40), rng.gamma(2.2, size=40)
    d = la - lb
    n, h = len(d), 3
    e = d - d.mean()
    gam = [np.sum([e[t] * e[t - k] for t in range(k, n)]) / n for k in range(h)]
    var = (gam[0] + 2 * (gam[1] + gam[2])) / n
    dm = d.mean() / np.sqrt(var) * np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    got = stats.diebold_mariano(la, lb, h=h)
    np.testing.assert_allclose(got.statistic, dm, rtol=1e-10)
    np.testing.assert_allclose(got.p_value, 2 * st.t.sf(abs(dm), n - 1), rtol=1e-10)
    # swapping the models flips the sign, not the p-value
    swapped = stats.diebold_mariano(lb, la, h=h)
    np.testing.assert_allclose([swapped.statistic, swapped.p_value], [-got.statistic, got.p_value], rtol=1e-12)


def test_diebold_mariano_is_calibrated_under_the_null():
    rng = np.random.default_rng(0)
    p = np.array(
        [stats.diebold_mariano(rng.normal(size=60) ** 2, rng.normal(size=60) ** 2).p_value for _ in range(400)]
    )
    assert 0.02 < np.mean(p < 0.05) < 0.09  # nominal 5 %
    with pytest.raises(ValueError, match="horizon"):
        stats.diebold_mariano([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], h=3)


# --------------------------------------------------------------------------- bootstrap
def test_paired_bootstrap_mean_matches_scipy_bootstrap_and_normal_theory():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, 300)
    b = a - 0.2 + rng.normal(0.0, 0.5, 300)
    got = stats.paired_bootstrap(a, b, n_boot=4000, seed=0)
    np.testing.assert_allclose(got.difference, np.mean(a - b), rtol=1e-12)
    ref = st.bootstrap(
        (a, b),
        lambda x, y: np.mean(x, axis=-1) - np.mean(y, axis=-1),
        paired=True,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(1),
    ).confidence_interval
    se = np.std(a - b, ddof=1) / np.sqrt(300)
    width = 2 * 1.96 * se
    np.testing.assert_allclose([got.low, got.high], [ref.low, ref.high], atol=0.08 * width)
    np.testing.assert_allclose([got.low, got.high], np.mean(a - b) + np.array([-1.96, 1.96]) * se, atol=0.08 * width)
    assert got.p_value < 0.01
    assert stats.paired_bootstrap(a, b, n_boot=500, seed=7) == stats.paired_bootstrap(a, b, n_boot=500, seed=7)


def test_paired_bootstrap_rmse_and_accuracy_statistics():
    rng = np.random.default_rng(4)
    err_a, err_b = rng.normal(0, 1.0, 200), rng.normal(0, 1.3, 200)
    got = stats.paired_bootstrap(err_a**2, err_b**2, statistic="rmse", n_boot=3000, seed=1)
    np.testing.assert_allclose(got.difference, np.sqrt(np.mean(err_a**2)) - np.sqrt(np.mean(err_b**2)), rtol=1e-12)
    ref = st.bootstrap(
        (err_a**2, err_b**2),
        lambda x, y: np.sqrt(np.mean(x, -1)) - np.sqrt(np.mean(y, -1)),
        paired=True,
        n_resamples=3000,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    np.testing.assert_allclose([got.low, got.high], [ref.low, ref.high], atol=0.1 * (ref.high - ref.low))
    same = stats.paired_bootstrap(np.ones(50), np.r_[np.ones(25), np.zeros(25)], n_boot=200)
    np.testing.assert_allclose(same.difference, 0.5)
    custom = stats.paired_bootstrap(err_a, err_b, statistic=lambda v: np.median(v, axis=-1), n_boot=100)
    np.testing.assert_allclose(custom.difference, np.median(err_a) - np.median(err_b))
    with pytest.raises(ValueError, match="statistic"):
        stats.paired_bootstrap(err_a, err_b, statistic="auc")
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_bootstrap(err_a, err_b[:-1])


# --------------------------------------------------------------------------- summaries
def test_summarize_and_mean_ci():
    v = [0.90, 0.902, 0.908, 0.902, 0.915]
    s = stats.summarize(v)
    assert s == {"mean": np.mean(v), "sd": np.std(v, ddof=1), "min": 0.90, "max": 0.915, "n": 5}
    lo, hi = stats.mean_ci(v, level=0.9)
    ref = st.t.interval(0.9, 4, loc=np.mean(v), scale=st.sem(v))
    np.testing.assert_allclose([lo, hi], ref, rtol=1e-12)
    assert stats.summarize([2.0])["sd"] == 0.0
    with pytest.raises(ValueError, match="finite"):
        stats.summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_ci([1.0])
