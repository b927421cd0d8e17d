"""lstm_jax.tasks.stocks against pandas computations from the raw CSV; experiments/stocks.py --quick."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from lstm_jax.tasks import cli, results
from lstm_jax.tasks import stocks as S

ROOT = Path(__file__).resolve().parents[1]


def test_test_returns_are_the_last_fifth_of_log_adj_close_differences():
    frame = pd.read_csv(S.stocks_csv())
    data = S.stock_data(S.load_prices(("IBM", "GOOG")), window=10)
    for ticker in ("IBM", "GOOG"):
        rows = frame[frame["Ticker"] == ticker].sort_values("Date")
        r = np.log(rows["Adj Close"]).diff().dropna().to_numpy()
        n_test = round(0.2 * len(r))
        np.testing.assert_allclose(data.returns[ticker], r[-n_test:], rtol=1e-12)
        assert str(data.dates[ticker][-1]) == rows["Date"].iloc[-1]
        # the scaled target of a test window is its next-day return, the window the days before
        np.testing.assert_allclose(data.test[ticker]["y"][:, 0] * data.y_std, r[-n_test:], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(np.sign(data.test[ticker]["x"][1:, -1, 0]), np.sign(r[-n_test:-1]))
    assert data.train["x"].shape[1:] == (10, 2) and len(data.train["x"]) == len(data.train["y"])


def test_score_ticker_against_direct_formulas():
    rng = np.random.default_rng(0)
    returns = rng.normal(0.0005, 0.01, 300)
    pred = 0.3 * returns + rng.normal(0, 0.01, 300)
    sc = S.score_ticker(pred, returns)
    d = (pred - returns) ** 2 - returns**2
    n = len(d)
    dm = d.mean() / np.sqrt(d.var() / n) * np.sqrt((n - 1) / n)
    np.testing.assert_allclose(sc["dm_statistic"], dm, rtol=1e-10)
    np.testing.assert_allclose(sc["dm_p_value"], 2 * st.t.sf(abs(dm), n - 1), rtol=1e-10)
    np.testing.assert_allclose(sc["rmse_random_walk"], np.sqrt(np.mean(returns**2)))
    assert sc["direction_baseline"] == max(np.mean(returns > 0), np.mean(returns < 0))
    assert sc["direction_accuracy"] == np.mean((pred > 0) == (returns > 0))


def test_stocks_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("exp_stocks", ROOT / "experiments" / "stocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with cli.fast_compile():
        module.main(["--quick", "--no-progress", "--tickers", "IBM,MSFT", "--out", str(tmp_path)])
    data = results.load_metrics(tmp_path / "metrics.json")
    models = {(r["dataset"], r["model"], r["metric"]) for r in data["results"]}
    assert {("IBM", "random_walk", "rmse"), ("MSFT", "lstm", "rmse"), ("IBM", "lstm", "dm_p_value")} <= models
    assert all(np.isfinite(r["value"]) for r in data["results"])
    assert (tmp_path / "stocks.png").stat().st_size > 1000 and any((tmp_path / "checkpoint").iterdir())
    assert "random walk" in capsys.readouterr().out
