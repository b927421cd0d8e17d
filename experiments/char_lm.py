"""Character-level language model on Shakespeare's works: a 2-layer recurrent net trained on
random crops of the first 90 % of the text (file order), scored in bits per character on
the held-out last 10 % against 5-gram models (Witten-Bell and Kneser-Ney) counted in the
same run; then temperature-sampled text.

    python experiments/char_lm.py                        # ~8 minutes of training by default
    python experiments/char_lm.py --minutes 30           # longer run
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
import jax.numpy as jnp
import numpy as np

from lstm_jax import baselines as B
from lstm_jax import datasets, losses, train
from lstm_jax import experiment as E

PROMPT = "ROMEO.\n"


def parse(argv):
    p = E.make_parser("char_lm", __doc__.splitlines()[0])
    p.add_argument("--text-file", help="UTF-8 text to model instead of Shakespeare")
    p.add_argument("--minutes", type=float, default=7.5, help="training wall-clock budget (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100_000, help="max training steps (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--order", type=int, default=5, help="n of the n-gram baselines")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    p.add_argument("--sample-chars", type=int, default=400)
    return p.parse_args(argv)


class Vocab:
    """Characters of the training text plus one unknown symbol (id 0)."""

    def __init__(self, text: str):
        self.chars = ["\x00"] + sorted(set(text) - {"\x00"})
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def lm_loss(params, batch, rng):
    logits = E.apply_seq_model(params, batch["x"], readout="sequence")
    loss = losses.next_token_loss(logits, batch["x"])
    return loss, {"bits_per_char": losses.bits_per_char(loss)}


def stream_nats(params, ids, *, streams: int = 32, chunk: int = 200):
    """Total nats of ``ids`` read as ``streams`` parallel streams in chunks with the state carried.

    Every character after the first of each stream is scored with its full left context in
    that stream. Returns ``(total_nats, count)``.
    """
    n = (len(ids) - 1) // streams
    n_chunks = max(1, n // chunk)
    n = n_chunks * chunk
    data = np.asarray(ids[: streams * n + 1])
    inputs = data[:-1].reshape(streams, n)
    targets = np.stack([data[i * n + 1 : (i + 1) * n + 1] for i in range(streams)])
    run = _chunk_nll()
    state, total = None, 0.0
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        nll, state = run(params, jnp.asarray(inputs[:, sl]), jnp.asarray(targets[:, sl]), state)
        total += float(nll)
    return total, streams * n


_CHUNK = {}


def _chunk_nll():
    if "fn" not in _CHUNK:
        def fn(params, x, y, state):
            logits, state = E.apply_seq_model(params, x, readout="sequence", initial_state=state, return_state=True)
            logp = jax.nn.log_softmax(logits, axis=-1)
            return -jnp.sum(jnp.take_along_axis(logp, y[..., None], axis=-1)), state

        jitted = jax.jit(fn)

        def call(params, x, y, state):
            if state is None:  # the first chunk starts from zeros of the right structure
                _, zero = jax.eval_shape(lambda p, x: E.apply_seq_model(p, x, readout="sequence", return_state=True),
                                         params, x)
                state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            return jitted(params, x, y, state)

        _CHUNK["fn"] = call
    return _CHUNK["fn"]


_SAMPLERS = {}


def sample_text(params, vocab, prompt: str, n_chars: int, temperature: float, key) -> str:
    """Feed ``prompt``, then draw ``n_chars`` characters at ``temperature`` (one jitted scan)."""
    if n_chars not in _SAMPLERS:

        @jax.jit
        def run(params, ids, key, temperature):
            logits, state = E.apply_seq_model(params, ids, readout="sequence", return_state=True)

            def step(carry, k):
                last_logits, state = carry
                nxt = jax.random.categorical(k, last_logits / temperature)
                out, state = E.apply_seq_model(params, nxt[:, None], readout="sequence", initial_state=state,
                                               return_state=True)
                return (out[:, 0], state), nxt[0]

            _, chars = jax.lax.scan(step, (logits[:, -1], state), jax.random.split(key, n_chars))
            return chars

        _SAMPLERS[n_chars] = run
    ids = jnp.asarray(vocab.encode(prompt))[None]
    return prompt + vocab.decode(np.asarray(_SAMPLERS[n_chars](params, ids, key, jnp.float32(temperature))))


def main(argv=None):
    args = parse(argv)
    with E.fast_compile(args.quick):  # --quick costs compile time, not run time
        run(args)


def run(args):
    text = datasets.text_file(args.text_file) if args.text_file else datasets.shakespeare()
    name = "shakespeare" if not args.text_file else args.text_file.rsplit("/", 1)[-1]
    hidden, layers, seconds, n_val_eval = args.hidden, args.layers, args.minutes * 60, 100_000
    steps, eval_every = args.steps, 500
    if args.quick:
        text = text[:300_000]
        hidden, steps, seconds, eval_every, n_val_eval = 64, 30, 60, 30, 20_000
    cut = int(0.9 * len(text))
    vocab = Vocab(text[:cut])
    ids_train, ids_test = vocab.encode(text[:cut]), vocab.encode(text[cut:])
    config = dict(vars(args), dataset=name, hidden=hidden, layers=layers, vocab=len(vocab.chars),
                  n_train_chars=len(ids_train), n_test_chars=len(ids_test))
    res = E.Results("char_lm", config)

    # ---- n-gram baselines on the same split
    for smoothing, label in (("witten_bell", "wb"), ("kneser_ney", "kn")):
        model = B.fit_ngram(ids_train, len(vocab.chars), order=args.order, smoothing=smoothing)
        res.add(name, f"{args.order}gram_{label}", "bits_per_char", "test", B.ngram_bits_per_char(model, ids_test))

    # ---- recurrent LM on random crops
    params = jax.jit(partial(E.init_seq_model, cell=args.cell, input_size=args.embed, hidden_size=hidden,
                             output_size=len(vocab.chars), num_layers=layers, vocab_size=len(vocab.chars)))(
        jax.random.key(args.seed))
    rng = np.random.default_rng(args.seed)
    window = args.seq_len + 1
    offsets = np.arange(window)

    def sample_batch(step):
        starts = rng.integers(0, len(ids_train) - window, args.batch_size)
        return {"x": ids_train[starts[:, None] + offsets]}

    val_ids = ids_test[:n_val_eval]

    def eval_fn(p):
        nats, count = stream_nats(p, val_ids)
        return {"val_bits_per_char": nats / count / np.log(2.0)}

    optimizer = train.make_optimizer(args.lr, clip_norm=1.0, warmup_steps=min(200, steps // 10))
    final, history = E.train_steps(
        lm_loss, params, optimizer, sample_batch, steps=steps, seed=args.seed, max_seconds=seconds,
        eval_fn=eval_fn, eval_every=eval_every, monitor="val_bits_per_char", progress=not args.no_progress,
        desc=f"{args.cell} {name}",
    )
    nats, count = stream_nats(final, ids_test)
    bpc = nats / count / np.log(2.0)
    res.add(name, args.cell, "bits_per_char", "test", bpc, steps=history[-1]["step"],
            chars_seen=history[-1]["step"] * args.batch_size * args.seq_len)
    res.extra = {"history": history}

    samples = [f"--- temperature {t} ---\n" + sample_text(final, vocab, PROMPT, args.sample_chars if not args.quick else 60,
                                                           t, jax.random.key(args.seed + i))
               for i, t in enumerate(args.temperatures)]
    out = args.out
    E.save_checkpoint(out, final, step=history[-1]["step"], meta={"config": config, "vocab": vocab.chars})
    plot(history, res, name, args.cell, f"{out}/char_lm.png")
    res.write(out)
    (Path(out) / "samples.txt").write_text("\n\n".join(samples) + "\n", encoding="utf-8")
    print(f"{name}: {len(ids_train):,} train / {len(ids_test):,} test chars, vocab {len(vocab.chars)}; "
          f"{layers}x{args.cell}({hidden}), {history[-1]['step']} steps")
    print(res.table())
    print("\n" + samples[min(1, len(samples) - 1)])
    print(f"({res.timer():.0f} s, results in {out})")


def plot(history, res, name, cell, path):
    plt = E.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ev = [h for h in history if "val_bits_per_char" in h]
    ax.plot([h["step"] for h in ev], [h["val_bits_per_char"] for h in ev], "o-", color="tab:red", ms=3,
            label=f"{cell} (held-out sample)")
    for row in res.rows:
        if "gram" in row["model"]:
            ax.axhline(row["value"], ls="--", lw=1, color="gray" if row["model"].endswith("wb") else "black",
                       label=f"{row['model']} {row['value']:.3f}")
    ax.set_xlabel("training step")
    ax.set_ylabel("bits per character")
    ax.set_ylim(1.0, 4.0)
    ax.set_title(f"{name}: character language model")
    ax.legend(fontsize=8)
    E.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(E.run_main(main))
