"""Simple baselines the experiments report next to the recurrent nets, in the same run.

All are plain numpy (scikit-learn for the text and image classifiers, imported lazily) and
deterministic, so a baseline row in ``metrics.json`` can be reproduced without JAX.

Forecasting (windows ``X: [s, w, f]`` of past days, target ``y: [s]`` the next day):
``persistence``, ``fit_climatology``/``predict_climatology`` (day-of-year mean),
``fit_linear_ar``/``predict_linear_ar`` (ridge regression on the flattened window).

Classification: ``majority_class``, ``nearest_neighbor`` (1-NN, DTW or Euclidean, for
variable-length ``[t_i, d]`` series), ``tfidf_logreg`` (texts), ``sklearn_classifier``.

Language modelling: ``fit_ngram`` / ``ngram_bits_per_char`` (interpolated Witten-Bell or
Kneser-Ney character n-grams).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "persistence",
    "day_of_year",
    "Climatology",
    "fit_climatology",
    "predict_climatology",
    "LinearAR",
    "fit_linear_ar",
    "predict_linear_ar",
    "majority_class",
    "dtw_distances",
    "euclidean_distances",
    "nearest_neighbor",
    "tfidf_logreg",
    "sklearn_classifier",
    "NGramModel",
    "fit_ngram",
    "ngram_log_probs",
    "ngram_bits_per_char",
]


def _sklearn(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError(f"expected scikit-learn to be installed (pip install scikit-learn), got {e}") from None


# --------------------------------------------------------------------------- forecasting
def persistence(windows: np.ndarray, target_index: int = 0) -> np.ndarray:
    """Tomorrow = today: the last value of the target column of each window.

    Args:
      windows: ``[s, w, f]`` past ``w`` days of ``f`` features.
      target_index: column of the target in ``f``.
    Returns:
      ``[s]`` predictions.
    """
    windows = np.asarray(windows)
    if windows.ndim != 3:
        raise ValueError(f"expected windows of shape [s, w, f], got shape {windows.shape}")
    return windows[:, -1, target_index]


class Climatology(NamedTuple):
    """Mean of the target for each day of the year (1..366), circularly smoothed."""

    table: np.ndarray  # [367] float64, index = day of year (index 0 unused)


def day_of_year(dates: np.ndarray) -> np.ndarray:
    """Day of the year, 1..366, of ``dates: [n]`` (datetime64) -> ``[n]`` int64."""
    dates = np.asarray(dates, dtype="datetime64[D]")
    years = dates.astype("datetime64[Y]")
    return (dates - years).astype(np.int64) + 1  # 1..366


def fit_climatology(dates: np.ndarray, values: np.ndarray, *, smooth_days: int = 15) -> Climatology:
    """Day-of-year climatology from training days.

    Args:
      dates: ``[n]`` datetime64 days of the training targets.
      values: ``[n]`` target values on those days.
      smooth_days: width of the circular moving average over day of year (1 = none), so
        that a few years of data give a smooth seasonal curve.
    """
    doy = day_of_year(dates)
    values = np.asarray(values, np.float64)
    if doy.shape != values.shape:
        raise ValueError(f"expected dates and values of the same shape, got {doy.shape} and {values.shape}")
    sums = np.bincount(doy - 1, weights=values, minlength=366)[:366]
    counts = np.bincount(doy - 1, minlength=366)[:366].astype(np.float64)
    if smooth_days > 1:
        kernel = np.ones(smooth_days)
        half = smooth_days // 2
        wrap = lambda a: np.concatenate([a[-half:], a, a[:half]])  # noqa: E731
        sums = np.convolve(wrap(sums), kernel, mode="valid")[:366]
        counts = np.convolve(wrap(counts), kernel, mode="valid")[:366]
    if (counts == 0).any():
        overall = values.mean()
        sums = np.where(counts == 0, overall, sums)
        counts = np.where(counts == 0, 1.0, counts)
    return Climatology(np.concatenate([[np.nan], sums / counts]))


def predict_climatology(model: Climatology, dates: np.ndarray) -> np.ndarray:
    """Climatological value for each of ``dates: [s]`` -> ``[s]``."""
    return model.table[day_of_year(dates)]


class LinearAR(NamedTuple):
    """Ridge regression of the target on the flattened window (plus an intercept)."""

    weights: np.ndarray  # [w*f]
    bias: float
    mean: np.ndarray  # [w*f] feature means used to centre
    scale: np.ndarray  # [w*f] feature standard deviations


def fit_linear_ar(windows: np.ndarray, targets: np.ndarray, *, ridge: float = 1e-2) -> LinearAR:
    """Linear autoregression on the same windows the network sees.

    Args:
      windows: ``[s, w, f]``; targets: ``[s]``.
      ridge: L2 penalty on the standardised weights (relative to ``s``).
    """
    windows = np.asarray(windows, np.float64)
    targets = np.asarray(targets, np.float64)
    if windows.ndim != 3 or targets.shape != windows.shape[:1]:
        raise ValueError(f"expected windows [s, w, f] and targets [s], got {windows.shape} and {targets.shape}")
    x = windows.reshape(len(windows), -1)
    mean, scale = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / scale
    y0 = targets.mean()
    a = z.T @ z + ridge * len(z) * np.eye(z.shape[1])
    w = np.linalg.solve(a, z.T @ (targets - y0))
    return LinearAR(w, float(y0), mean, scale)


def predict_linear_ar(model: LinearAR, windows: np.ndarray) -> np.ndarray:
    """``[s, w, f]`` windows -> ``[s]`` predictions."""
    x = np.asarray(windows, np.float64).reshape(len(windows), -1)
    if x.shape[1] != model.weights.shape[0]:
        raise ValueError(f"expected windows with {model.weights.shape[0]} values each, got {x.shape[1]}")
    return ((x - model.mean) / model.scale) @ model.weights + model.bias


# --------------------------------------------------------------------------- classification
def majority_class(train_labels: np.ndarray, n: int) -> np.ndarray:
    """Predict the most frequent training class ``n`` times (ties -> smallest label)."""
    train_labels = np.asarray(train_labels)
    if train_labels.size == 0:
        raise ValueError("expected at least one training label, got none")
    return np.full(n, np.bincount(train_labels).argmax(), dtype=train_labels.dtype)


def _pad(series: Sequence[np.ndarray]) -> tuple:
    lengths = np.array([len(s) for s in series])
    out = np.zeros((len(series), lengths.max(), series[0].shape[1]))
    for i, s in enumerate(series):
        out[i, : len(s)] = s
    return out, lengths


def dtw_distances(queries: Sequence[np.ndarray], references: Sequence[np.ndarray], *, chunk: int = 32) -> np.ndarray:
    """Dependent multivariate DTW (squared Euclidean local cost, no warping window).

    Args:
      queries: list of ``[t_i, d]``; references: list of ``[t_j, d]``.
    Returns:
      ``[len(queries), len(references)]`` DTW costs (sum of squared distances on the path).
    The dynamic programme runs over the padded grid vectorised across all pairs of a chunk;
    each pair's cost is read at its own ``(t_i - 1, t_j - 1)``, so padding never enters it.
    """
    ref, ref_len = _pad(references)
    out = np.empty((len(queries), len(references)))
    for start in range(0, len(queries), chunk):
        qry, qry_len = _pad(queries[start : start + chunk])
        # cost[q, r, i, j] = |qry[q, i] - ref[r, j]|^2
        cost = (
            (qry**2).sum(-1)[:, None, :, None]
            + (ref**2).sum(-1)[None, :, None, :]
            - 2.0 * np.einsum("qid,rjd->qrij", qry, ref)
        )
        cost = np.maximum(cost, 0.0)
        ti, tj = cost.shape[2], cost.shape[3]
        acc = np.full((cost.shape[0], cost.shape[1], ti + 1, tj + 1), np.inf)
        acc[:, :, 0, 0] = 0.0
        for i in range(1, ti + 1):
            for j in range(1, tj + 1):
                best = np.minimum(np.minimum(acc[:, :, i - 1, j], acc[:, :, i, j - 1]), acc[:, :, i - 1, j - 1])
                acc[:, :, i, j] = cost[:, :, i - 1, j - 1] + best
        out[start : start + len(qry)] = _take_ends(acc, qry_len, ref_len)
    return out


def _take_ends(acc: np.ndarray, qry_len: np.ndarray, ref_len: np.ndarray) -> np.ndarray:
    q = np.arange(acc.shape[0])[:, None]
    r = np.arange(acc.shape[1])[None, :]
    return acc[q, r, qry_len[:, None], ref_len[None, :]]


def euclidean_distances(queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> np.ndarray:
    """Squared Euclidean distance between series zero-padded to a common length -> ``[nq, nr]``."""
    n = max(max(len(s) for s in queries), max(len(s) for s in references))
    flat = lambda ss: np.stack([np.pad(s, ((0, n - len(s)), (0, 0))).ravel() for s in ss])  # noqa: E731
    a, b = flat(queries), flat(references)
    return np.maximum((a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def nearest_neighbor(
    train_x: Sequence[np.ndarray], train_y: np.ndarray, test_x: Sequence[np.ndarray], *, metric: str = "dtw"
) -> np.ndarray:
    """1-nearest-neighbour labels for variable-length series (``metric``: ``"dtw"`` or ``"euclidean"``)."""
    if metric == "dtw":
        dist = dtw_distances(test_x, train_x)
    elif metric == "euclidean":
        dist = euclidean_distances(test_x, train_x)
    else:
        raise ValueError(f"expected metric 'dtw' or 'euclidean', got {metric!r}")
    return np.asarray(train_y)[dist.argmin(axis=1)]


def tfidf_logreg(
    train_text: Sequence[str],
    train_y: np.ndarray,
    test_text: Sequence[str],
    *,
    ngram_range=(1, 2),
    Cs: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0),
    cv: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """TF-IDF (word 1-2-grams, sublinear tf, min_df 2) + L2 logistic regression -> test labels.

    The inverse regularisation ``C`` is chosen among ``Cs`` by ``cv``-fold cross-validation on
    the training texts only (a single ``C`` is used as given when ``Cs`` has one value).
    """
    text = _sklearn("sklearn.feature_extraction.text")
    linear = _sklearn("sklearn.linear_model")
    vec = text.TfidfVectorizer(ngram_range=ngram_range, sublinear_tf=True, min_df=2)
    x_train = vec.fit_transform(train_text)
    train_y = np.asarray(train_y)
    best_c = float(Cs[0])
    if len(Cs) > 1:
        model_selection = _sklearn("sklearn.model_selection")
        folds = model_selection.StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        scores = [
            model_selection.cross_val_score(
                linear.LogisticRegression(C=float(c), solver="liblinear"), x_train, train_y, cv=folds
            ).mean()
            for c in Cs
        ]
        best_c = float(Cs[int(np.argmax(scores))])
    clf = linear.LogisticRegression(C=best_c, solver="liblinear")
    clf.fit(x_train, train_y)
    return clf.predict(vec.transform(test_text))


def sklearn_classifier(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    """A scikit-learn classifier on flattened features: ``"svc"`` (RBF SVC) or ``"logreg"``."""
    x_train = np.asarray(train_x).reshape(len(train_x), -1)
    x_test = np.asarray(test_x).reshape(len(test_x), -1)
    if name == "svc":
        clf = _sklearn("sklearn.svm").SVC(C=10.0, gamma="scale")
    elif name == "logreg":
        clf = _sklearn("sklearn.linear_model").LogisticRegression(C=1.0, max_iter=300)
    else:
        raise ValueError(f"expected classifier 'svc' or 'logreg', got {name!r}")
    clf.fit(x_train, np.asarray(train_y))
    return clf.predict(x_test)


# --------------------------------------------------------------------------- character n-grams
class NGramModel(NamedTuple):
    """Counts of an order-``n`` character model, one sorted table per order.

    ``keys[k]`` are the sorted codes of the (context of ``k`` symbols, next symbol) pairs seen in
    training (code = base-``vocab`` number of the ``k+1`` symbols), ``counts[k]`` their counts
    (raw counts at the top order, continuation counts below it for Kneser-Ney);
    ``ctx_keys[k]``/``ctx_counts[k]``/``ctx_types[k]`` the contexts, their total count and the
    number of distinct symbols that follow them.
    """

    order: int
    vocab: int
    smoothing: str
    discount: float
    keys: tuple
    counts: tuple
    ctx_keys: tuple
    ctx_counts: tuple
    ctx_types: tuple
    unigram: np.ndarray  # [vocab] smoothed order-0 distribution


def _codes(ids: np.ndarray, k: int, vocab: int) -> np.ndarray:
    """Code of ``ids[i-k : i+1]`` for each ``i >= k`` -> ``[len(ids) - k]`` int64."""
    n = len(ids) - k
    code = np.zeros(n, np.int64)
    for j in range(k + 1):
        code = code * vocab + ids[j : j + n]
    return code


def fit_ngram(
    ids: np.ndarray, vocab: int, *, order: int = 5, smoothing: str = "witten_bell", discount: float = 0.75
) -> NGramModel:
    """Count an interpolated character n-gram model.

    Args:
      ids: ``[n]`` training symbol ids in ``[0, vocab)``.
      vocab: number of symbols.
      order: n (context length ``n - 1``).
      smoothing: ``"witten_bell"`` (interpolated) or ``"kneser_ney"`` (interpolated, absolute
        discount ``discount``, continuation counts for the lower orders).
    """
    ids = np.asarray(ids, np.int64)
    if smoothing not in ("witten_bell", "kneser_ney"):
        raise ValueError(f"expected smoothing 'witten_bell' or 'kneser_ney', got {smoothing!r}")
    if order < 1 or len(ids) <= order:
        raise ValueError(f"expected 1 <= order < len(ids), got order={order}, len(ids)={len(ids)}")
    if float(vocab) ** order >= 2.0**62:
        raise ValueError(f"expected vocab**order < 2**62 for int64 codes, got vocab={vocab}, order={order}")
    keys, counts, ctx_keys, ctx_counts, ctx_types = [], [], [], [], []
    raw = [np.unique(_codes(ids, k, vocab), return_counts=True) for k in range(order)]
    for k in range(order):
        key, cnt = raw[k]
        if smoothing == "kneser_ney" and k < order - 1:
            # continuation count: number of distinct symbols seen before (context, symbol)
            longer = raw[k + 1][0] % (vocab ** (k + 1))
            key, cnt = np.unique(longer, return_counts=True)
        keys.append(key)
        counts.append(cnt.astype(np.float64))
        ctx = key // vocab
        ck, start = np.unique(ctx, return_index=True)
        ctx_keys.append(ck)
        ctx_counts.append(np.add.reduceat(cnt.astype(np.float64), start))
        ctx_types.append(np.diff(np.append(start, len(ctx))).astype(np.float64))
    uni = np.bincount(ids, minlength=vocab).astype(np.float64)
    unigram = (uni + 1.0) / (uni.sum() + vocab)
    return NGramModel(
        order,
        vocab,
        smoothing,
        discount,
        tuple(keys),
        tuple(counts),
        tuple(ctx_keys),
        tuple(ctx_counts),
        tuple(ctx_types),
        unigram,
    )


def _lookup(table_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(table_keys, query)
    pos = np.minimum(pos, len(table_keys) - 1)
    return np.where(table_keys[pos] == query, values[pos], 0.0)


def ngram_log_probs(model: NGramModel, ids: np.ndarray) -> np.ndarray:
    """Natural-log probability of each symbol of ``ids: [n]`` given up to ``order - 1`` previous ones -> ``[n]``."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= model.vocab):
        raise ValueError(f"expected ids in [0, {model.vocab}), got range [{ids.min()}, {ids.max()}]")
    prob = model.unigram[ids]
    for k in range(min(model.order, len(ids))):
        code = _codes(ids, k, model.vocab)  # positions k..n-1
        ctx = code // model.vocab
        c_hc = _lookup(model.keys[k], model.counts[k], code)
        c_h = _lookup(model.ctx_keys[k], model.ctx_counts[k], ctx)
        t_h = _lookup(model.ctx_keys[k], model.ctx_types[k], ctx)
        lower = prob[k:]
        seen = c_h > 0
        safe = np.where(seen, c_h, 1.0)
        if model.smoothing == "witten_bell":
            p = (c_hc + t_h * lower) / (safe + t_h)
        else:
            d = model.discount
            p = np.maximum(c_hc - d, 0.0) / safe + d * t_h / safe * lower
        prob = np.concatenate([prob[:k], np.where(seen, p, lower)])
    return np.log(prob)


def ngram_bits_per_char(model: NGramModel, ids: np.ndarray) -> float:
    """Mean bits per symbol of ``ids`` under ``model``."""
    return float(-ngram_log_probs(model, ids).mean() / np.log(2.0))
