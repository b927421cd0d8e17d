"""Daily forecasting: chronological next-day windows of a ``DailyTable``, the baselines
(persistence, day-of-year climatology, linear autoregression) on the same windows, and an
ensemble of recurrent forecasters trained together (``jax.vmap`` over members inside one
loss) with ``lstm_jax.train.fit``; ``forecast_experiment`` is the whole recipe of
``experiments/weather_forecast.py``.

Shapes: ``s`` windows, ``w`` days per window, ``f`` features (target first), ``E`` members.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.datasets import DatasetError
from lstm_jax.keys import as_key
from lstm_jax.tasks.results import Results
from lstm_jax.tasks.seqmodel import (
    SeqModel,
    apply_seq_model,
    ensemble_apply,
    init_ensemble,
    init_seq_model,
    make_ensemble_regression_loss,
    predict_batched,
)
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = [
    "SPLITS",
    "split_days",
    "ForecastData",
    "day_of_year_features",
    "forecast_data",
    "forecast_baselines",
    "forecast_member_apply",
    "ForecastEnsemble",
    "train_forecast_ensemble",
    "predict_forecast_ensemble",
    "rmse",
    "mae",
    "forecast_experiment",
]

# per data set: (test days, validation days) of the chronological split
SPLITS = {"seattle": (365, 182), "clemson": (3653, 1096)}


def split_days(table, *, from_csv: bool, test_days: Optional[int] = None, val_days: Optional[int] = None) -> tuple:
    """``(test_days, val_days)``: those given, else the data set's (``SPLITS``), else 20 % / 10 % of the rows."""
    n = len(table.values)
    default_test, default_val = SPLITS.get(table.name if not from_csv else "", (round(0.2 * n), round(0.1 * n)))
    return test_days or default_test, val_days or default_val


class ForecastData(NamedTuple):
    """Windows of a ``DailyTable`` for next-day forecasting, split chronologically.

    ``train``/``val``/``test`` are ``{"x": [s, w, f] scaled, "y": [s, 1] scaled}``; ``raw_*``
    the same windows in original units (for baselines), ``dates_*`` the target days.
    """

    train: dict
    val: dict
    test: dict
    raw: dict  # split -> {"x": [s, w, f] original units, "y": [s]}
    dates: dict  # split -> [s] datetime64[D] of the target day
    feature_names: tuple
    y_mean: float
    y_std: float


def day_of_year_features(dates: np.ndarray) -> np.ndarray:
    """``[n]`` days -> ``[n, 2]`` (sin, cos) of the annual cycle."""
    from lstm_jax.baselines import day_of_year

    angle = 2.0 * np.pi * day_of_year(dates) / 365.25
    return np.stack([np.sin(angle), np.cos(angle)], axis=1)


def forecast_data(table, *, window: int, test_days: int, val_days: int, season_features: bool = True) -> ForecastData:
    """Chronological next-day windows of a ``lstm_jax.datasets.DailyTable``.

    The last ``test_days`` target days are the test split, the ``val_days`` before them the
    validation split, the rest training. Features: every column of the table (target first)
    plus (sin, cos) of the day of year; scaled with training-rows statistics only. Windows
    touching a day that was missing in the source (``table.observed`` False) are dropped.
    """
    from lstm_jax import data as data_lib

    values = np.asarray(table.values, np.float64)
    names = tuple(table.columns)
    if season_features:
        values = np.concatenate([values, day_of_year_features(table.dates)], axis=1)
        names = names + ("doy_sin", "doy_cos")
    n = len(values)
    t_idx = table.target_index
    if window < 1 or window + 1 + 2 > n:
        raise DatasetError(f"expected 1 <= window < {n - 2} rows of data, got window={window}")
    train_end = n - test_days - val_days
    if test_days < 1 or val_days < 1 or train_end < window + 30:
        raise DatasetError(
            f"expected at least {window + 30} training days before {val_days} val + {test_days} test days, got {n} days"
        )
    scaler = data_lib.fit_scaler(values[:train_end])
    z = data_lib.scale(scaler, values)
    x, y = data_lib.make_windows(z, window=window, target_cols=[t_idx])
    x_raw, y_raw = data_lib.make_windows(values, window=window, target_cols=[t_idx])
    target_row = np.arange(len(x)) + window
    obs = np.asarray(table.observed, bool)
    run = np.convolve((~obs).astype(np.int64), np.ones(window + 1, np.int64), mode="full")[:n]
    ok = run[target_row] == 0  # no unobserved day among rows target-window .. target
    bounds = {"train": (0, train_end), "val": (train_end, n - test_days), "test": (n - test_days, n)}
    splits, raw, dates = {}, {}, {}
    for name, (lo, hi) in bounds.items():
        keep = ok & (target_row >= lo) & (target_row < hi)
        if not keep.any():
            raise DatasetError(f"expected at least one fully observed {name} window, got none")
        splits[name] = {"x": x[keep].astype(np.float32), "y": y[keep].astype(np.float32)}
        raw[name] = {"x": x_raw[keep], "y": y_raw[keep, 0]}
        dates[name] = np.asarray(table.dates)[target_row[keep]]
    return ForecastData(
        splits["train"],
        splits["val"],
        splits["test"],
        raw,
        dates,
        names,
        float(scaler.mean[t_idx]),
        float(scaler.scale[t_idx]),
    )


def forecast_baselines(data: ForecastData) -> dict:
    """Test-span predictions (original units) of persistence, day-of-year climatology and linear
    autoregression on the same windows; the latter two are fitted on train + val."""
    from lstm_jax import baselines as B

    raw = data.raw
    fit_rows = {k: np.concatenate([raw["train"][k], raw["val"][k]]) for k in ("x", "y")}
    fit_dates = np.concatenate([data.dates["train"], data.dates["val"]])
    return {
        "persistence": B.persistence(raw["test"]["x"], 0),
        "climatology": B.predict_climatology(B.fit_climatology(fit_dates, fit_rows["y"]), data.dates["test"]),
        "linear_ar": B.predict_linear_ar(B.fit_linear_ar(fit_rows["x"], fit_rows["y"]), raw["test"]["x"]),
    }


def forecast_member_apply(
    params: SeqModel,
    x: Array,
    rng: Optional[PRNGKey],
    *,
    dropout: float = 0.0,
    residual: bool = False,
    impl: str = "auto",
) -> Array:
    """One forecaster: ``x [b, w, f]`` (scaled, target in column 0) -> ``[b, 1]`` scaled target.

    Dropout (variational on ``h`` and on the head input) only with ``rng``; with ``residual``
    the network predicts the change from the last observed value; ``impl``: the layer backend.
    """
    rng = None if rng is None else as_key(rng, "rng")
    out = apply_seq_model(params, x, dropout=dropout, recurrent_dropout=dropout, dropout_key=rng, impl=impl)
    return out + x[:, -1, :1] if residual else out


class ForecastEnsemble(NamedTuple):
    """Result of ``train_forecast_ensemble``."""

    params: PyTree  # members stacked on a leading axis (after the refit when asked for)
    best_params: PyTree  # members at the best validation epoch
    best_epoch: int
    history: list
    steps: int  # optimiser steps of the validated run
    apply: Callable  # member apply function (for predict_forecast_ensemble)


def train_forecast_ensemble(
    data: Any,
    *,
    cell: str = "lstm",
    hidden: int = 64,
    ensemble: int = 8,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 3e-3,
    dropout: float = 0.3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    residual: bool = False,
    bagging: bool = False,
    refit: bool = True,
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
    output_size: int = 1,
    make_loss: Optional[Callable] = None,
    monitor: str = "val_ens_mse",
    make_member: Optional[Callable] = None,
) -> ForecastEnsemble:
    """Train ``ensemble`` forecasters together (``jax.vmap`` over members inside one loss) with
    ``lstm_jax.train.fit``: Adam(W) with warmup + cosine decay, early selection on the validation
    MSE of the members' mean; then, with ``refit``, the same recipe again on train + val for the
    selected number of epochs (the returned ``params``).

    ``data`` needs only ``train``/``val`` dicts (``{"x": [s, w, f], "y": [s, ...]}``). For other
    outputs (multi-horizon, distribution parameters): ``output_size`` head outputs,
    ``make_loss(apply) -> loss_fn`` replacing the members' MSE, and the history key ``monitor``
    to select the epoch on (``residual`` then must stay off). ``make_member(init_fn, apply) ->
    (init_fn, apply)`` replaces the member's init and apply (e.g. to add a linear path)."""
    from lstm_jax import train as train_lib

    d_in = data.train["x"].shape[-1]
    init_fn = partial(init_seq_model, cell=cell, input_size=d_in, hidden_size=hidden, output_size=output_size)
    apply = partial(forecast_member_apply, dropout=dropout, residual=residual, impl=impl)
    if make_member is not None:
        init_fn, apply = make_member(init_fn, apply)
    params = init_ensemble(init_fn, jax.random.key(seed), ensemble)
    loss_fn = make_ensemble_regression_loss(apply, bagging=bagging) if make_loss is None else make_loss(apply)

    def optimizer(n_rows, n_epochs):
        steps = n_epochs * (n_rows // batch_size)
        return train_lib.make_optimizer(
            lr, clip_norm=None, warmup_steps=min(100, steps // 10), total_steps=steps, weight_decay=weight_decay
        ), steps

    opt, steps = optimizer(len(data.train["x"]), epochs)
    result = train_lib.fit(
        loss_fn,
        params,
        opt,
        data.train,
        val_data=data.val,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        monitor=monitor,
        compiled_epoch=True,
        progress=progress,
        desc=desc,
    )
    best_epoch = max(int(result.best_epoch or epochs), 1)
    final = result.params
    if refit:
        both = {k: np.concatenate([data.train[k], data.val[k]]) for k in ("x", "y")}
        opt, _ = optimizer(len(both["x"]), best_epoch)
        final = train_lib.fit(
            loss_fn,
            params,
            opt,
            both,
            epochs=best_epoch,
            batch_size=batch_size,
            seed=seed,
            compiled_epoch=True,
            monitor="train_loss",
            progress=progress,
            desc=f"{desc} refit train+val x{best_epoch}",
        ).state.params
    return ForecastEnsemble(final, result.params, best_epoch, result.history, int(result.state.step), apply)


def predict_forecast_ensemble(model: ForecastEnsemble, params: PyTree, x: np.ndarray, data: ForecastData) -> np.ndarray:
    """Every member's prediction in original units: ``x [s, w, f]`` -> ``[E, s]`` (batched, jitted once)."""
    fn = _ENSEMBLE_PREDICT.get(model.apply)
    if fn is None:
        fn = jax.jit(lambda p, b: jnp.moveaxis(ensemble_apply(model.apply, p, b["x"])[..., 0], 0, 1))
        _ENSEMBLE_PREDICT.clear()
        _ENSEMBLE_PREDICT[model.apply] = fn
    scaled = predict_batched(fn, params, {"x": x}, batch_size=512).T
    return scaled * data.y_std + data.y_mean


_ENSEMBLE_PREDICT: dict = {}


def rmse(pred, y) -> float:
    """Root mean squared error of ``pred`` against ``y`` (same shape)."""
    return float(np.sqrt(np.mean((np.asarray(pred) - y) ** 2)))


def mae(pred, y) -> float:
    """Mean absolute error of ``pred`` against ``y`` (same shape)."""
    return float(np.mean(np.abs(np.asarray(pred) - y)))


def forecast_experiment(
    res: Results, data: ForecastData, *, dataset: str, unit: str, cell: str = "lstm", ensemble: int = 8, **train_kwargs
) -> tuple:
    """Baselines and a trained ensemble on the same test windows, their rows added to ``res``:
    test RMSE and MAE of every model (the ensemble's mean prediction for ``cell``), the members'
    mean RMSE, and validation RMSE of the best-on-validation members and of persistence.

    ``train_kwargs`` go to ``train_forecast_ensemble``. Returns ``(preds, forecaster, ratio)``:
    test predictions by model (original units), the ``ForecastEnsemble``, and the ensemble's
    test RMSE over persistence's.
    """
    from lstm_jax import baselines as B

    preds = forecast_baselines(data)
    y_test, val_y = data.raw["test"]["y"], data.raw["val"]["y"]
    forecaster = train_forecast_ensemble(data, cell=cell, ensemble=ensemble, **train_kwargs)
    members = predict_forecast_ensemble(forecaster, forecaster.params, data.test["x"], data)  # [E, s]
    preds[cell] = members.mean(0)
    val_pred = predict_forecast_ensemble(forecaster, forecaster.best_params, data.val["x"], data).mean(0)
    for model, pred in preds.items():
        extra = {"ensemble": ensemble} if model == cell else {}
        res.add(dataset, model, "rmse", "test", rmse(pred, y_test), unit=unit, **extra)
        res.add(dataset, model, "mae", "test", mae(pred, y_test), unit=unit, **extra)
        sq = (np.asarray(pred) - y_test) ** 2
        res.add_examples(dataset, model, "rmse", "test", sq, baseline=model != cell, paired_test="dm")
    res.add(dataset, cell, "rmse_member_mean", "test", float(np.mean([rmse(m, y_test) for m in members])))
    res.add(dataset, cell, "rmse", "val", rmse(val_pred, val_y), ensemble=ensemble)
    res.add(dataset, "persistence", "rmse", "val", rmse(B.persistence(data.raw["val"]["x"], 0), val_y))
    ratio = res.value(cell, "rmse") / res.value("persistence", "rmse")
    res.extra.update(rmse_ratio_to_persistence=ratio, best_epoch=forecaster.best_epoch, history=forecaster.history)
    return preds, forecaster, ratio
