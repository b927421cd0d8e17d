"""Character-level language model on Shakespeare's works: a 2-layer recurrent net trained with
truncated backpropagation through time on random 1,000-character windows of the first 90 %
of the text (file order; 10 chunks of 100, the state carried between them) less its last
100,000 characters (at most a tenth of it), which are the validation text (learning curve, best-checkpoint choice);
scored in bits per character on the held-out last 10 % against 5-gram models (Witten-Bell and
Kneser-Ney) counted on the same training characters in the same run; then temperature-sampled
text.

The budget is a number of optimiser updates (``--steps``), so the numbers do not depend on the
machine's speed or load. ``--minutes`` (off by default) adds a wall-clock cap; a run it cuts
short says so on stdout and in ``metrics.json`` (``"stopped_early": true``, ``"updates"`` that
ran, ``"updates_planned"``).

    python experiments/char_lm.py                        # 1,800 updates of 64 x 100 chars (~9 minutes on 2 idle cores)
    python experiments/char_lm.py --steps 20000          # longer run
    python experiments/char_lm.py --steps 20000 --minutes 60   # ... stopped after an hour at the latest
    python experiments/char_lm.py --text-file my.txt     # any UTF-8 text
    python experiments/char_lm.py --quick --cell gru

Outputs in ``--out``: ``metrics.json``, ``char_lm.png`` (learning curve), ``samples.txt``,
``checkpoint/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lstm_jax import datasets
from lstm_jax.tasks import char_lm, cli, results

PROMPT = "ROMEO.\n"


def parse(argv):
    p = cli.make_parser("char_lm", __doc__.splitlines()[0])
    p.add_argument("--text-file", help="UTF-8 text to model instead of Shakespeare")
    p.add_argument(
        "--steps",
        type=int,
        default=1800,
        help="optimiser updates, the budget; the cosine learning-rate decay spans them (default: %(default)s)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="optional wall-clock cap on training; a run it cuts short is reported as stopped early (default: no cap)",
    )
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100, help="characters per truncated-BPTT chunk")
    p.add_argument("--chunks", type=int, default=10, help="chunks per window, state carried between them")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout between the layers and before the head (default: %(default)s)",
    )
    p.add_argument("--order", type=int, default=5, help="n of the n-gram baselines")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    p.add_argument("--sample-chars", type=int, default=400)
    args = p.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        p.error(f"expected --minutes > 0, got {args.minutes}")
    return args


def run(args):
    text = datasets.text_file(args.text_file) if args.text_file else datasets.shakespeare()
    name = "shakespeare" if not args.text_file else args.text_file.rsplit("/", 1)[-1]
    hidden, seq_len, chunks, n_val, sample_chars = args.hidden, args.seq_len, args.chunks, 100_000, args.sample_chars
    updates = args.steps
    if args.quick:
        text = text[:300_000]
        hidden, seq_len, chunks, n_val, sample_chars = 32, 50, 2, 20_000, 60
        updates = 10 * chunks
    data = char_lm.char_data(text, n_val=n_val)
    config = dict(
        vars(args),
        dataset=name,
        hidden=hidden,
        seq_len=seq_len,
        chunks=chunks,
        vocab=len(data.vocab.chars),
        n_train_chars=len(data.train),
        n_val_chars=len(data.val),
        n_test_chars=len(data.test),
    )
    res = results.Results("char_lm", config)
    char_lm.add_ngram_baselines(res, name, data, order=args.order)

    lm = char_lm.train_char_lm(
        data,
        cell=args.cell,
        embed=args.embed,
        hidden=hidden,
        layers=args.layers,
        seq_len=seq_len,
        chunks=chunks,
        batch_size=args.batch_size,
        lr=args.lr,
        dropout=args.dropout,
        impl=args.impl,
        updates=updates,
        max_seconds=None if args.minutes is None else 60.0 * args.minutes,
        seed=args.seed,
        progress=not args.no_progress,
        desc=f"{args.cell} {name}",
    )
    blocks = char_lm.lm_block_bits(lm.params, data.test)  # [streams, chunks] of 200 characters
    res.add(
        name,
        args.cell,
        "bits_per_char",
        "test",
        float(blocks.mean()),
        updates=lm.updates,
        chars_seen=lm.updates * args.batch_size * seq_len,
    )
    res.add_examples(name, args.cell, "bits_per_char", "test", blocks.ravel(), baseline=False)
    res.record_budget(
        lm.updates, lm.updates_planned, stopped_early=lm.stopped_early, why=f"the --minutes {args.minutes} cap"
    )
    res.extra["history"] = lm.history

    samples = char_lm.lm_samples(lm.params, data.vocab, PROMPT, sample_chars, args.temperatures)
    results.write_text(Path(args.out) / "samples.txt", "\n\n".join(samples) + "\n")
    results.finish(
        res,
        args.out,
        lm.params,
        step=lm.updates,
        meta={"vocab": "".join(data.vocab.chars)},
        figures={"char_lm.png": lambda path: plot(lm.history, res, name, args.cell, path)},
        header=f"{name}: {len(data.train):,} train / {len(data.test):,} test chars, vocab {len(data.vocab.chars)}; "
        f"{args.layers}x{args.cell}({hidden}), {lm.updates} of {lm.updates_planned} updates of "
        f"{args.batch_size}x{seq_len} chars" + (" (STOPPED EARLY by --minutes)" if lm.stopped_early else ""),
        footer="\n" + samples[min(1, len(samples) - 1)],
    )


def plot(history, res, name, cell, path):
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ev = [h for h in history if "val_bits_per_char" in h]
    ax.plot(
        [h["updates"] for h in ev],
        [h["val_bits_per_char"] for h in ev],
        "o-",
        color="tab:red",
        ms=3,
        label=f"{cell} (validation text)",
    )
    for row in res.rows:
        if "gram" in row["model"]:
            ax.axhline(
                row["value"],
                ls="--",
                lw=1,
                color="gray" if row["model"].endswith("wb") else "black",
                label=f"{row['model']} {row['value']:.3f}",
            )
    ax.set_xlabel("optimiser updates")
    ax.set_ylabel("bits per character")
    ax.set_ylim(1.0, 4.0)
    ax.set_title(f"{name}: character language model")
    ax.legend(fontsize=8)
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
