"""lstm_jax.metrics against numerical integration (scipy) and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as st
from sklearn import metrics as skm

from lstm_jax import metrics


def _crps_by_integration(cdf, y, lo, hi, points=()):
    """CRPS = integral of (F(x) - 1{x >= y})^2 dx, split at y (and at any jumps of F)."""
    cuts = sorted({lo, hi, y, *[p for p in points if lo < p < hi]})
    f = lambda x: (cdf(x) - (x >= y)) ** 2  # noqa: E731
    return sum(integrate.quad(f, a, b, limit=200)[0] for a, b in zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("mu, sigma, y", [(0.0, 1.0, 0.3), (2.0, 0.5, -1.0), (-3.0, 4.0, 5.0), (1.0, 2.0, 1.0)])
def test_crps_gaussian_matches_numerical_integration(mu, sigma, y):
    ref = _crps_by_integration(lambda x: st.norm.cdf(x, mu, sigma), y, mu - 12 * sigma, mu + 12 * sigma + abs(y))
    np.testing.assert_allclose(metrics.crps_gaussian(mu, sigma, y), ref, rtol=1e-6)


def test_crps_samples_matches_the_integral_of_the_empirical_cdf():
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(15, 3))
    ys = np.array([0.1, -2.5, 3.0])
    got = metrics.crps_samples(draws, ys)
    for j, y in enumerate(ys):
        x = draws[:, j]
        ecdf = lambda v, x=x: np.mean(x <= v)  # noqa: E731
        ref = _crps_by_integration(ecdf, y, min(x.min(), y) - 1, max(x.max(), y) + 1, points=tuple(x))
        np.testing.assert_allclose(got[j], ref, rtol=1e-6)
    # many draws of N(mu, sigma) approach the closed form
    big = rng.normal(1.0, 2.0, size=(20000, 1))
    np.testing.assert_allclose(
        metrics.crps_samples(big, np.array([0.0])), metrics.crps_gaussian(1.0, 2.0, 0.0), rtol=0.02
    )
    with pytest.raises(ValueError, match="expected samples"):
        metrics.crps_samples(draws, ys[:2])


def test_quantile_draws_give_the_gaussian_crps_and_pinball_is_its_integrand():
    levels = np.linspace(0.01, 0.99, 99)
    q = st.norm.ppf(levels, 0.5, 1.5)[None, :]  # one forecast
    draws = metrics.quantiles_to_samples(q, levels, m=99)
    assert draws.shape == (99, 1)
    mid = (np.arange(99) + 0.5) / 99  # the draws' levels: where the grid matches them, exact
    on_grid = metrics.quantiles_to_samples(st.norm.ppf(mid, 0.5, 1.5)[None, :], mid, m=99)
    np.testing.assert_allclose(on_grid[:, 0], st.norm.ppf(mid, 0.5, 1.5), atol=1e-9)
    between = np.interp(mid[1:-1], levels, q[0])  # linear interpolation of the quantile function
    np.testing.assert_allclose(draws[1:-1, 0], between, atol=1e-9)
    y = np.array([1.2])
    exact = metrics.crps_gaussian(0.5, 1.5, 1.2)
    np.testing.assert_allclose(metrics.crps_samples(draws, y), exact, rtol=0.03)
    pin = np.mean([metrics.pinball_loss(q[0, j], 1.2, lv) for j, lv in enumerate(levels)])
    np.testing.assert_allclose(2 * pin, exact, rtol=0.03)
    # pinball by hand
    np.testing.assert_allclose(metrics.pinball_loss(np.array([1.0, 3.0]), np.array([2.0, 2.0]), 0.9), [0.9, 0.1])
    with pytest.raises(ValueError, match="level"):
        metrics.pinball_loss(1.0, 2.0, 1.5)


def test_intervals_coverage_and_width():
    lo, hi = metrics.gaussian_interval(np.zeros(3), np.ones(3), 0.8)
    np.testing.assert_allclose(hi, st.norm.ppf(0.9))
    rng = np.random.default_rng(1)
    y = rng.normal(size=20000)
    np.testing.assert_allclose(metrics.interval_coverage(-1.2815515655, 1.2815515655, y), 0.8, atol=0.01)
    assert metrics.interval_coverage([0, 0, 0], [1, 1, 1], [0.5, 1.0, 2.0]) == 2 / 3
    np.testing.assert_allclose(metrics.interval_width([0, 1], [2, 4]), 2.5)
    slo, shi = metrics.sample_interval(rng.normal(size=(5000, 2)), 0.95)
    np.testing.assert_allclose(shi, 1.96, atol=0.1)


def _anomaly_case(seed, ties):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.1).astype(int)
    scores = rng.normal(size=300) + 1.5 * labels
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("ties", [False, True])
def test_auc_ap_and_pr_curve_match_scikit_learn(ties):
    scores, labels = _anomaly_case(0, ties)
    np.testing.assert_allclose(metrics.roc_auc(scores, labels), skm.roc_auc_score(labels, scores), rtol=1e-12)
    np.testing.assert_allclose(
        metrics.average_precision(scores, labels), skm.average_precision_score(labels, scores), rtol=1e-12
    )
    p, r, t = metrics.precision_recall(scores, labels)
    sp, sr, stt = skm.precision_recall_curve(labels, scores)
    keep = sr[:-1] > 0  # sklearn's curve starts at the threshold where recall first rises
    ref = {round(th, 12): (pp, rr) for th, pp, rr in zip(stt[keep], sp[:-1][keep], sr[:-1][keep])}
    for th, pp, rr in zip(t, p, r):
        if round(th, 12) in ref:
            np.testing.assert_allclose((pp, rr), ref[round(th, 12)], rtol=1e-12)
    f1, threshold = metrics.best_f1(scores, labels)
    f1_ref = np.max(np.where(sp + sr > 0, 2 * sp * sr / np.maximum(sp + sr, 1e-300), 0))
    np.testing.assert_allclose(f1, f1_ref, rtol=1e-12)
    np.testing.assert_allclose(skm.f1_score(labels, scores >= threshold), f1, rtol=1e-12)


def test_top1_hit_and_bad_labels():
    labels = np.zeros(1000, int)
    labels[500:510] = 1
    scores = np.zeros(1000)
    scores[605] = 1.0
    assert metrics.top1_hit(scores, labels)  # within 100 points of the region
    scores[605], scores[700] = 0.0, 1.0
    assert not metrics.top1_hit(scores, labels)
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.roc_auc([0.1, 0.2], [1, 1])
