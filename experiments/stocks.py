"""Next-day log return of AAPL, GOOG, IBM and MSFT: LSTM vs the zero-return random walk.

    python experiments/stocks.py                 # bokeh-sampledata prices 2000-2013, test = last 20 %
    python experiments/stocks.py --quick

The past 20 days of (log return, relative log volume) feed an ensemble of small recurrent nets
(``lstm_jax.tasks.forecast.train_forecast_ensemble``) trained on all four tickers' training
windows; each ticker's test days are scored against the random walk (RMSE, Diebold-Mariano
test with the Harvey-Leybourne-Newbold correction) and the better of always-up / always-down
(direction accuracy). A negative result (no better than the random walk) is a result.
Outputs in ``--out``: ``metrics.json``, ``stocks.png``, ``checkpoint/``.
"""

from __future__ import annotations

import sys

import numpy as np

from lstm_jax.tasks import cli, forecast, results
from lstm_jax.tasks import stocks as S


def parse(argv):
    p = cli.make_parser("stocks", __doc__.splitlines()[0])
    p.add_argument("--tickers", default=",".join(S.TICKERS), help="comma-separated (default: %(default)s)")
    p.add_argument("--window", type=int, default=20, help="past days per input (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--ensemble", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.3)
    return p.parse_args(argv)


def run(args):
    tickers = tuple(t.strip().upper() for t in args.tickers.split(",") if t.strip())
    epochs, hidden, ensemble = args.epochs, args.hidden, args.ensemble
    if args.quick:
        epochs, hidden, ensemble = 1, 8, 2
    data = S.stock_data(S.load_prices(tickers), window=args.window)
    config = dict(vars(args), tickers=list(tickers), epochs=epochs, hidden=hidden, ensemble=ensemble)
    config.update(
        n_train=len(data.train["x"]), n_val=len(data.val["x"]), n_test={t: len(v) for t, v in data.returns.items()}
    )
    res = results.Results("stocks", config)
    model = forecast.train_forecast_ensemble(
        data,
        cell=args.cell,
        hidden=hidden,
        ensemble=ensemble,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        seed=args.seed,
        refit=not args.quick,
        impl=args.impl,
        progress=not args.no_progress,
        desc=f"{args.cell} x{ensemble} stocks",
    )
    preds, scores = {}, {}
    for ticker in tickers:
        preds[ticker] = forecast.predict_forecast_ensemble(model, model.params, data.test[ticker]["x"], data).mean(0)
        sc = scores[ticker] = S.score_ticker(preds[ticker], data.returns[ticker])
        res.add(
            ticker, args.cell, "rmse", "test", sc["rmse"], dm_statistic=sc["dm_statistic"], dm_p_value=sc["dm_p_value"]
        )
        res.add(ticker, "random_walk", "rmse", "test", sc["rmse_random_walk"])
        r = data.returns[ticker]
        res.add_examples(ticker, args.cell, "rmse", "test", (preds[ticker] - r) ** 2, baseline=False, paired_test="dm")
        res.add_examples(ticker, "random_walk", "rmse", "test", r**2, baseline=True, paired_test="dm")
        res.add(ticker, args.cell, "direction_accuracy", "test", sc["direction_accuracy"])
        res.add(ticker, sc["direction_baseline_name"], "direction_accuracy", "test", sc["direction_baseline"])
        res.add(ticker, args.cell, "dm_p_value", "test", sc["dm_p_value"], against="random_walk")
    pooled = S.score_ticker(np.concatenate(list(preds.values())), np.concatenate([data.returns[t] for t in tickers]))
    res.extra.update(scores=scores, pooled=pooled, best_epoch=model.best_epoch, history=model.history)
    beats = [t for t in tickers if scores[t]["rmse"] < scores[t]["rmse_random_walk"] and scores[t]["dm_p_value"] < 0.05]
    verdict = (
        f"LSTM beats the random walk significantly (DM p < 0.05) on: {', '.join(beats)}"
        if beats
        else "LSTM does NOT beat the zero-return random walk on any ticker (no DM p < 0.05 with a lower RMSE)"
    )
    footer = "\n".join(
        f"  {t}: RMSE ratio {scores[t]['rmse'] / scores[t]['rmse_random_walk']:.4f}, DM {scores[t]['dm_statistic']:+.2f} "
        f"(p = {scores[t]['dm_p_value']:.3f}), direction {scores[t]['direction_accuracy']:.3f} vs "
        f"{scores[t]['direction_baseline_name']} {scores[t]['direction_baseline']:.3f}"
        for t in tickers
    )
    footer += f"\n  pooled: RMSE ratio {pooled['rmse'] / pooled['rmse_random_walk']:.4f}, p = {pooled['dm_p_value']:.3f}\n{verdict}"
    results.finish(
        res,
        args.out,
        model.params,
        step=model.steps,
        figures={"stocks.png": lambda path: plot(preds, data, scores, tickers, args.cell, path)},
        header=f"next-day log return, test = last 20 % of each ticker, {ensemble} x {args.cell}({hidden}), "
        f"best epoch {model.best_epoch}/{epochs}",
        footer=footer,
    )


def plot(preds, data, scores, tickers, cell, path):
    plt = results.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    ratios = [scores[t]["rmse"] / scores[t]["rmse_random_walk"] for t in tickers]
    ax.bar(tickers, ratios, color="tab:red")
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    for i, t in enumerate(tickers):
        ax.text(i, ratios[i], f"p={scores[t]['dm_p_value']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(min(ratios) - 0.01, max(ratios) + 0.01)
    ax.set_ylabel(f"test RMSE {cell} / random walk")
    ax.set_title("below 1: better than the random walk (DM p-value)")
    for t in tickers:
        r = data.returns[t]
        gain = np.cumsum(r**2 - (preds[t] - r) ** 2)
        bx.plot(data.dates[t], gain, label=t, lw=1)
    bx.axhline(0.0, color="black", lw=0.8)
    bx.set_ylabel("cumulative squared error: random walk - " + cell)
    bx.set_title("rising: the network is ahead")
    bx.legend(fontsize=8)
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
