"""Review sentiment (Amazon fine-food reviews, "great" vs other): a bidirectional recurrent
net over word embeddings learned from scratch, pooled over the valid steps of each review
(lengths masking), against TF-IDF + logistic regression and the majority class.

    python experiments/sentiment.py
    python experiments/sentiment.py --cell gru --no-bidirectional
    python experiments/sentiment.py --quick

Outputs in ``--out``: ``metrics.json``, ``sentiment.png`` (learning curve and accuracies),
``checkpoint/``.
"""

from __future__ import annotations

import sys

from lstm_jax import baselines as B
from lstm_jax import datasets
from lstm_jax.tasks import classify, cli, results, text


def parse(argv):
    p = cli.make_parser("sentiment", __doc__.splitlines()[0])
    p.add_argument("--max-len", type=int, default=200, help="tokens kept per review (the first ones)")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--no-bidirectional", dest="bidirectional", action="store_false")
    p.add_argument("--readout", choices=("final", "mean", "max"), default="max")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument(
        "--embed-init",
        choices=("random", "ppmi_svd"),
        default="ppmi_svd",
        help="embedding init: random, or SVD of the train texts' word co-occurrence PPMI (no labels)",
    )
    return p.parse_args(argv)


def run(args):
    ds = datasets.fine_food_reviews()
    epochs, max_len, hidden, train_text, train_y = args.epochs, args.max_len, args.hidden, ds.train_text, ds.train_y
    if args.quick:
        epochs, max_len, hidden = 1, 64, 16
        train_text, train_y = train_text[:800], train_y[:800]
    train_tokens = [text.tokenize(t) for t in train_text]
    test_tokens = [text.tokenize(t) for t in ds.test_text]
    keep, held = classify.stratified_split(train_y, args.val_fraction, seed=args.seed)
    vocab = text.build_vocab([train_tokens[i] for i in keep], min_count=2)
    x_train, len_train = text.encode_texts(train_tokens, vocab, max_len=max_len)
    x_test, len_test = text.encode_texts(test_tokens, vocab, max_len=max_len)
    part = lambda i: {"x": x_train[i], "lengths": len_train[i], "y": train_y[i]}  # noqa: E731
    train_set, val_set = part(keep), part(held)
    test_set = {"x": x_test, "lengths": len_test, "y": ds.test_y}
    config = dict(
        vars(args),
        epochs=epochs,
        max_len=max_len,
        hidden=hidden,
        vocab=len(vocab.words),
        n_train=len(keep),
        n_val=len(held),
        n_test=len(ds.test_y),
    )
    res = results.Results("sentiment", config)

    base = lambda name, preds: classify.add_baseline(res, ds.name, name, preds, ds.test_y)  # noqa: E731
    base("majority_class", B.majority_class(train_y, len(ds.test_y)))
    cs = (10.0,) if args.quick else (0.3, 1.0, 3.0, 10.0, 30.0)  # C by 5-fold CV on train
    base("tfidf_logreg", B.tfidf_logreg(train_text, train_y, ds.test_text, Cs=cs))

    embed_init = None
    if args.embed_init == "ppmi_svd":  # from the training texts only, no labels
        embed_init = text.ppmi_svd_vectors(train_tokens, vocab, args.embed, seed=args.seed)
    trained, _ = classify.classifier_experiment(
        res,
        ds.name,
        train_set,
        val_set,
        test_set,
        cell=args.cell,
        readout=args.readout,
        bidirectional=args.bidirectional,
        input_size=args.embed,
        hidden=hidden,
        n_classes=2,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        recurrent_dropout=args.dropout,
        vocab_size=len(vocab.words),
        embed_init=embed_init,
        weight_decay=1e-4,
        seeds=range(args.seed, args.seed + args.seeds),
        impl=args.impl,
        progress=not args.no_progress,
        desc=f"{args.cell} reviews",
    )
    results.finish(
        res,
        args.out,
        trained.params,
        step=trained.step,
        figures={"sentiment.png": lambda path: plot(trained.histories[0], res, args.cell, path)},
        header=f"fine-food reviews: {len(keep)} train / {len(held)} val / {len(ds.test_y)} test, vocab "
        f"{len(vocab.words)}, {'bi' if args.bidirectional else ''}{args.cell}({hidden}) {args.readout}-pooled, "
        f"best epoch {','.join(map(str, trained.best_epoch))}/{epochs}"
        + (f", {args.seeds} seeds" if args.seeds > 1 else ""),
    )


def plot(history, res, cell, path):
    plt = results.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    ax.plot([h["epoch"] for h in history], [h["train_accuracy"] for h in history], label="train")
    ax.plot(
        [h["epoch"] for h in history if "val_accuracy" in h],
        [h["val_accuracy"] for h in history if "val_accuracy" in h],
        "o-",
        ms=3,
        label="val",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.set_title(f"{cell}: learning curve", fontsize=9)
    rows = res.summary("test")
    bx.barh([r["model"] for r in rows], [r["value"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        bx.text(r["value"], i, f" {r['value']:.3f}", va="center", fontsize=8)
    bx.set_xlim(0.5, 1.0)
    bx.set_title("test accuracy", fontsize=9)
    results.save_figure(fig, path)


main = cli.make_main(parse, run, native_seeds=True)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
