"""lstm_jax.tasks.probabilistic against scipy densities, direct numpy computations and loops;
``experiments/weather_forecast.py --horizon/--likelihood`` end to end in --quick mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as st

from lstm_jax import datasets, metrics
from lstm_jax.tasks import cli, probabilistic, results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_compile():
    with cli.fast_compile():
        yield


def _table(n=200, seed=0):
    dates = np.arange(np.datetime64("2001-01-01"), np.datetime64("2001-01-01") + n)
    values = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    observed = np.ones(n, bool)
    observed[50] = False
    return datasets.DailyTable(dates, values, ("a", "b"), "a", observed, "toy", "")


def test_horizon_data_windows_match_a_loop():
    table = _table()
    w, h = 4, 3
    d = probabilistic.horizon_data(table, window=w, horizon=h, test_days=20, val_days=20)
    n, train_end = 200, 160
    expected = [r for r in range(w, train_end - h + 1) if not (r - w <= 50 <= r + h - 1)]
    assert list(d.dates["train"]) == [table.dates[r] for r in expected]
    for k, r in enumerate(expected[:3] + expected[-2:]):
        k = expected.index(r)
        np.testing.assert_allclose(d.raw["train"]["y"][k], table.values[r : r + h, 0], rtol=1e-6)
        np.testing.assert_allclose(d.raw["train"]["x"][k][:, :2], table.values[r - w : r], rtol=1e-6)
    # every test target day lies inside the test span, the last window ends on the last day
    assert d.dates["test"][0] == table.dates[n - 20] and d.dates["test"][-1] == table.dates[n - h]
    np.testing.assert_allclose(d.test["y"] * d.y_std + d.y_mean, d.raw["test"]["y"], atol=1e-4)
    with pytest.raises(datasets.DatasetError, match="horizon"):
        probabilistic.horizon_data(table, window=w, horizon=30, test_days=20, val_days=20)


def test_member_losses_are_the_negative_log_densities_and_the_pinball_sum():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(5, 3, 3)).astype(np.float32)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    mu, s, nu = out[..., 0], softplus(out[..., 1]) + 1e-3, 2 + softplus(out[..., 2])
    got = probabilistic.member_loss(jnp.asarray(out[..., :2]), jnp.asarray(y), "gaussian")
    np.testing.assert_allclose(got, -st.norm.logpdf(y, mu, s).mean(), rtol=1e-5)
    got = probabilistic.member_loss(jnp.asarray(out), jnp.asarray(y), "student_t")
    np.testing.assert_allclose(got, -st.t.logpdf(y, nu, mu, s).mean(), rtol=1e-5)
    levels = (0.1, 0.5, 0.9)
    got = probabilistic.member_loss(jnp.asarray(out), jnp.asarray(y), "quantile", levels)
    ref = sum(metrics.pinball_loss(out[..., j], y, lv) for j, lv in enumerate(levels)).mean()
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(
        probabilistic.member_loss(jnp.asarray(out), jnp.asarray(y), "point"), np.mean((mu - y) ** 2), rtol=1e-5
    )
    with pytest.raises(ValueError, match="likelihood"):
        probabilistic.n_outputs("laplace")


def test_combined_members_are_the_mixture_moments_and_averaged_quantiles():
    rng = np.random.default_rng(1)
    out = rng.normal(size=(4, 6, 2, 2))  # E=4 members, 6 windows, H=2
    pred = probabilistic.combine_members(out, "gaussian", y_mean=10.0, y_std=2.0)
    mus = out[..., 0] * 2 + 10
    sds = (np.log1p(np.exp(out[..., 1])) + 1e-3) * 2
    # mixture mean and variance, by the law of total variance written out
    np.testing.assert_allclose(pred.mu, mus.mean(0), rtol=1e-6)
    np.testing.assert_allclose(pred.sigma**2, (sds**2 + mus**2).mean(0) - mus.mean(0) ** 2, rtol=1e-5)
    levels = (0.1, 0.5, 0.9)
    qout = rng.normal(size=(3, 6, 2, 3))
    q = probabilistic.combine_members(qout, "quantile", y_mean=0.0, y_std=1.0, levels=levels, m=99)
    np.testing.assert_allclose(q.median, np.sort(qout, -1).mean(0)[..., 1], atol=1e-9)
    lo, hi = q.intervals[0.8]
    np.testing.assert_allclose(lo, np.sort(qout, -1).mean(0)[..., 0], atol=0.02)
    # student-t draws from one member with huge df approach its Gaussian
    tout = np.zeros((1, 2, 1, 3))
    tout[..., 2] = 1e4
    t = probabilistic.combine_members(tout, "student_t", y_mean=0.0, y_std=1.0, m=20000)
    np.testing.assert_allclose(t.intervals[0.8][1], st.norm.ppf(0.9) * (np.log(2) + 1e-3), rtol=0.05)


def test_baselines_are_gaussians_with_their_residual_sd():
    d = probabilistic.horizon_data(_table(300, seed=2), window=3, horizon=2, test_days=40, val_days=30)
    base = probabilistic.horizon_baselines(d)
    last = d.raw["test"]["x"][:, -1, 0]
    np.testing.assert_allclose(base["persistence"].median, np.stack([last, last], 1))
    fit_x = np.concatenate([d.raw["train"]["x"], d.raw["val"]["x"]])
    fit_y = np.concatenate([d.raw["train"]["y"], d.raw["val"]["y"]])
    np.testing.assert_allclose(base["persistence"].sigma[0], np.std(fit_y - fit_x[:, -1:, 0], axis=0), rtol=1e-6)
    y = d.raw["test"]["y"]
    sc = probabilistic.score_predictive(base["linear_ar"], y)
    p = base["linear_ar"]
    np.testing.assert_allclose(sc["crps"], metrics.crps_gaussian(p.mu, p.sigma, y).mean(0), rtol=1e-10)
    np.testing.assert_allclose(sc["rmse"], np.sqrt(((p.mu - y) ** 2).mean(0)), rtol=1e-10)
    inside = (p.mu - 1.2815515655 * p.sigma <= y) & (y <= p.mu + 1.2815515655 * p.sigma)
    np.testing.assert_allclose(sc["coverage_80"], inside.mean(0), atol=1e-12)


def _script():
    spec = importlib.util.spec_from_file_location("exp_weather_prob", ROOT / "experiments" / "weather_forecast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weather_forecast_quick_quantile_on_a_user_csv(tmp_path, capsys):
    import pandas as pd

    n = 400
    t = np.arange(n)
    pd.DataFrame(
        {
            "when": pd.date_range("2000-01-01", periods=n).astype(str),
            "high": 20 + 8 * np.sin(2 * np.pi * t / 365) + np.random.default_rng(0).normal(size=n),
        }
    ).to_csv(tmp_path / "w.csv", index=False)
    args = ["--quick", "--no-progress", "--csv", str(tmp_path / "w.csv"), "--target", "high", "--date-col", "when"]
    out = tmp_path / "out"
    _script().main(args + ["--horizon", "3", "--likelihood", "quantile", "--highway", "--residual", "--out", str(out)])
    data = results.load_metrics(out / "metrics.json")
    cov = [r["value"] for r in data["results"] if r["model"] == "lstm" and r["metric"] == "coverage_95"]
    assert len(cov) == 4 and all(0.0 <= c <= 1.0 for c in cov)
    rows = [r for r in data["results"] if r["metric"] == "crps" and r["horizon"] != "mean"]
    assert {r["model"] for r in rows} == {"persistence", "climatology", "linear_ar", "lstm"}
    assert sorted({r["horizon"] for r in rows}) == [1, 2, 3]
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in rows)
    assert len(data["dm_crps"]) == 3 and (out / "forecast.png").stat().st_size > 1000
    assert any((out / "checkpoint").iterdir())
    assert "CRPS by horizon" in capsys.readouterr().out
    assert cli.run_main(_script().main, args + ["--horizon", "0"]) == 2


def test_pooled_residual_ensemble_is_the_plain_and_the_anchored_ensembles_combined():
    d = probabilistic.horizon_data(_table(300, seed=3), window=4, horizon=2, test_days=40, val_days=30)
    kw = dict(dataset="toy", unit="", cell="lstm", likelihood="quantile", ensemble=2, seed=5, highway=True)
    kw.update(hidden=4, epochs=2, batch_size=32, refit=False, progress=False)
    preds, pooled, _ = probabilistic.probabilistic_experiment(results.Results("t", {}), d, pool_residual=True, **kw)
    # by hand: the two ensembles on their own (plain with seed 5, anchored with seed 6), members stacked
    kw.pop("seed")
    _, plain, _ = probabilistic.probabilistic_experiment(results.Results("t", {}), d, seed=5, **kw)
    _, anchored, _ = probabilistic.probabilistic_experiment(results.Results("t", {}), d, seed=6, residual=True, **kw)
    p = probabilistic.n_outputs("quantile")
    heads = [
        probabilistic.predict_members(f.apply, f.params, d.test["x"], horizon=2, p=p, likelihood="quantile", residual=r)
        for f, r in ((plain, False), (anchored, True))
    ]
    ref = probabilistic.combine_members(np.concatenate(heads), "quantile", y_mean=d.y_mean, y_std=d.y_std, seed=5)
    np.testing.assert_allclose(preds["lstm"].samples, ref.samples, rtol=1e-5, atol=1e-5)
    assert not np.allclose(heads[0], heads[1])  # the anchored members differ from the plain ones
    assert pooled.steps == plain.steps + anchored.steps and len(pooled.params) == 2
    with pytest.raises(cli.UsageError, match="expected --pool-residual"):
        _script().run(_script().parse(["--pool-residual", "--quick"]))
