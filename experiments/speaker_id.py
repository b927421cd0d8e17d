"""Speaker identification from variable-length cepstral sequences (JapaneseVowels, 9 speakers,
7-29 frames): a recurrent classifier on padded batches with per-sequence lengths (masking;
no truncation or resampling) against 1-NN DTW, 1-NN Euclidean and the majority class.

    python experiments/speaker_id.py                               # JapaneseVowels
    python experiments/speaker_id.py --dataset BasicMotions        # any UCR/UEA set bundled with sktime
    python experiments/speaker_id.py --ts-train A_TRAIN.ts --ts-test A_TEST.ts
    python experiments/speaker_id.py --seeds 5                     # 5 seeds in one vmapped program + their ensemble
    python experiments/speaker_id.py --quick --cell gru

Outputs in ``--out``: ``metrics.json``, ``confusion.png``, ``checkpoint/``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lstm_jax import baselines as B
from lstm_jax import data as data_lib
from lstm_jax import datasets
from lstm_jax.tasks import classify, cli, results

DTW_MAX_LEN = 100  # longer series: 1-NN with Euclidean distance only (DTW's grid grows as T^2)
# defaults chosen on the validation split of JapaneseVowels (never on test), the same for every set
BIDIRECTIONAL, READOUT, AUGMENT, WEIGHT_DECAY = True, "mean", "jitter", 1e-4


def parse(argv):
    p = cli.make_parser("speaker_id", __doc__.splitlines()[0])
    p.add_argument("--dataset", default="JapaneseVowels", help="a UCR/UEA set bundled with sktime")
    p.add_argument("--ts-train", help=".ts file of training series (with --ts-test)")
    p.add_argument("--ts-test", help=".ts file of test series")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=BIDIRECTIONAL)
    p.add_argument("--readout", choices=("final", "mean", "max"), default=READOUT, help="pooling over time")
    p.add_argument("--augment", choices=classify.AUGMENTATIONS, default=AUGMENT, help="training-time input jitter")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument(
        "--min-updates",
        type=int,
        default=1000,
        help="more epochs on small training sets, until this many optimiser updates (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15, help="of train, stratified, for early stopping")
    args = p.parse_args(argv)
    if (args.ts_train is None) != (args.ts_test is None):
        p.error("expected --ts-train and --ts-test together")
    return args


def run(args):
    if args.ts_train:
        ds = datasets.load_ts_pair(args.ts_train, args.ts_test)
    else:
        ds = datasets.load_ts_dataset(args.dataset)
    epochs, hidden = args.epochs, args.hidden
    if args.quick:
        epochs, hidden = 3, 16
    n_classes = len(ds.classes)
    # per-channel standardisation with training statistics
    scaler = data_lib.fit_scaler(np.concatenate(ds.train_x))
    scale = lambda xs: [data_lib.scale(scaler, x) for x in xs]  # noqa: E731
    max_len = max(len(x) for x in ds.train_x + ds.test_x)
    pad = lambda xs: data_lib.pad_sequences(scale(xs), max_len=max_len)  # noqa: E731
    x_train, len_train = pad(ds.train_x)
    x_test, len_test = pad(ds.test_x)
    keep, held = classify.stratified_split(ds.train_y, args.val_fraction, seed=args.seed)
    if not args.quick:  # a small training set gets as many updates as a larger one would
        epochs = max(epochs, -(-args.min_updates // classify.updates_per_epoch(len(keep), args.batch_size)))
    part = lambda x, l, y, i: {"x": x[i], "lengths": l[i], "y": y[i]}  # noqa: E731
    train_set = part(x_train, len_train, ds.train_y, keep)
    val_set = part(x_train, len_train, ds.train_y, held)
    test_set = {"x": x_test, "lengths": len_test, "y": ds.test_y}
    config = dict(
        vars(args),
        dataset=ds.name,
        epochs=epochs,
        hidden=hidden,
        n_classes=n_classes,
        n_train=len(keep),
        n_val=len(held),
        n_test=len(ds.test_y),
        max_len=max_len,
        channels=int(x_train.shape[-1]),
    )
    res = results.Results("speaker_id", config)

    # ---- baselines, fitted on the full training set
    base = lambda name, preds: classify.add_baseline(res, ds.name, name, preds, ds.test_y)  # noqa: E731
    base("majority_class", B.majority_class(ds.train_y, len(ds.test_y)))
    if max_len <= DTW_MAX_LEN:
        base("1nn_dtw", B.nearest_neighbor(ds.train_x, ds.train_y, ds.test_x))
    base("1nn_euclidean", B.nearest_neighbor(ds.train_x, ds.train_y, ds.test_x, metric="euclidean"))

    # ---- recurrent classifier on padded batches with lengths
    trained, preds = classify.classifier_experiment(
        res,
        ds.name,
        train_set,
        val_set,
        test_set,
        cell=args.cell,
        bidirectional=args.bidirectional,
        readout=args.readout,
        augment=args.augment,
        weight_decay=args.weight_decay,
        seeds=range(args.seed, args.seed + args.seeds),
        input_size=x_train.shape[-1],
        hidden=hidden,
        n_classes=n_classes,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        recurrent_dropout=args.dropout,
        impl=args.impl,
        progress=not args.no_progress,
        desc=f"{args.cell} {ds.name}",
    )
    cm = classify.confusion_matrix(ds.test_y, preds, n_classes)
    results.finish(
        res,
        args.out,
        trained.params,
        step=trained.step,
        figures={"confusion.png": lambda path: plot(cm, ds, args.cell, classify.accuracy(preds, ds.test_y), path)},
        header=f"{ds.name}: {config['n_train']} train / {config['n_val']} val / {config['n_test']} test, "
        f"{n_classes} classes, lengths {int(len_train.min())}-{max_len}; {'bi' if args.bidirectional else ''}"
        f"{args.cell}({hidden}), best epoch {','.join(map(str, trained.best_epoch))}/{epochs}"
        + (f", {args.seeds} seeds" if args.seeds > 1 else ""),
    )


def plot(cm, ds, cell, accuracy, path):
    plt = results.pyplot()
    k = len(ds.classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k) if k <= 20 else (10, 10))
    ax.imshow(cm, cmap="Blues")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black",
                    )
        ax.set_xticks(range(k), ds.classes, fontsize=7)
        ax.set_yticks(range(k), ds.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{ds.name}, {cell}: test accuracy {accuracy:.3f}", fontsize=9)
    results.save_figure(fig, path)


main = cli.make_main(parse, run, native_seeds=True)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
