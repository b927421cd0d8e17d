"""Probabilistic multi-horizon forecasting: the next ``H`` days at once, as a distribution.

An encoder (the recurrent ``SeqModel`` of ``lstm_jax.tasks.forecast``) reads the past
``w`` days and its head emits, for each of the ``H`` future days directly (direct
multi-output, not autoregressive), the parameters of the likelihood:

* ``point``: the value (squared error); ``gaussian``: mean and scale (Gaussian NLL);
* ``student_t``: mean, scale and degrees of freedom (> 2) (Student-t NLL);
* ``quantile``: the quantiles at ``levels`` (pinball loss, summed over levels).

Direct rather than DeepAR-style autoregressive sampling because the inputs are several
weather columns of which only the target would be forecast: feeding samples back would need
the other columns' future too (or a model of them), and a direct head has no train/test
mismatch between teacher-forced inputs and its own samples. Members of the vmapped ensemble
are combined into one predictive distribution: Gaussians by moment matching the mixture,
Student-t by sampling the mixture, quantiles by averaging members' quantiles.

Shapes: ``s`` windows, ``w`` past days, ``f`` features, ``H`` horizon, ``P`` outputs per day,
``E`` members, ``m`` draws.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import metrics as M
from lstm_jax.datasets import DatasetError
from lstm_jax.tasks.seqmodel import ensemble_apply, predict_batched

__all__ = [
    "LIKELIHOODS",
    "DEFAULT_LEVELS",
    "HorizonData",
    "horizon_data",
    "HighwayMember",
    "with_highway",
    "n_outputs",
    "member_loss",
    "anchor",
    "make_prob_loss",
    "predict_members",
    "Predictive",
    "combine_members",
    "gaussian_predictive",
    "horizon_baselines",
    "score_predictive",
    "probabilistic_experiment",
]

LIKELIHOODS = ("point", "gaussian", "student_t", "quantile")
# pinball levels of the quantile head: the 80 % and 95 % interval ends and the median included
DEFAULT_LEVELS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975)
_MIN_SCALE = 1e-3


class HorizonData(NamedTuple):
    """Windows for ``H``-day forecasts, split chronologically (all ``H`` targets inside a split).

    ``train``/``val``/``test``: ``{"x": [s, w, f] scaled, "y": [s, H] scaled}``; ``raw``: split ->
    ``{"x": [s, w, f], "y": [s, H]}`` in original units; ``dates``: split -> ``[s]`` first target day.
    """

    train: dict
    val: dict
    test: dict
    raw: dict
    dates: dict
    feature_names: tuple
    y_mean: float
    y_std: float
    horizon: int


def horizon_data(table, *, window: int, horizon: int, test_days: int, val_days: int) -> HorizonData:
    """Windows of a ``DailyTable`` whose targets are the next ``horizon`` days of its target.

    Features as in ``forecast.forecast_data`` (every column plus day-of-year sin/cos, scaled with
    training statistics). A window belongs to a split when all its target days do; windows
    touching an unobserved day are dropped.
    """
    from lstm_jax import data as data_lib
    from lstm_jax.tasks.forecast import day_of_year_features

    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise DatasetError(f"expected a horizon >= 1, got {horizon!r}")
    values = np.concatenate([np.asarray(table.values, np.float64), day_of_year_features(table.dates)], axis=1)
    names = tuple(table.columns) + ("doy_sin", "doy_cos")
    n, t_idx = len(values), table.target_index
    train_end = n - test_days - val_days
    if test_days < horizon or val_days < horizon or window < 1 or train_end < window + horizon + 30:
        raise DatasetError(
            f"expected test and val spans >= horizon {horizon} and at least {window + horizon + 30} training days, "
            f"got {test_days} / {val_days} of {n} days"
        )
    scaler = data_lib.fit_scaler(values[:train_end])
    z = data_lib.scale(scaler, values)
    x, y = data_lib.make_windows(z, window=window, horizon=horizon, target_cols=[t_idx], multi_step=True)
    x_raw, y_raw = data_lib.make_windows(values, window=window, horizon=horizon, target_cols=[t_idx], multi_step=True)
    first = np.arange(len(x)) + window  # row of the first target day
    last = first + horizon - 1
    bad = np.convolve((~np.asarray(table.observed, bool)).astype(np.int64), np.ones(window + horizon, np.int64))
    ok = bad[last] == 0  # no unobserved day among rows first - window .. last
    bounds = {"train": (0, train_end), "val": (train_end, n - test_days), "test": (n - test_days, n)}
    splits, raw, dates = {}, {}, {}
    for name, (lo, hi) in bounds.items():
        keep = ok & (first >= lo) & (last < hi)
        if not keep.any():
            raise DatasetError(f"expected at least one fully observed {name} window, got none")
        splits[name] = {"x": x[keep].astype(np.float32), "y": y[keep, :, 0].astype(np.float32)}
        raw[name] = {"x": x_raw[keep], "y": y_raw[keep, :, 0]}
        dates[name] = np.asarray(table.dates)[first[keep]]
    mean, std = float(scaler.mean[t_idx]), float(scaler.scale[t_idx])
    return HorizonData(splits["train"], splits["val"], splits["test"], raw, dates, names, mean, std, int(horizon))


class HighwayMember(NamedTuple):
    """A forecaster plus a linear "highway" from the past target values to every output
    (LSTNet's autoregressive component, Lai et al. 2018): ``out = net(x) + x[:, :, 0] @ w``."""

    net: object  # the recurrent member (SeqModel)
    w: jax.Array  # [w, H*P], zeros at init


def with_highway(window: int, output_size: int):
    """``make_member`` for ``forecast.train_forecast_ensemble``: wrap a member's init and apply
    with a ``HighwayMember`` linear path over the last ``window`` target values."""

    def make_member(init_fn, apply):
        def init(key):
            return HighwayMember(init_fn(key), jnp.zeros((window, output_size), jnp.float32))

        def member_apply(params, x, rng):
            return apply(params.net, x, rng) + x[:, :, 0] @ params.w

        return init, member_apply

    return make_member


def n_outputs(likelihood: str, n_levels: int = len(DEFAULT_LEVELS)) -> int:
    """Head outputs per future day ``P`` for ``likelihood``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"expected likelihood in {LIKELIHOODS}, got {likelihood!r}")
    return {"point": 1, "gaussian": 2, "student_t": 3, "quantile": n_levels}[likelihood]


def _scale(raw):
    return jax.nn.softplus(raw) + _MIN_SCALE


def _df(raw):
    return 2.0 + jax.nn.softplus(raw)


def member_loss(out, y, likelihood: str, levels=DEFAULT_LEVELS):
    """Mean loss of one member's head ``out: [b, H, P]`` against ``y: [b, H]`` (scaled units)."""
    if likelihood == "point":
        return jnp.mean(jnp.square(out[..., 0] - y))
    if likelihood == "gaussian":
        mu, sigma = out[..., 0], _scale(out[..., 1])
        return jnp.mean(0.5 * jnp.square((y - mu) / sigma) + jnp.log(sigma) + 0.5 * jnp.log(2 * jnp.pi))
    if likelihood == "student_t":
        mu, s, nu = out[..., 0], _scale(out[..., 1]), _df(out[..., 2])
        z2 = jnp.square((y - mu) / s)
        logp = (
            jax.lax.lgamma((nu + 1) / 2)
            - jax.lax.lgamma(nu / 2)
            - 0.5 * jnp.log(nu * jnp.pi)
            - jnp.log(s)
            - (nu + 1) / 2 * jnp.log1p(z2 / nu)
        )
        return -jnp.mean(logp)
    if likelihood == "quantile":
        tau = jnp.asarray(levels, out.dtype).reshape((1,) * (out.ndim - 1) + (-1,))
        diff = y[..., None] - out
        return jnp.mean(jnp.sum(jnp.maximum(tau * diff, (tau - 1) * diff), axis=-1))
    raise ValueError(f"expected likelihood in {LIKELIHOODS}, got {likelihood!r}")


def anchor(out, last, likelihood: str):
    """Residual parametrisation: add the last observed (scaled) target ``last: [..., b]`` to the
    location outputs of ``out: [..., b, H, P]`` (every quantile; the mean otherwise)."""
    shift = last[..., None, None]
    if likelihood == "quantile":
        return out + shift
    return jnp.concatenate([out[..., :1] + shift, out[..., 1:]], axis=-1)


def make_prob_loss(apply_fn, *, horizon: int, likelihood: str, levels=DEFAULT_LEVELS, residual: bool = False):
    """``make_loss(apply) -> loss_fn(params [E, ...], batch {"x", "y": [b, H]}, rng)`` for
    ``forecast.train_forecast_ensemble``: the mean of the members' losses (each member its own
    gradient); metric ``ens_mse`` (MSE of the members' mean location). With ``residual`` the
    locations are changes from the last observed value (``anchor``)."""
    p = n_outputs(likelihood, len(levels))
    mid = int(np.argmin(np.abs(np.asarray(levels) - 0.5)))

    def loss_fn(params, batch, rng):
        out = ensemble_apply(apply_fn, params, batch["x"], rng=rng)  # [E, b, H*P]
        out = out.reshape(out.shape[:2] + (horizon, p))
        if residual:
            out = anchor(out, jnp.broadcast_to(batch["x"][:, -1, 0], out.shape[:2]), likelihood)
        losses = jax.vmap(lambda o: member_loss(o, batch["y"], likelihood, levels))(out)
        loc = out[..., mid] if likelihood == "quantile" else out[..., 0]
        return losses.mean(), {"ens_mse": jnp.mean(jnp.square(loc.mean(0) - batch["y"]))}

    return loss_fn


def predict_members(
    apply_fn, params, x: np.ndarray, *, horizon: int, p: int, likelihood: str = "point", residual: bool = False
) -> np.ndarray:
    """Every member's head on ``x: [s, w, f]`` -> ``[E, s, H, P]`` (scaled units, jitted once per
    call; ``residual``: locations anchored as in training)."""
    fn = jax.jit(lambda prm, b: jnp.moveaxis(ensemble_apply(apply_fn, prm, b["x"]), 0, 1))
    out = predict_batched(fn, params, {"x": x}, batch_size=512)  # [s, E, H*P]
    out = np.moveaxis(out, 1, 0).reshape(out.shape[1], out.shape[0], horizon, p)
    if residual:
        out = np.asarray(anchor(out, np.broadcast_to(np.asarray(x)[:, -1, 0], out.shape[:2]), likelihood))
    return out


class Predictive(NamedTuple):
    """A predictive distribution per window and horizon in original units: ``[s, H]`` arrays."""

    median: np.ndarray
    intervals: dict  # level (0.8, 0.95) -> (low [s, H], high [s, H])
    kind: str  # "gaussian" (mu, sigma) | "samples" | "point"
    mu: np.ndarray  # [s, H] (gaussian: mean; else the median)
    sigma: np.ndarray  # [s, H] (gaussian only; zeros otherwise)
    samples: np.ndarray  # [m, s, H] (samples only; empty otherwise)


def gaussian_predictive(mu, sigma) -> Predictive:
    """``Predictive`` of ``N(mu, sigma^2)`` per ``[s, H]`` entry."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    intervals = {lv: M.gaussian_interval(mu, sigma, lv) for lv in (0.8, 0.95)}
    return Predictive(mu, intervals, "gaussian", mu, sigma, np.zeros((0,) + mu.shape))


def _samples_predictive(samples) -> Predictive:
    med = np.median(samples, axis=0)
    intervals = {lv: M.sample_interval(samples, lv) for lv in (0.8, 0.95)}
    return Predictive(med, intervals, "samples", med, np.zeros_like(med), samples)


def combine_members(out, likelihood: str, *, y_mean: float, y_std: float, levels=DEFAULT_LEVELS, m: int = 400, seed=0):
    """The ensemble's predictive distribution from members' heads ``out: [E, s, H, P]``.

    Gaussian: the members' equal-weight mixture matched to one Gaussian (mean of means,
    variance = mean variance + variance of means). Student-t: ``m`` draws of the mixture.
    Quantile: members' quantiles averaged per level, as ``m`` equally spaced draws. Point:
    the members' mean (its intervals have width 0).
    """
    out = np.asarray(out, np.float64)
    if likelihood == "point":
        mean = out[..., 0].mean(0) * y_std + y_mean
        return Predictive(
            mean, {lv: (mean, mean) for lv in (0.8, 0.95)}, "point", mean, np.zeros_like(mean), out[:0, ..., 0]
        )
    if likelihood == "gaussian":
        mu = out[..., 0] * y_std + y_mean
        sd = np.asarray(_scale(out[..., 1])) * y_std
        var = (sd**2).mean(0) + mu.var(0)
        return gaussian_predictive(mu.mean(0), np.sqrt(var))
    if likelihood == "student_t":
        rng = np.random.default_rng(seed)
        e = out.shape[0]
        member = rng.integers(0, e, size=(m,) + out.shape[1:3])  # which member each draw comes from
        pick = lambda a: np.take_along_axis(a, member, axis=0)  # noqa: E731
        mu = pick(np.broadcast_to(out[..., 0], (e,) + out.shape[1:3]))
        s = pick(np.asarray(_scale(out[..., 1])))
        nu = pick(np.asarray(_df(out[..., 2])))
        draws = mu + s * rng.standard_t(nu)
        return _samples_predictive(draws * y_std + y_mean)
    if likelihood == "quantile":
        q = np.sort(out, axis=-1).mean(0) * y_std + y_mean  # [s, H, Q]
        return _samples_predictive(M.quantiles_to_samples(q, levels, m=min(m, 199)))
    raise ValueError(f"expected likelihood in {LIKELIHOODS}, got {likelihood!r}")


def horizon_baselines(data: HorizonData) -> dict:
    """Persistence, day-of-year climatology and direct linear AR (one ridge per horizon) for
    every test window and horizon, each as a Gaussian with its residual standard deviation on
    train + val at that horizon: ``{name: Predictive}``."""
    from lstm_jax import baselines as B

    raw = data.raw
    fit = {k: np.concatenate([raw["train"][k], raw["val"][k]]) for k in ("x", "y")}
    fit_dates = np.concatenate([data.dates["train"], data.dates["val"]])
    days = np.arange(data.horizon)
    clim = B.fit_climatology(fit_dates, fit["y"][:, 0])
    predictors = {
        "persistence": lambda x, d: np.repeat(B.persistence(x, 0)[:, None], data.horizon, axis=1),
        "climatology": lambda x, d: B.predict_climatology(clim, (d[:, None] + days).ravel()).reshape(len(d), -1),
    }
    ar = [B.fit_linear_ar(fit["x"], fit["y"][:, k]) for k in days]
    predictors["linear_ar"] = lambda x, d: np.stack([B.predict_linear_ar(a, x) for a in ar], axis=1)
    out = {}
    for name, predict in predictors.items():
        sigma = np.std(fit["y"] - predict(fit["x"], fit_dates), axis=0)  # [H]
        mu = predict(raw["test"]["x"], data.dates["test"])
        out[name] = gaussian_predictive(mu, np.broadcast_to(np.maximum(sigma, 1e-6), mu.shape))
    return out


def score_predictive(pred: Predictive, y: np.ndarray) -> dict:
    """Per-horizon scores of ``pred`` against ``y: [s, H]``: ``{metric: [H]}`` plus
    ``"crps_per_window": [s, H]``. The CRPS is closed form for a Gaussian, sample-based for
    draws, and the absolute error for a point forecast (a point mass)."""
    y = np.asarray(y, np.float64)
    err = pred.median - y
    if pred.kind == "gaussian":
        crps = M.crps_gaussian(pred.mu, pred.sigma, y)
    elif pred.kind == "samples":
        crps = M.crps_samples(pred.samples, y)
    else:
        crps = np.abs(err)
    scores = {"rmse": np.sqrt(np.mean(err**2, 0)), "mae": np.mean(np.abs(err), 0), "crps": crps.mean(0)}
    for lv, (lo, hi) in pred.intervals.items():
        tag = int(round(lv * 100))
        scores[f"coverage_{tag}"] = np.mean((lo <= y) & (y <= hi), axis=0)
        scores[f"width_{tag}"] = np.mean(hi - lo, axis=0)
    scores["crps_per_window"] = crps
    return scores


def _train_prob(data, cell, likelihood, levels, ensemble, seed, residual, highway, train_kwargs):
    from lstm_jax.tasks.forecast import train_forecast_ensemble

    h, p = data.horizon, n_outputs(likelihood, len(levels))
    loss = lambda apply: make_prob_loss(apply, horizon=h, likelihood=likelihood, levels=levels, residual=residual)  # noqa: E731
    return train_forecast_ensemble(
        data,
        cell=cell,
        ensemble=ensemble,
        seed=seed,
        output_size=h * p,
        make_loss=loss,
        monitor="val_loss",
        make_member=with_highway(data.train["x"].shape[1], h * p) if highway else None,
        **train_kwargs,
    )


def probabilistic_experiment(
    res,
    data: HorizonData,
    *,
    dataset: str,
    unit: str,
    cell: str,
    likelihood: str,
    levels=DEFAULT_LEVELS,
    ensemble: int = 8,
    seed: int = 0,
    residual: bool = False,
    highway: bool = False,
    pool_residual: bool = False,
    **train_kwargs,
) -> tuple:
    """Baselines and a trained probabilistic ensemble on the same test windows, rows added to ``res``.

    Rows per model and horizon ``k`` (extra field ``horizon=k``; first a row with
    ``horizon="mean"``, the mean over horizons): ``rmse``/``mae`` of the median, ``crps``,
    ``coverage_80``/``width_80``/``coverage_95``/``width_95``. ``res.extra["dm_crps"]``: per
    horizon, the Diebold-Mariano test (HLN, lag ``k - 1``) of the network's CRPS against the
    best baseline's. ``residual``: locations as changes from the last day (``anchor``);
    ``highway``: a linear path from the past target values to the outputs (``with_highway``).
    ``pool_residual``: two ensembles of ``ensemble`` members, one plain and one anchored
    (``residual``), trained alike (the second with seed ``seed + 1``) and combined as one
    ensemble of ``2 * ensemble`` members. ``train_kwargs`` go to
    ``forecast.train_forecast_ensemble``.

    Returns ``(predictives, forecaster, scores)``: ``{model: Predictive}``, the
    ``ForecastEnsemble`` (with ``pool_residual``: its ``params`` and ``best_params`` are the
    pairs ``(plain, anchored)``, its ``steps`` their sum) and ``{model: score_predictive(...)}``.
    """
    from lstm_jax import stats

    h, p = data.horizon, n_outputs(likelihood, len(levels))
    anchors = (False, True) if pool_residual else (bool(residual),)
    runs = [
        _train_prob(data, cell, likelihood, levels, ensemble, seed + j, anchored, highway, train_kwargs)
        for j, anchored in enumerate(anchors)
    ]
    heads = np.concatenate(
        [
            predict_members(f.apply, f.params, data.test["x"], horizon=h, p=p, likelihood=likelihood, residual=a)
            for f, a in zip(runs, anchors)
        ]
    )
    forecaster = runs[0]
    if pool_residual:
        forecaster = forecaster._replace(
            params=tuple(f.params for f in runs),
            best_params=tuple(f.best_params for f in runs),
            steps=sum(f.steps for f in runs),
        )
    preds = horizon_baselines(data)
    preds[cell] = combine_members(heads, likelihood, y_mean=data.y_mean, y_std=data.y_std, levels=levels, seed=seed)
    y = data.raw["test"]["y"]
    scores = {name: score_predictive(pred, y) for name, pred in preds.items()}
    for name, sc in scores.items():
        extra = {"likelihood": likelihood, "ensemble": len(heads)} if name == cell else {"likelihood": "gaussian"}
        for metric, values in sc.items():
            if metric == "crps_per_window" or (likelihood == "point" and name == cell and "_" in metric):
                continue
            res.add(dataset, name, metric, "test", float(np.mean(values)), unit=unit, horizon="mean", **extra)
            for k in range(h):
                res.add(dataset, name, metric, "test", float(values[k]), horizon=k + 1, **extra)
    for name, sc in scores.items():  # per test window, the CRPS averaged over the horizons
        crps = sc["crps_per_window"].mean(axis=1)
        res.add_examples(dataset, name, "crps", "test", crps, baseline=name != cell, paired_test="dm", dm_horizon=h)
    best = min((n for n in scores if n != cell), key=lambda n: scores[n]["crps"].mean())
    dm = []
    for k in range(h):
        r = stats.diebold_mariano(scores[cell]["crps_per_window"][:, k], scores[best]["crps_per_window"][:, k], h=k + 1)
        dm.append({"horizon": k + 1, "against": best, "statistic": r.statistic, "p_value": r.p_value})
    res.extra.update(dm_crps=dm, best_epoch=forecaster.best_epoch, history=forecaster.history)
    return preds, forecaster, scores
