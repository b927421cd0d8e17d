"""Baselines against independent implementations: naive Python loops, pandas, numpy lstsq,
scikit-learn used directly, and published reference numbers."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import chex
import numpy as np
import pandas as pd
import pytest

from lstm_jax import baselines as B


# --------------------------------------------------------------------------- forecasting
def test_persistence_is_last_value_of_target_column():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5, 3))
    expected = np.array([x[i, 4, 2] for i in range(7)])
    chex.assert_trees_all_close(B.persistence(x, 2), expected)
    with pytest.raises(ValueError, match="expected windows of shape"):
        B.persistence(x[0], 0)


def test_day_of_year_matches_pandas():
    dates = np.arange(np.datetime64("2011-12-25"), np.datetime64("2013-01-05"))
    np.testing.assert_array_equal(B.day_of_year(dates), pd.DatetimeIndex(dates).dayofyear.to_numpy())


def test_climatology_unsmoothed_is_groupby_day_of_year_mean():
    dates = np.arange(np.datetime64("2010-01-01"), np.datetime64("2014-01-01"))
    rng = np.random.default_rng(1)
    values = 10 + 5 * np.sin(np.arange(len(dates)) / 58.0) + rng.normal(size=len(dates))
    model = B.fit_climatology(dates, values, smooth_days=1)
    frame = pd.DataFrame({"doy": pd.DatetimeIndex(dates).dayofyear, "v": values})
    by_day = frame.groupby("doy")["v"].mean()
    query = np.array(["2015-03-01", "2016-12-31", "2015-07-04"], dtype="datetime64[D]")
    expected = by_day.loc[pd.DatetimeIndex(query).dayofyear].to_numpy()
    chex.assert_trees_all_close(B.predict_climatology(model, query), expected, rtol=1e-12)


def test_climatology_smoothing_is_circular_moving_average():
    dates = np.arange(np.datetime64("2001-01-01"), np.datetime64("2002-01-01"))  # 365 days, one per doy
    values = np.arange(365, dtype=float)
    model = B.fit_climatology(dates, values, smooth_days=3)
    # the window runs over the 366 day-of-year bins (weighted by counts), wrapping from 366
    # to 1 (value = day of year - 1): day 1 pools days 366 (none here), 1, 2; day 365 pools 364-366
    np.testing.assert_allclose(model.table[1], (0 + 1) / 2)
    np.testing.assert_allclose(model.table[365], (363 + 364) / 2)
    np.testing.assert_allclose(model.table[200], (198 + 199 + 200) / 3)


def test_linear_ar_matches_lstsq_without_ridge():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 4, 3))
    w_true = rng.normal(size=12)
    y = x.reshape(200, -1) @ w_true + 0.5 + 0.01 * rng.normal(size=200)
    model = B.fit_linear_ar(x, y, ridge=0.0)
    design = np.concatenate([x.reshape(200, -1), np.ones((200, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    x_new = rng.normal(size=(9, 4, 3))
    expected = np.concatenate([x_new.reshape(9, -1), np.ones((9, 1))], axis=1) @ coef
    chex.assert_trees_all_close(B.predict_linear_ar(model, x_new), expected, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="expected windows with 12 values"):
        B.predict_linear_ar(model, x_new[:, :2])


def test_linear_ar_ridge_matches_sklearn_ridge_on_standardised_features():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 3, 2)) * np.array([1.0, 10.0])
    y = x[:, -1, 0] - 0.1 * x[:, 0, 1] + rng.normal(size=80)
    model = B.fit_linear_ar(x, y, ridge=0.05)
    flat = x.reshape(80, -1)
    z = (flat - flat.mean(0)) / flat.std(0)
    ref = Ridge(alpha=0.05 * 80).fit(z, y)
    chex.assert_trees_all_close(B.predict_linear_ar(model, x), ref.predict(z), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- classification
def test_majority_class():
    np.testing.assert_array_equal(B.majority_class(np.array([2, 1, 2, 0, 1, 2]), 3), [2, 2, 2])
    np.testing.assert_array_equal(B.majority_class(np.array([1, 0]), 2), [0, 0])  # tie -> smallest


def _naive_dtw(a, b):
    n, m = len(a), len(b)
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = float(np.sum((a[i - 1] - b[j - 1]) ** 2))
            acc[i, j] = cost + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    return acc[n, m]


def test_dtw_matches_naive_dynamic_programme_on_variable_lengths():
    rng = np.random.default_rng(4)
    queries = [rng.normal(size=(t, 3)) for t in (3, 7, 5)]
    refs = [rng.normal(size=(t, 3)) for t in (6, 2, 9, 4)]
    expected = np.array([[_naive_dtw(q, r) for r in refs] for q in queries])
    chex.assert_trees_all_close(B.dtw_distances(queries, refs, chunk=2), expected, rtol=1e-9, atol=1e-9)


def test_euclidean_distances_match_scipy_on_zero_padded_series():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(5)
    a = [rng.normal(size=(t, 2)) for t in (3, 5)]
    b = [rng.normal(size=(t, 2)) for t in (4, 5, 1)]
    pad = lambda s: np.pad(s, ((0, 5 - len(s)), (0, 0))).ravel()  # noqa: E731
    expected = cdist(np.stack([pad(s) for s in a]), np.stack([pad(s) for s in b]), "sqeuclidean")
    chex.assert_trees_all_close(B.euclidean_distances(a, b), expected, rtol=1e-9, atol=1e-9)


def test_nearest_neighbor_dtw_reproduces_published_japanese_vowels_accuracy():
    from lstm_jax import datasets

    d = datasets.load_ts_dataset("JapaneseVowels")
    pred = B.nearest_neighbor(d.train_x, d.train_y, d.test_x, metric="dtw")
    # UEA archive: 1-NN DTW (dependent, full window) 0.949 on JapaneseVowels
    assert abs(np.mean(pred == d.test_y) - 0.949) < 0.002
    with pytest.raises(ValueError, match="expected metric"):
        B.nearest_neighbor(d.train_x, d.train_y, d.test_x, metric="cosine")


def test_tfidf_logreg_equals_sklearn_pipeline_for_fixed_C():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    words = ["good", "great", "tasty", "bad", "awful", "stale", "the", "food", "was", "very"]
    rng = np.random.default_rng(6)
    texts, labels = [], []
    for i in range(120):
        y = i % 2
        pool = words[:3] if y else words[3:6]
        texts.append(" ".join(rng.choice(pool + words[6:], size=8)))
        labels.append(y)
    labels = np.array(labels)
    ours = B.tfidf_logreg(texts[:80], labels[:80], texts[80:], Cs=(3.0,))
    ref = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2), LogisticRegression(C=3.0, solver="liblinear")
    )
    np.testing.assert_array_equal(ours, ref.fit(texts[:80], labels[:80]).predict(texts[80:]))
    assert np.mean(ours == labels[80:]) > 0.9


def test_sklearn_classifier_matches_svc_and_rejects_unknown():
    from sklearn.svm import SVC

    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 4, 4))
    y = (x[:, 0, 0] > 0).astype(int)
    ref = SVC(C=10.0, gamma="scale").fit(x.reshape(60, -1)[:40], y[:40]).predict(x.reshape(60, -1)[40:])
    np.testing.assert_array_equal(B.sklearn_classifier("svc", x[:40], y[:40], x[40:]), ref)
    with pytest.raises(ValueError, match="expected classifier"):
        B.sklearn_classifier("forest", x, y, x)


# --------------------------------------------------------------------------- n-grams
def _naive_ngram(train, order, smoothing, vocab, d=0.75):
    """Dictionary implementation of interpolated Witten-Bell / Kneser-Ney, straight from the formulas."""
    counts = [Counter() for _ in range(order)]
    for k in range(order):
        for i in range(k, len(train)):
            counts[k][tuple(train[i - k : i + 1])] += 1
    if smoothing == "kneser_ney":  # continuation counts below the top order
        for k in range(order - 1):
            cont = Counter()
            for gram in counts[k + 1]:
                cont[gram[1:]] += 1
            counts[k] = cont
    ctx_total = [defaultdict(float) for _ in range(order)]
    ctx_types = [defaultdict(float) for _ in range(order)]
    for k in range(order):
        for gram, c in counts[k].items():
            ctx_total[k][gram[:-1]] += c
            ctx_types[k][gram[:-1]] += 1
    uni = Counter(train)

    def prob(history, c):
        p = (uni[c] + 1) / (len(train) + vocab)
        for k in range(order):
            if len(history) < k:
                break
            h = tuple(history[len(history) - k :]) if k else ()
            total = ctx_total[k].get(h, 0.0)
            if total == 0:
                continue
            t = ctx_types[k][h]
            n = counts[k].get(h + (c,), 0)
            if smoothing == "witten_bell":
                p = (n + t * p) / (total + t)
            else:
                p = max(n - d, 0) / total + d * t / total * p
        return p

    return prob


@pytest.mark.parametrize("smoothing", ["witten_bell", "kneser_ney"])
def test_ngram_log_probs_match_dictionary_implementation(smoothing):
    rng = np.random.default_rng(8)
    vocab = 5
    train = list(rng.choice(vocab, size=400, p=[0.4, 0.3, 0.15, 0.1, 0.05]))
    test = list(rng.choice(vocab, size=60))
    model = B.fit_ngram(np.array(train), vocab, order=3, smoothing=smoothing)
    prob = _naive_ngram(train, 3, smoothing, vocab)
    expected = np.array([math.log(prob(test[max(0, i - 2) : i], test[i])) for i in range(len(test))])
    chex.assert_trees_all_close(B.ngram_log_probs(model, np.array(test)), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smoothing", ["witten_bell", "kneser_ney"])
def test_ngram_distributions_are_normalised(smoothing):
    rng = np.random.default_rng(9)
    vocab = 6
    train = rng.integers(0, vocab, 500)
    train[::7] = 2  # some structure
    model = B.fit_ngram(train, vocab, order=4, smoothing=smoothing)
    for history in ([], [2], [1, 2], [2, 0, 2], [5, 5, 5]):  # seen and unseen contexts
        totals = sum(math.exp(B.ngram_log_probs(model, np.array(history + [c]))[-1]) for c in range(vocab))
        assert abs(totals - 1.0) < 1e-9, (history, totals)


def test_ngram_input_checks():
    with pytest.raises(ValueError, match="expected smoothing"):
        B.fit_ngram(np.arange(10) % 3, 3, smoothing="laplace")
    model = B.fit_ngram(np.arange(10) % 3, 3, order=2)
    with pytest.raises(ValueError, match=r"expected ids in \[0, 3\)"):
        B.ngram_log_probs(model, np.array([0, 3]))
