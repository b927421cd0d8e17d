"""Next-day maximum temperature from the last 6 days of weather: LSTM vs persistence,
day-of-year climatology and linear autoregression, on a chronological split.

    python experiments/weather_forecast.py                       # Seattle 2012-2015, test = 2015
    python experiments/weather_forecast.py --dataset clemson     # Clemson 1930-2020, test = last 10 years
    python experiments/weather_forecast.py --csv my.csv --target tmax --date-col date
    python experiments/weather_forecast.py --quick --cell gru
    python experiments/weather_forecast.py --horizon 7 --likelihood gaussian   # 7-day probabilistic forecast
    python experiments/weather_forecast.py --horizon 7 --likelihood quantile   # pinball loss at --levels

The network is an ensemble of small recurrent nets trained together (``jax.vmap`` over the
members inside one loss; each member gets its own init, dropout and gradient) with
``lstm_jax.train.fit``; the reported prediction is the members' mean. Outputs in ``--out``:
``metrics.json``, ``forecast.png``, ``checkpoint/``.

With ``--horizon H`` or a ``--likelihood`` other than ``point`` the head forecasts the next
``H`` days directly (``lstm_jax.tasks.probabilistic``), each as a distribution; metrics per
horizon (RMSE/MAE of the median, CRPS, 80 %/95 % interval coverage and width) for the network
and for Gaussian versions of the baselines (residual standard deviation per horizon), and the
figure becomes a forecast fan plus RMSE/CRPS against horizon.
"""

from __future__ import annotations

import sys

import numpy as np

from lstm_jax import datasets
from lstm_jax.tasks import cli, forecast, probabilistic, results


def parse(argv):
    p = cli.make_parser("weather_forecast", __doc__.splitlines()[0])
    p.add_argument("--dataset", default="seattle", help="seattle | clemson (ignored with --csv)")
    p.add_argument("--csv", help="CSV file of daily rows (numeric columns become inputs)")
    p.add_argument("--target", help="column to forecast (default temp_max / tmax)")
    p.add_argument("--date-col", help="date column of --csv (rows are put on a daily calendar)")
    p.add_argument("--window", type=int, default=6, help="past days fed to the model (default: %(default)s)")
    p.add_argument(
        "--test-days", type=int, help="held-out last days (default: 365 Seattle, 3653 Clemson, 20%% of a CSV)"
    )
    p.add_argument("--val-days", type=int, help="validation days before the test span (default: 182 / 1096 / 10%%)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--ensemble", type=int, default=8, help="members trained together with vmap (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="default: 60 (Seattle, CSV) / 12 (Clemson)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dropout", type=float, default=0.3, help="recurrent (variational) and head dropout")
    p.add_argument("--bagging", action="store_true", help="Poisson(1) example weights per member (online bagging)")
    p.add_argument("--residual", action="store_true", help="predict the change from the last observed day")
    p.add_argument(
        "--highway",
        action="store_true",
        help="with --horizon/--likelihood: add a linear path from the past target values (LSTNet)",
    )
    p.add_argument(
        "--pool-residual",
        action="store_true",
        help="with --horizon/--likelihood: pool a plain and a --residual ensemble (2 x --ensemble members)",
    )
    p.add_argument("--horizon", type=int, default=1, help="days ahead forecast at once (default: %(default)s)")
    p.add_argument(
        "--likelihood",
        choices=probabilistic.LIKELIHOODS,
        default="point",
        help="output distribution: point (MSE), gaussian / student_t (NLL), quantile (pinball) (default: %(default)s)",
    )
    p.add_argument(
        "--levels",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default=probabilistic.DEFAULT_LEVELS,
        help="quantile levels of --likelihood quantile, comma-separated (must include 0.025,0.1,0.5,0.9,0.975)",
    )
    p.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="predict with the best-on-validation members instead of refitting on train+val",
    )
    return p.parse_args(argv)


def run(args):
    if args.horizon < 1:
        raise cli.UsageError(f"expected --horizon >= 1, got {args.horizon}")
    if args.likelihood == "quantile" and not {0.025, 0.1, 0.5, 0.9, 0.975} <= set(args.levels):
        raise cli.UsageError(f"expected --levels to include 0.025,0.1,0.5,0.9,0.975, got {args.levels}")
    if args.likelihood == "quantile" and (min(args.levels) <= 0 or max(args.levels) >= 1):
        raise cli.UsageError(f"expected --levels inside (0, 1), got {args.levels}")
    args.levels = tuple(sorted(set(args.levels)))
    if args.pool_residual and (args.residual or (args.horizon == 1 and args.likelihood == "point")):
        raise cli.UsageError(
            "expected --pool-residual with --horizon > 1 or --likelihood, and without --residual "
            "(it trains both), got "
            f"--horizon {args.horizon} --likelihood {args.likelihood}{' --residual' if args.residual else ''}"
        )
    table = datasets.load_weather(args.dataset, csv=args.csv, target=args.target, date_col=args.date_col)
    test_days, val_days = forecast.split_days(
        table, from_csv=args.csv is not None, test_days=args.test_days, val_days=args.val_days
    )
    epochs = args.epochs or (12 if table.name == "clemson" else 60)
    hidden, ensemble, batch_size = args.hidden, args.ensemble, args.batch_size
    if table.name == "clemson":
        batch_size = max(batch_size, 128)
    if args.quick:
        epochs, hidden, ensemble = 3, 16, 2
    if args.horizon > 1 or args.likelihood != "point":
        return run_probabilistic(args, table, test_days, val_days, epochs, hidden, ensemble, batch_size)
    data = forecast.forecast_data(table, window=args.window, test_days=test_days, val_days=val_days)
    config = run_config(args, table, data, test_days, val_days, epochs, hidden, ensemble, batch_size)
    res = results.Results("weather_forecast", config)

    # ---- baselines on the same test windows, then an ensemble of recurrent forecasters
    preds, forecaster, ratio = forecast.forecast_experiment(
        res,
        data,
        dataset=table.name,
        unit=table.unit,
        **train_kwargs(args, ensemble, hidden, epochs, batch_size),
        desc=f"{args.cell} x{ensemble} {table.name}",
    )
    results.finish(
        res,
        args.out,
        forecaster.params,
        step=forecaster.steps,
        figures={"forecast.png": lambda path: plot(preds, data, table, args.cell, res, path)},
        header=f"{table.name}: next-day {table.target} ({table.unit or 'units'}), test = last {test_days} days, "
        f"{ensemble} x {args.cell}({hidden}), best epoch {forecaster.best_epoch}/{epochs}",
        note=f"{args.cell} RMSE / persistence RMSE = {ratio:.3f}   ",
    )


def run_config(args, table, data, test_days, val_days, epochs, hidden, ensemble, batch_size) -> dict:
    """The flags and what the run derived from them (the ``config`` of ``metrics.json``)."""
    return dict(
        vars(args),
        dataset=table.name,
        target=table.target,
        features=list(data.feature_names),
        test_days=test_days,
        val_days=val_days,
        epochs=epochs,
        hidden=hidden,
        ensemble=ensemble,
        batch_size=batch_size,
        n_train=len(data.train["x"]),
        n_val=len(data.val["x"]),
        n_test=len(data.test["x"]),
    )


def train_kwargs(args, ensemble, hidden, epochs, batch_size) -> dict:
    """What both forecasting paths hand to their ensemble trainer."""
    return dict(
        cell=args.cell,
        ensemble=ensemble,
        seed=args.seed,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=args.lr,
        dropout=args.dropout,
        impl=args.impl,
        bagging=args.bagging,
        residual=args.residual,
        refit=args.refit and not args.quick,
        progress=not args.no_progress,
    )


def run_probabilistic(args, table, test_days, val_days, epochs, hidden, ensemble, batch_size):
    """The ``--horizon`` / ``--likelihood`` path: a distribution for each of the next H days."""
    data = probabilistic.horizon_data(
        table, window=args.window, horizon=args.horizon, test_days=test_days, val_days=val_days
    )
    config = run_config(args, table, data, test_days, val_days, epochs, hidden, ensemble, batch_size)
    config["forecast"] = "direct multi-output"
    res = results.Results("weather_forecast", config)
    preds, forecaster, scores = probabilistic.probabilistic_experiment(
        res,
        data,
        dataset=table.name,
        unit=table.unit,
        **train_kwargs(args, ensemble, hidden, epochs, batch_size),
        likelihood=args.likelihood,
        levels=args.levels,
        highway=args.highway,
        pool_residual=args.pool_residual,
        desc=f"{args.cell} x{ensemble} {table.name} h{args.horizon} {args.likelihood}",
    )
    results.finish(
        res,
        args.out,
        forecaster.params,
        step=forecaster.steps,
        figures={"forecast.png": lambda path: plot_fan(preds, scores, data, table, args, path)},
        header=f"{table.name}: next {args.horizon} days of {table.target} ({table.unit or 'units'}), "
        f"{args.likelihood} likelihood, test = last {test_days} days, {ensemble} x {args.cell}({hidden}), "
        f"best epoch {forecaster.best_epoch}/{epochs}   (rows: mean over horizons)",
        footer=horizon_table(scores, args.cell),
    )


def horizon_table(scores, cell):
    """CRPS (and the network's 80 % coverage) per horizon, one line per model."""
    h = len(scores[cell]["crps"])
    lines = ["CRPS by horizon: " + " ".join(f"{k + 1:>6d}" for k in range(h))]
    for model, sc in scores.items():
        lines.append(f"  {model:<14s} " + " ".join(f"{v:6.3f}" for v in sc["crps"]))
    lines.append(f"  {cell} cover80  " + " ".join(f"{v:6.3f}" for v in scores[cell]["coverage_80"]))
    return "\n".join(lines)


def plot_fan(preds, scores, data, table, args, path):
    plt = results.pyplot()
    cell, h = args.cell, data.horizon
    y, dates = data.raw["test"]["y"], data.dates["test"]
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    ax = fig.add_subplot(grid[0, :])
    span = np.arange(max(0, len(y) - 120), len(y))  # the last 120 forecast origins of the test span
    ax.plot(dates[span], y[span, 0], color="black", lw=1.2, label="observed")
    pred = preds[cell]
    for i, origin in enumerate(span[:: max(h, 1) * (1 if h > 1 else 10)]):
        days = dates[origin] + np.arange(h) if h > 1 else dates[span]
        rows = (origin, slice(None)) if h > 1 else (span, 0)
        for lv, alpha in ((0.95, 0.18), (0.8, 0.35)):
            lo, hi = pred.intervals[lv]
            label = f"{int(lv * 100)} % interval" if i == 0 else None
            ax.fill_between(days, lo[rows], hi[rows], color="tab:red", alpha=alpha, lw=0, label=label)
        ax.plot(days, pred.median[rows], color="tab:red", lw=1.2, label=f"{cell} median" if i == 0 else None)
        if h == 1:
            break
    ax.set_title(
        f"{table.name}: {cell} {args.likelihood} forecast fans of the next {h} days"
        + (f", one every {h} days" if h > 1 else "")
    )
    ax.set_ylabel(f"{table.target} {table.unit}")
    ax.legend(ncol=4, fontsize=8, loc="upper left")
    colors = {cell: "tab:red", "persistence": "tab:gray", "linear_ar": "tab:blue", "climatology": "tab:green"}
    for j, metric in enumerate(("rmse", "crps")):
        bx = fig.add_subplot(grid[1, j])
        for model, sc in scores.items():
            bx.plot(np.arange(1, h + 1), sc[metric], marker="o", color=colors.get(model), label=model)
        bx.set_xlabel("horizon (days)")
        bx.set_ylabel(f"test {metric.upper()} ({table.unit})")
        bx.legend(fontsize=8)
    results.save_figure(fig, path)


def plot(preds, data, table, cell, res, path):
    plt = results.pyplot()
    y, dates = data.raw["test"]["y"], data.dates["test"]
    span = slice(max(0, len(y) - 365), len(y))  # at most the last year of the test span
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(dates[span], y[span], color="black", lw=1.2, label="observed")
    styles = {
        cell: dict(color="tab:red", lw=1.2),
        "persistence": dict(color="tab:gray", lw=0.8, ls="--"),
        "linear_ar": dict(color="tab:blue", lw=0.8),
        "climatology": dict(color="tab:green", lw=0.8),
    }
    for model in (cell, "linear_ar", "persistence", "climatology"):
        ax.plot(dates[span], np.asarray(preds[model])[span], label=model, alpha=0.85, **styles[model])
    ax.set_title(f"{table.name}: next-day {table.target}, test span (chronological hold-out)")
    ax.set_ylabel(f"{table.target} {table.unit}")
    ax.legend(ncol=5, fontsize=8, loc="upper left")
    models = [cell, "linear_ar", "persistence", "climatology"]
    values = [res.value(m, "rmse") for m in models]
    bx.barh(models, values, color=[styles[m]["color"] for m in models])
    for i, v in enumerate(values):
        bx.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    bx.set_xlabel(f"test RMSE ({table.unit})")
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
