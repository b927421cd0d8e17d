"""Character-level language model on Shakespeare's works: a 2-layer recurrent net trained with
truncated backpropagation through time on random 1,000-character windows of the first 90 %
of the text (file order; 10 chunks of 100, the state carried between them) less its last
100,000 characters (at most a tenth of it), which are the validation text (learning curve, best-checkpoint choice);
scored in bits per character on the held-out last 10 % against 5-gram models (Witten-Bell and
Kneser-Ney) counted on the same training characters in the same run; then temperature-sampled
text.

    python experiments/char_lm.py                        # 1,800 updates of 64 x 100 chars (~9 minutes on 2 idle cores)
    python experiments/char_lm.py --steps 20000 --minutes 60   # longer run
    python experiments/char_lm.py --text-file my.txt     # any UTF-8 text
    python experiments/char_lm.py --quick --cell gru

Outputs in ``--out``: ``metrics.json``, ``char_lm.png`` (learning curve), ``samples.txt``,
``checkpoint/``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import jax
import numpy as np

from lstm_jax import baselines as B
from lstm_jax import datasets, train
from lstm_jax import experiment as E

PROMPT = "ROMEO.\n"


def parse(argv):
    p = E.make_parser("char_lm", __doc__.splitlines()[0])
    p.add_argument("--text-file", help="UTF-8 text to model instead of Shakespeare")
    p.add_argument("--steps", type=int, default=1800,
                   help="optimiser updates; the cosine learning-rate decay spans them (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=8.5,
                   help="wall-clock cap on training, stops earlier on a slow machine (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100, help="characters per truncated-BPTT chunk")
    p.add_argument("--chunks", type=int, default=10, help="chunks per window, state carried between them")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--dropout", type=float, default=0.1,
                   help="dropout between the layers and before the head (default: %(default)s)")
    p.add_argument("--impl", choices=("scan", "auto", "fused"), default="scan",
                   help="LSTM layer implementation: fused = the custom-VJP layer, auto = fused for LSTMs (default: %(default)s)")
    p.add_argument("--order", type=int, default=5, help="n of the n-gram baselines")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    p.add_argument("--sample-chars", type=int, default=400)
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    with E.fast_compile(args.quick):  # --quick costs compile time, not run time
        run(args)


def run(args):
    text = datasets.text_file(args.text_file) if args.text_file else datasets.shakespeare()
    name = "shakespeare" if not args.text_file else args.text_file.rsplit("/", 1)[-1]
    hidden, seconds, seq_len, chunks = args.hidden, args.minutes * 60, args.seq_len, args.chunks
    n_val, sample_chars = 100_000, args.sample_chars
    if args.quick:
        text = text[:300_000]
        hidden, seq_len, chunks, n_val, sample_chars = 32, 50, 2, 20_000, 60
    cut = int(0.9 * len(text))
    vocab = E.CharVocab.of(text[:cut])
    ids_train, ids_test = vocab.encode(text[:cut]), vocab.encode(text[cut:])
    # the validation text is the end of the training part (at most a tenth of it), never the test text
    n_val = min(n_val, len(ids_train) // 10)
    ids_train, val_ids = ids_train[:-n_val], ids_train[-n_val:]
    config = dict(vars(args), dataset=name, hidden=hidden, seq_len=seq_len, chunks=chunks, vocab=len(vocab.chars),
                  n_train_chars=len(ids_train), n_val_chars=len(val_ids), n_test_chars=len(ids_test))
    res = E.Results("char_lm", config)

    # ---- n-gram baselines on the same training characters
    for smoothing, label in (("witten_bell", "wb"), ("kneser_ney", "kn")):
        model = B.fit_ngram(ids_train, len(vocab.chars), order=args.order, smoothing=smoothing)
        res.add(name, f"{args.order}gram_{label}", "bits_per_char", "test", B.ngram_bits_per_char(model, ids_test))

    # ---- recurrent LM: truncated BPTT over random windows of `chunks` x `seq_len` characters
    params = jax.jit(partial(E.init_seq_model, cell=args.cell, input_size=args.embed, hidden_size=hidden,
                             output_size=len(vocab.chars), num_layers=args.layers, vocab_size=len(vocab.chars)))(
        jax.random.key(args.seed))
    rng = np.random.default_rng(args.seed)
    sample = lambda step: E.lm_random_windows(ids_train, args.batch_size, chunks * seq_len, rng)  # noqa: E731
    calls = 10 if args.quick else max(1, args.steps // chunks)
    updates = calls * chunks
    optimizer = train.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=min(200, updates // 10),
                                     total_steps=updates, end_fraction=0.05)
    final, history = E.train_steps(
        None, params, optimizer, sample, steps=calls, seed=args.seed, max_seconds=1.05 * seconds,
        train_step=E.make_lm_train_step(optimizer, chunk=seq_len, impl=args.impl, dropout=args.dropout),
        eval_fn=lambda p: {"val_bits_per_char": E.lm_bits_per_char(p, val_ids)}, eval_every=max(1, 500 // chunks),
        monitor="val_bits_per_char", progress=not args.no_progress, desc=f"{args.cell} {name}",
    )
    for record in history:
        record["updates"] = record["step"] * chunks
    done = history[-1]["updates"]
    res.add(name, args.cell, "bits_per_char", "test", E.lm_bits_per_char(final, ids_test), updates=done,
            chars_seen=done * args.batch_size * seq_len)
    res.extra = {"history": history}

    samples = [f"--- temperature {t} ---\n" + E.lm_sample(final, vocab, PROMPT, sample_chars, t, jax.random.key(i))
               for i, t in enumerate(args.temperatures)]
    out = args.out
    E.save_checkpoint(out, final, step=done, meta={"config": config, "vocab": "".join(vocab.chars)})
    plot(history, res, name, args.cell, f"{out}/char_lm.png")
    res.write(out)
    (Path(out) / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    print(f"{name}: {len(ids_train):,} train / {len(ids_test):,} test chars, vocab {len(vocab.chars)}; "
          f"{args.layers}x{args.cell}({hidden}), {done} updates of {args.batch_size}x{seq_len} chars")
    print(res.table())
    print("\n" + samples[min(1, len(samples) - 1)])
    print(f"({res.timer():.0f} s, results in {out})")


def plot(history, res, name, cell, path):
    plt = E.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ev = [h for h in history if "val_bits_per_char" in h]
    ax.plot([h["updates"] for h in ev], [h["val_bits_per_char"] for h in ev], "o-", color="tab:red", ms=3,
            label=f"{cell} (validation text)")
    for row in res.rows:
        if "gram" in row["model"]:
            ax.axhline(row["value"], ls="--", lw=1, color="gray" if row["model"].endswith("wb") else "black",
                       label=f"{row['model']} {row['value']:.3f}")
    ax.set_xlabel("optimiser updates")
    ax.set_ylabel("bits per character")
    ax.set_ylim(1.0, 4.0)
    ax.set_title(f"{name}: character language model")
    ax.legend(fontsize=8)
    E.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(E.run_main(main))
