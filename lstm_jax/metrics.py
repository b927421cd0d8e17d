"""Scores of probabilistic forecasts and of anomaly detectors (plain numpy).

Forecasts: ``crps_gaussian`` (closed form), ``crps_samples`` (from draws of the predictive
distribution), ``quantiles_to_samples`` (a quantile forecast as equally spaced draws, for
``crps_samples``), ``pinball_loss``, ``gaussian_interval`` / ``sample_interval``,
``interval_coverage`` / ``interval_width``.

Anomaly scores (higher = more anomalous) against 0/1 labels: ``roc_auc``,
``average_precision`` (scikit-learn's step-wise definition), ``best_f1`` (over every
threshold), ``top1_hit`` (the UCR/KDD-2021 rule: the highest score lies in the labelled region,
give or take a tolerance).

Shapes: ``...`` any batch shape shared by forecasts and targets; ``m`` draws; ``q`` levels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "crps_gaussian",
    "crps_samples",
    "quantiles_to_samples",
    "pinball_loss",
    "gaussian_interval",
    "sample_interval",
    "interval_coverage",
    "interval_width",
    "roc_auc",
    "average_precision",
    "precision_recall",
    "best_f1",
    "top1_hit",
]


def crps_gaussian(mu, sigma, y) -> np.ndarray:
    """CRPS of ``N(mu, sigma^2)`` at ``y`` (elementwise, broadcast; units of ``y``).

    ``CRPS = sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`` with ``z = (y - mu) / sigma``
    (Gneiting & Raftery 2007).
    """
    from scipy import stats as st

    mu, sigma, y = (np.asarray(v, np.float64) for v in (mu, sigma, y))
    if np.any(sigma <= 0):
        raise ValueError(f"expected sigma > 0 everywhere, got minimum {sigma.min()}")
    z = (y - mu) / sigma
    return sigma * (z * (2.0 * st.norm.cdf(z) - 1.0) + 2.0 * st.norm.pdf(z) - 1.0 / math.sqrt(math.pi))


def crps_samples(samples, y) -> np.ndarray:
    """CRPS of the empirical distribution of ``samples: [m, ...]`` at ``y: [...]`` -> ``[...]``.

    ``E|X - y| - E|X - X'| / 2`` over the ``m`` draws (the integral of
    ``(F_m(x) - 1{x >= y})^2`` for the empirical CDF ``F_m``), computed from the sorted draws.
    """
    x = np.sort(np.asarray(samples, np.float64), axis=0)
    y = np.asarray(y, np.float64)
    if x.ndim < 1 or x.shape[1:] != y.shape:
        raise ValueError(f"expected samples [m, *y.shape] = [m, *{y.shape}], got {x.shape}")
    m = x.shape[0]
    term1 = np.abs(x - y[None]).mean(0)
    weights = (2.0 * np.arange(1, m + 1) - m - 1).reshape((m,) + (1,) * y.ndim)
    spread = 2.0 * (weights * x).sum(0) / (m * m)  # E|X - X'|
    return term1 - 0.5 * spread


def quantiles_to_samples(quantiles, levels, m: int = 99) -> np.ndarray:
    """A quantile forecast ``[..., q]`` at ``levels: [q]`` as ``m`` draws ``[m, ...]``.

    The draws are the linearly interpolated quantile function at ``(i - 1/2) / m``, flat beyond
    the outermost levels; quantiles are sorted first (crossing quantiles rearranged).
    """
    levels = np.asarray(levels, np.float64)
    q = np.sort(np.asarray(quantiles, np.float64), axis=-1)
    if levels.ndim != 1 or q.shape[-1] != len(levels) or np.any(np.diff(levels) <= 0):
        raise ValueError(f"expected increasing levels [q] matching quantiles [..., q], got {levels} and {q.shape}")
    u = np.clip((np.arange(m) + 0.5) / m, levels[0], levels[-1])
    hi = np.clip(np.searchsorted(levels, u, side="right"), 1, len(levels) - 1)
    lo = hi - 1
    w = np.where(levels[hi] > levels[lo], (u - levels[lo]) / (levels[hi] - levels[lo]), 0.0)
    draws = q[..., lo] * (1.0 - w) + q[..., hi] * w  # [..., m]
    return np.moveaxis(draws, -1, 0)


def pinball_loss(pred, y, level: float) -> np.ndarray:
    """Quantile (pinball) loss of ``pred`` as the ``level`` quantile of ``y`` (elementwise).

    ``max(level (y - pred), (level - 1)(y - pred))``; its mean over levels, times 2, tends to
    the CRPS as the levels fill (0, 1).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"expected 0 < level < 1, got {level!r}")
    diff = np.asarray(y, np.float64) - np.asarray(pred, np.float64)
    return np.maximum(level * diff, (level - 1.0) * diff)


def gaussian_interval(mu, sigma, level: float) -> tuple:
    """Central ``level`` interval ``(low, high)`` of ``N(mu, sigma^2)``."""
    from scipy import stats as st

    z = st.norm.ppf(0.5 + level / 2.0)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    return mu - z * sigma, mu + z * sigma


def sample_interval(samples, level: float) -> tuple:
    """Central ``level`` interval ``(low, high)`` of ``samples: [m, ...]`` (empirical quantiles)."""
    lo, hi = np.quantile(np.asarray(samples, np.float64), [0.5 - level / 2.0, 0.5 + level / 2.0], axis=0)
    return lo, hi


def interval_coverage(low, high, y) -> float:
    """Fraction of ``y`` inside ``[low, high]``."""
    y = np.asarray(y)
    return float(np.mean((np.asarray(low) <= y) & (y <= np.asarray(high))))


def interval_width(low, high) -> float:
    """Mean width ``high - low``."""
    return float(np.mean(np.asarray(high, np.float64) - np.asarray(low, np.float64)))


# --------------------------------------------------------------------------- anomaly scores
def _scores_labels(scores, labels) -> tuple:
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"expected scores and labels of the same length, got {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("expected labels of 0/1 (or booleans), got other values")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError(f"expected both positive and negative labels, got {int(y.sum())} positives of {len(y)}")
    if not np.isfinite(s).all():
        raise ValueError("expected finite scores, got NaN or Inf")
    return s, y


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2."""
    from scipy import stats as st

    s, y = _scores_labels(scores, labels)
    ranks = st.rankdata(s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall(scores, labels) -> tuple:
    """``(precision, recall, thresholds)`` at every distinct score, high thresholds first."""
    s, y = _scores_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp / (tp + fp), tp / y.sum(), s[last]


def average_precision(scores, labels) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds (scikit-learn's definition)."""
    precision, recall, _ = precision_recall(scores, labels)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(scores, labels) -> tuple:
    """``(f1, threshold)``: the best F1 of ``score >= threshold`` over every threshold."""
    precision, recall, thresholds = precision_recall(scores, labels)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    k = int(np.argmax(f1))
    return float(f1[k]), float(thresholds[k])


def top1_hit(scores, labels, *, tolerance: int = 100) -> bool:
    """Whether the position of the highest score is within ``tolerance`` points of a labelled
    point (the UCR anomaly archive / KDD Cup 2021 rule uses 100)."""
    s, y = _scores_labels(scores, labels)
    at = int(np.argmax(s))
    positions = np.nonzero(y)[0]
    return bool(np.min(np.abs(positions - at)) <= tolerance)
