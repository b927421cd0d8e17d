"""Next-day maximum temperature from the last 6 days of weather: LSTM vs persistence,
day-of-year climatology and linear autoregression, on a chronological split.

    python experiments/weather_forecast.py                       # Seattle 2012-2015, test = 2015
    python experiments/weather_forecast.py --dataset clemson     # Clemson 1930-2020, test = last 10 years
    python experiments/weather_forecast.py --csv my.csv --target tmax --date-col date
    python experiments/weather_forecast.py --quick --cell gru

The network is an ensemble of small recurrent nets trained together (``jax.vmap`` over the
members inside one loss; each member gets its own init, dropout and gradient) with
``lstm_jax.train.fit``; the reported prediction is the members' mean. Outputs in ``--out``:
``metrics.json``, ``forecast.png``, ``checkpoint/``.
"""

from __future__ import annotations

import sys

import numpy as np

from lstm_jax import datasets
from lstm_jax.tasks import cli, forecast, results


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
        "--no-refit",
        dest="refit",
        action="store_false",
        help="predict with the best-on-validation members instead of refitting on train+val",
    )
    return p.parse_args(argv)


def run(args):
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
    data = forecast.forecast_data(table, window=args.window, test_days=test_days, val_days=val_days)
    config = dict(
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
    res = results.Results("weather_forecast", config)

    # ---- baselines on the same test windows, then an ensemble of recurrent forecasters
    preds, forecaster, ratio = forecast.forecast_experiment(
        res,
        data,
        dataset=table.name,
        unit=table.unit,
        cell=args.cell,
        ensemble=ensemble,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=args.lr,
        dropout=args.dropout,
        seed=args.seed,
        impl=args.impl,
        residual=args.residual,
        bagging=args.bagging,
        refit=args.refit and not args.quick,
        progress=not args.no_progress,
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
