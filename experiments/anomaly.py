"""Anomaly detection with LSTMs: forecast-residual and autoencoder detectors vs two baselines.

    python experiments/anomaly.py                      # KDD-TSAD 135, mitdb ECG, injected anomalies (5 seeds)
    python experiments/anomaly.py --datasets kdd135
    python experiments/anomaly.py --csv my.csv --value-col v --label-col is_anomaly [--train-until 1000]
    python experiments/anomaly.py --quick

Every detector is trained (or calibrated) on the normal prefix of the series only and scored
on the points after it: ROC AUC, average precision, best F1 and the KDD top-1 hit (the highest
score within 100 points of the labelled region). Detectors: ``lstm_forecast`` (negative log
density under a Gaussian LSTM ensemble's one-step forecast), ``lstm_autoencoder``
(reconstruction error of windows), baselines ``persistence_z`` (robust z of the one-step change)
and ``nn_window`` (distance to the nearest normal window). The injected protocol adds seeded
spikes, level shifts and noise bursts to the second 60 % of the sea-surface temperature series.
Outputs in ``--out``: ``metrics.json``, ``anomaly.png``, ``scores.npz`` (every detector's
scores), ``checkpoint/`` (the LSTM detectors' parameters per series).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lstm_jax import distributed, stats
from lstm_jax.tasks import anomaly as A
from lstm_jax.tasks import cli, results

DATASETS = ("kdd135", "mitdb", "injected")
# nearest-neighbour baseline window per data set: about one heartbeat of the 360 Hz ECG, one day
# of the half-hourly sea temperature
NN_LENGTH = {"kdd135": 32, "mitdb": 256, "injected": 48}
# autoencoder per data set: (downsample, window, centre windows, hidden, epochs). On mitdb a window
# spans one heartbeat (2 x 128 samples, the baseline's 256) and keeps its level: a beat's shape
# AND its baseline matter there; elsewhere --window / --hidden / --epochs and centred windows.
AE_SETTINGS = {"mitdb": (2, 128, False, 64, 60)}
METRICS = ("roc_auc", "average_precision", "best_f1", "top1_hit")


def parse(argv):
    p = cli.make_parser("anomaly", __doc__.splitlines()[0], seeds=False)
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: %(default)s)")
    p.add_argument("--csv", help="your labelled series (a CSV file)")
    p.add_argument("--value-col", default="value")
    p.add_argument("--label-col", default="label")
    p.add_argument("--train-until", type=int, help="normal prefix length of --csv (default: before the first label)")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the injected protocol (default: %(default)s)")
    p.add_argument(
        "--window",
        type=int,
        default=32,
        help="forecaster input / autoencoder window (mitdb: AE_SETTINGS; default: %(default)s)",
    )
    p.add_argument(
        "--nn-length", type=int, help="nn_window baseline length (default: 32 / 256 / 48, --window for --csv)"
    )
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--ensemble", type=int, default=4)
    return p.parse_args(argv)


def series_list(args) -> list:
    if args.csv:
        return [A.labelled_csv(args.csv, args.value_col, args.label_col, args.train_until)]
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    bad = [n for n in names if n not in DATASETS]
    if bad or not names:
        raise cli.UsageError(f"expected --datasets among {DATASETS}, got {names}")
    if args.seeds < 1:
        raise cli.UsageError(f"expected --seeds >= 1, got {args.seeds}")
    out = []
    for name in names:
        if name == "kdd135":
            out.append(A.kdd_135())
        elif name == "mitdb":
            out.append(A.mitdb())
        else:
            sst = A.sea_surface()
            if args.quick:
                sst = sst[:6000]
            until = int(0.4 * len(sst))
            out += [A.inject_anomalies(sst, train_until=until, seed=s) for s in range(args.seeds)]
    return out


def detect(series, args, epochs, hidden, ensemble) -> tuple:
    """``({detector: scores [n]}, {"forecaster": params, "autoencoder": params})``."""
    progress = not args.no_progress
    forecaster, autoencoder = {}, {}
    scores = {
        "persistence_z": A.persistence_z(series.values, series.train_until),
        "nn_window": A.nn_window(series.values, series.train_until, length=_nn_length(series.name, args)),
        "lstm_forecast": _keep(
            forecaster,
            A.forecast_scores(
                series,
                window=args.window,
                cell=args.cell,
                hidden=hidden,
                ensemble=ensemble,
                epochs=epochs,
                batch_size=64,
                lr=3e-3,
                dropout=0.1,
                seed=args.seed,
                impl=args.impl,
                refit=False,
                progress=progress,
                desc=f"{series.name} forecaster",
            ),
        ),
        "lstm_autoencoder": _keep(
            autoencoder,
            A.autoencoder_scores(
                series,
                **_ae_settings(series.name, args, hidden, epochs),
                seed=args.seed,
                impl=args.impl,
                progress=progress,
                desc=f"{series.name} autoencoder",
            ),
        ),
    }
    return scores, {"forecaster": forecaster["params"], "autoencoder": autoencoder["params"]}


def _ae_settings(name: str, args, hidden: int, epochs: int) -> dict:
    q, length, center, h, e = AE_SETTINGS.get(name, (1, args.window, True, hidden, epochs))
    if args.quick:
        h, e = hidden, epochs
    return dict(downsample=q, length=length, center=center, hidden=h, epochs=e)


def _nn_length(name: str, args) -> int:
    if args.nn_length:
        return args.nn_length
    return NN_LENGTH.get("injected" if name.startswith("injected") else name, args.window)


def _keep(store: dict, scores_and_params: tuple):
    store["params"] = scores_and_params[1]
    return scores_and_params[0]


def run(args):
    if args.quick:
        args.seeds = 1
    epochs, hidden, ensemble = (1, 8, 2) if args.quick else (args.epochs, args.hidden, args.ensemble)
    all_series = series_list(args)
    if args.quick and not args.csv:
        all_series = all_series[:1]
    res = results.Results("anomaly", dict(vars(args), epochs=epochs, hidden=hidden, ensemble=ensemble))
    found, per_seed, params = {}, {}, {}
    for series in all_series:
        scores, params[series.name] = detect(series, args, epochs, hidden, ensemble)
        found[series.name] = (series, scores)
        group = "injected" if series.name.startswith("injected") else series.name
        for model, s in scores.items():
            m = A.detection_metrics(s, series)
            for metric, value in m.items():
                res.add(series.name, model, metric, "test", value)
            per_seed.setdefault(group, {}).setdefault(model, []).append(m)
    summary = {}
    for group, models in per_seed.items():
        if len(next(iter(models.values()))) < 2:
            continue
        for model, ms in models.items():
            auc = [m["roc_auc"] for m in ms]
            summary[f"{group}/{model}"] = stats.summarize(auc)
            res.add(
                group, model, "roc_auc_mean", "test", float(np.mean(auc)), seeds=len(auc), sd=float(np.std(auc, ddof=1))
            )
    res.extra.update(injected_auc=summary)
    footer = "\n".join(f"  {k}: AUC {v['mean']:.3f} ± {v['sd']:.3f} (n = {v['n']})" for k, v in summary.items())
    results.finish(
        res,
        args.out,
        params,
        figures={"anomaly.png": lambda path: plot(found, path)},
        header=f"anomaly scores on the points after each normal prefix ({', '.join(found)})",
        footer=("injected protocol, mean over seeds:\n" + footer) if summary else "",
    )
    if distributed.is_main_process():
        np.savez_compressed(
            Path(args.out) / "scores.npz", **{f"{n}/{m}": s for n, (_, sc) in found.items() for m, s in sc.items()}
        )


def plot(found, path):
    plt = results.pyplot()
    shown = [n for n in found if not n.startswith("injected")] + [n for n in found if n.startswith("injected")][:1]
    fig, axes = plt.subplots(2 * len(shown), 1, figsize=(12, 3.2 * len(shown)), squeeze=False)
    colors = {
        "lstm_forecast": "tab:red",
        "lstm_autoencoder": "tab:purple",
        "persistence_z": "tab:gray",
        "nn_window": "tab:blue",
    }
    for i, name in enumerate(shown):
        series, scores = found[name]
        ax, bx = axes[2 * i, 0], axes[2 * i + 1, 0]
        t = np.arange(len(series.values))
        ax.plot(t, series.values, color="black", lw=0.6)
        ax.axvspan(0, series.train_until, color="tab:green", alpha=0.08, label="normal prefix (training)")
        ymin, ymax = ax.get_ylim()
        ax.fill_between(t, ymin, ymax, where=series.labels > 0, color="tab:orange", alpha=0.5, label="labelled anomaly")
        ax.set_ylim(ymin, ymax)
        ax.set_title(name)
        ax.legend(fontsize=7, loc="upper right")
        for model, s in scores.items():
            s = np.asarray(s, np.float64)
            tail = s[series.train_until :]
            bx.plot(
                t, (s - tail.min()) / (tail.max() - tail.min() + 1e-12), color=colors.get(model), lw=0.6, label=model
            )
        bx.fill_between(t, 0, 1, where=series.labels > 0, color="tab:orange", alpha=0.3)
        bx.set_ylabel("score (min-max)")
        bx.legend(fontsize=7, ncol=4, loc="upper left")
    results.save_figure(fig, path)


main = cli.make_main(parse, run, native_seeds=True)  # its --seeds are the injected protocol's

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
