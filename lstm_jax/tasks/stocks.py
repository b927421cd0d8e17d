"""Next-day stock returns: an honest test of whether an LSTM beats the random walk.

Data: the daily prices of AAPL, GOOG, IBM and MSFT 2000-2013 shipped in ``bokeh-sampledata``
(``stocks.csv.gz``, read directly). The target is the next day's log return of the adjusted
close; inputs are the past ``w`` days of (log return, log volume relative to its trailing
mean), standardised per ticker with training statistics. One ensemble is trained on the
training windows of all tickers together and scored per ticker against the zero-return
random walk (RMSE, Diebold-Mariano test of the squared errors) and against the better of
"always up" / "always down" (direction accuracy).

Shapes: ``s`` windows, ``w`` days per window, ``2`` features.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lstm_jax.datasets import DatasetError

__all__ = ["TICKERS", "stocks_csv", "load_prices", "StockData", "stock_data", "score_ticker"]

TICKERS = ("AAPL", "GOOG", "IBM", "MSFT")


def stocks_csv() -> Path:
    """Path of ``bokeh_sampledata/_data/stocks.csv.gz`` (``pip install bokeh-sampledata``)."""
    spec = importlib.util.find_spec("bokeh_sampledata")
    if spec is None or spec.origin is None:
        raise DatasetError(
            "expected the package bokeh-sampledata to be installed (pip install bokeh-sampledata), got none"
        )
    path = Path(spec.origin).parent / "_data" / "stocks.csv.gz"
    if not path.is_file():
        raise DatasetError(f"expected {path} in bokeh-sampledata, got no such file")
    return path


def load_prices(tickers=TICKERS) -> dict:
    """``{ticker: (dates [n] datetime64[D], adj_close [n], volume [n])}`` in date order."""
    import pandas as pd

    frame = pd.read_csv(stocks_csv())
    out = {}
    for ticker in tickers:
        rows = frame[frame["Ticker"] == ticker].sort_values("Date")
        if len(rows) < 300:
            raise DatasetError(
                f"expected a ticker among {sorted(set(frame['Ticker']))} with >= 300 days, got {ticker!r}"
            )
        dates = np.asarray(pd.to_datetime(rows["Date"]).values, dtype="datetime64[D]")
        out[ticker] = (dates, rows["Adj Close"].to_numpy(np.float64), rows["Volume"].to_numpy(np.float64))
    return out


class StockData(NamedTuple):
    """Windows of all tickers. ``train``/``val``: pooled ``{"x": [s, w, 2], "y": [s, 1]}`` (scaled);
    ``test``: ticker -> ``{"x", "y"}`` scaled; ``returns``: ticker -> ``[s]`` test log returns;
    ``dates``: ticker -> ``[s]`` test days; ``train_returns``: ticker -> training log returns."""

    train: dict
    val: dict
    test: dict
    returns: dict
    dates: dict
    train_returns: dict
    y_mean: float  # 0: returns are scaled by their pooled sd only, so 0 stays 0
    y_std: float


def _features(close: np.ndarray, volume: np.ndarray) -> tuple:
    """``[n-1, 2]`` (log return, log volume minus its trailing 20-day mean) and ``[n-1]`` returns."""
    r = np.diff(np.log(close))
    lv = np.log(np.maximum(volume[1:], 1.0))
    trailing = np.convolve(lv, np.ones(20) / 20, mode="full")[: len(lv)]
    trailing[:19] = np.cumsum(lv[:19]) / np.arange(1, 20)
    return np.stack([r, lv - trailing], axis=1), r


def stock_data(prices: dict, *, window: int = 20, test_frac: float = 0.2, val_frac: float = 0.1) -> StockData:
    """Chronological windows per ticker: the last ``test_frac`` of each ticker's days are its
    test split, the ``val_frac`` before them validation, the rest training."""
    from lstm_jax import data as data_lib

    parts: dict = {"train": [], "val": []}
    test, returns, dates, train_returns, sds = {}, {}, {}, {}, []
    for ticker, (day, close, volume) in prices.items():
        feats, r = _features(close, volume)
        n = len(r)
        n_test, n_val = round(test_frac * n), round(val_frac * n)
        train_end = n - n_test - n_val
        if train_end < window + 50:
            raise DatasetError(f"expected at least {window + 50} training days for {ticker}, got {train_end}")
        mean, sd = feats[:train_end].mean(0), feats[:train_end].std(0)
        mean[0] = 0.0  # keep a zero return at zero
        z = (feats - mean) / sd
        x, _ = data_lib.make_windows(z, window=window, target_cols=[0])
        y = r[window:]  # next-day log return of each window, original units
        target = np.arange(len(x)) + window
        for name, keep in (("train", target < train_end), ("val", (target >= train_end) & (target < n - n_test))):
            parts[name].append((x[keep], y[keep]))
        keep = target >= n - n_test
        test[ticker], returns[ticker], dates[ticker] = x[keep], y[keep], day[1:][target[keep]]
        train_returns[ticker] = r[:train_end]
        sds.append(r[:train_end].std())
    y_std = float(np.mean(sds))
    pooled = {
        name: {
            "x": np.concatenate([p[0] for p in ps]).astype(np.float32),
            "y": (np.concatenate([p[1] for p in ps]) / y_std)[:, None].astype(np.float32),
        }
        for name, ps in parts.items()
    }
    test_sets = {
        t: {"x": x.astype(np.float32), "y": (returns[t] / y_std)[:, None].astype(np.float32)} for t, x in test.items()
    }
    return StockData(pooled["train"], pooled["val"], test_sets, returns, dates, train_returns, 0.0, y_std)


def score_ticker(pred: np.ndarray, returns: np.ndarray) -> dict:
    """Scores of predicted next-day log returns ``pred: [s]`` against ``returns: [s]``.

    ``rmse`` of the prediction and of the zero-return random walk, their Diebold-Mariano test
    (HLN, squared errors, ``h = 1``), direction accuracy of ``sign(pred)`` and of the better (on
    the test days themselves, so an optimistic baseline) of always-up / always-down.
    """
    from lstm_jax import stats

    pred, returns = np.asarray(pred, np.float64), np.asarray(returns, np.float64)
    dm = stats.diebold_mariano((pred - returns) ** 2, returns**2, h=1)
    up, down = float(np.mean(returns > 0)), float(np.mean(returns < 0))
    return {
        "rmse": float(np.sqrt(np.mean((pred - returns) ** 2))),
        "rmse_random_walk": float(np.sqrt(np.mean(returns**2))),
        "dm_statistic": dm.statistic,
        "dm_p_value": dm.p_value,
        "direction_accuracy": float(np.mean(np.sign(pred) == np.sign(returns))),
        "direction_baseline": max(up, down),
        "direction_baseline_name": "always_up" if up >= down else "always_down",
    }
