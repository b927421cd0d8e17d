"""Character language models: a vocabulary of characters, truncated-BPTT training on random
windows of a long text (the state carried from chunk to chunk), bits per character with the
whole left context, n-gram baselines and temperature sampling; ``train_char_lm`` is the
training recipe of ``experiments/char_lm.py``, its budget a number of optimiser updates.

Shapes: ``b`` streams (batch), ``c`` characters per chunk, ``V`` characters in the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.keys import as_key
from lstm_jax.tasks.loops import train_steps
from lstm_jax.tasks.results import Results
from lstm_jax.tasks.seqmodel import SeqModel, apply_seq_model, init_seq_model
from lstm_jax.typing import PyTree

__all__ = [
    "CharVocab",
    "CharData",
    "char_data",
    "lm_zero_state",
    "lm_chunk_loss",
    "make_lm_train_step",
    "lm_random_windows",
    "lm_block_bits",
    "lm_bits_per_char",
    "ngram_block_bits",
    "lm_sample",
    "CharLMRun",
    "train_char_lm",
    "add_ngram_baselines",
    "lm_samples",
]


class CharVocab(NamedTuple):
    """Characters of a training text; id 0 stands for characters never seen in training."""

    chars: tuple

    @staticmethod
    def of(text: str) -> CharVocab:
        return CharVocab(("\x00",) + tuple(sorted(set(text) - {"\x00"})))

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        return np.array([index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class CharData(NamedTuple):
    """A text as ids: train, validation (the end of the training part) and test (the end of the text)."""

    vocab: CharVocab  # of the training part (validation included)
    train: np.ndarray  # [n_train] int32
    val: np.ndarray  # [n_val] int32
    test: np.ndarray  # [n_test] int32


def char_data(text: str, *, n_val: int = 100_000, train_fraction: float = 0.9) -> CharData:
    """The first ``train_fraction`` of ``text`` (file order) trains, less its last ``n_val``
    characters (at most a tenth of it), which are the validation text; the rest is the test text."""
    cut = int(train_fraction * len(text))
    vocab = CharVocab.of(text[:cut])
    ids_train, ids_test = vocab.encode(text[:cut]), vocab.encode(text[cut:])
    # the validation text is the end of the training part (at most a tenth of it), never the test text
    n_val = min(n_val, len(ids_train) // 10)
    return CharData(vocab, ids_train[:-n_val], ids_train[-n_val:], ids_test)


def lm_zero_state(params: SeqModel, batch_size: int) -> PyTree:
    """Zero recurrent state of a batch (leaves ``[b, L, D, d]``)."""
    from lstm_jax.layers import zero_state

    return jax.tree_util.tree_map(lambda s: jnp.zeros((batch_size,) + s.shape, s.dtype), zero_state(params.rnn))


def lm_chunk_loss(params: SeqModel, carry, piece: dict, rng, *, impl: str = "auto", dropout: float = 0.0) -> tuple:
    """Truncated-BPTT chunk loss: ``piece = {"x": [b, c] ids, "y": [b, c] next ids}`` from ``carry``.

    ``dropout`` (between the layers and on the head's input) applies only when ``rng`` is given.
    Returns ``(mean nats, (carry, {"bits_per_char": ...}))`` as ``lstm_jax.train.make_tbptt_train_step`` expects.
    """
    from lstm_jax import losses

    rng = None if rng is None else as_key(rng, "rng")
    logits, carry = apply_seq_model(
        params,
        piece["x"],
        readout="sequence",
        initial_state=carry,
        return_state=True,
        impl=impl,
        dropout=dropout,
        dropout_key=rng if dropout > 0.0 else None,
    )
    loss = losses.softmax_cross_entropy(logits, piece["y"])
    return loss, (carry, {"bits_per_char": losses.bits_per_char(loss)})


def make_lm_train_step(optimizer, *, chunk: int, impl: str = "auto", dropout: float = 0.0) -> Callable:
    """TBPTT step over batches ``{"x", "y": [b, k*chunk]}``: ``k`` optimiser updates per call, the
    state carried from chunk to chunk (``lstm_jax.train.make_tbptt_train_step``); ``impl`` and
    ``dropout`` as for ``lm_chunk_loss``."""
    from lstm_jax import train as train_lib

    return train_lib.make_tbptt_train_step(
        partial(lm_chunk_loss, impl=impl, dropout=dropout),
        optimizer,
        chunk=chunk,
        init_carry=lambda p, b: lm_zero_state(p, b["x"].shape[0]),
    )


def lm_random_windows(ids: np.ndarray, batch_size: int, length: int, rng: np.random.Generator) -> dict:
    """``batch_size`` random windows of ``length + 1`` ids -> ``{"x": [b, length], "y": [b, length]}`` (next ids)."""
    starts = rng.integers(0, len(ids) - length - 1, batch_size)
    window = ids[starts[:, None] + np.arange(length + 1)[None, :]]
    return {"x": window[:, :-1], "y": window[:, 1:]}


_LM_CHUNK: dict = {}


def _streams(n_ids: int, streams: int, chunk: int) -> tuple:
    n = (n_ids - 1) // streams
    n_chunks = n // chunk
    if n_chunks < 1:
        raise ValueError(f"expected at least {streams * chunk + 1} ids, got {n_ids}")
    return n_chunks * chunk, n_chunks


def lm_block_bits(params: SeqModel, ids: np.ndarray, *, streams: int = 32, chunk: int = 200) -> np.ndarray:
    """Bits per character of every ``chunk``-character block: ``[streams, n_chunks]``.

    ``ids`` is read as ``streams`` parallel streams (stream ``i`` starts at ``i * n``), the
    state carried across chunks, so every character after the first of its stream is scored
    with its whole left context in the stream. Block ``(i, c)`` scores the characters at
    ``i * n + c * chunk + 1 ..`` (``+ chunk``); the last ``< streams * chunk`` are not scored.
    The blocks are the units of the paired bootstrap against the n-gram baselines
    (``ngram_block_bits``)."""
    n, n_chunks = _streams(len(ids), streams, chunk)
    ids = np.asarray(ids)
    inputs = np.stack([ids[i * n : (i + 1) * n] for i in range(streams)])
    targets = np.stack([ids[i * n + 1 : (i + 1) * n + 1] for i in range(streams)])
    if "fn" not in _LM_CHUNK:

        def block(p, c, x, y):
            from lstm_jax import losses

            logits, c = apply_seq_model(p, x, readout="sequence", initial_state=c, return_state=True)
            return losses.bits_per_char(jax.vmap(losses.softmax_cross_entropy)(logits, y)), c  # per stream

        _LM_CHUNK["fn"] = jax.jit(block)
    carry, out = lm_zero_state(params, streams), []
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        bits, carry = _LM_CHUNK["fn"](params, carry, inputs[:, sl], targets[:, sl])
        out.append(np.asarray(bits, np.float64))
    return np.stack(out, axis=1)


def lm_bits_per_char(params: SeqModel, ids: np.ndarray, *, streams: int = 32, chunk: int = 200) -> float:
    """Bits per character of ``ids``: the mean of ``lm_block_bits`` (equal-sized blocks)."""
    return float(lm_block_bits(params, ids, streams=streams, chunk=chunk).mean())


def ngram_block_bits(model, ids: np.ndarray, *, streams: int = 32, chunk: int = 200) -> np.ndarray:
    """An n-gram model's bits per character on the blocks of ``lm_block_bits``: ``[streams, n_chunks]``."""
    from lstm_jax import baselines as B

    n, n_chunks = _streams(len(ids), streams, chunk)
    bits = -B.ngram_log_probs(model, np.asarray(ids)) / math.log(2.0)
    starts = np.arange(streams)[:, None] * n + np.arange(n_chunks)[None, :] * chunk + 1
    return bits[starts[..., None] + np.arange(chunk)].mean(axis=-1)


_SAMPLERS: dict = {}


def lm_sample(params: SeqModel, vocab: CharVocab, prompt: str, n_chars: int, temperature: float, key) -> str:
    """Read ``prompt``, then draw ``n_chars`` characters at ``temperature`` (one jitted ``lax.scan``).

    ``key``: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)`` (same text).
    """
    key = as_key(key)
    if n_chars not in _SAMPLERS:

        @jax.jit
        def run(params, ids, key, temperature):
            logits, state = apply_seq_model(params, ids, readout="sequence", return_state=True)

            def step(carry, k):
                last, state = carry
                nxt = jax.random.categorical(k, last / temperature)
                out, state = apply_seq_model(
                    params, nxt[:, None], readout="sequence", initial_state=state, return_state=True
                )
                return (out[:, 0], state), nxt[0]

            _, chars = jax.lax.scan(step, (logits[:, -1], state), jax.random.split(key, n_chars))
            return chars

        _SAMPLERS[n_chars] = run
    ids = jnp.asarray(vocab.encode(prompt))[None]
    return prompt + vocab.decode(np.asarray(_SAMPLERS[n_chars](params, ids, key, jnp.float32(temperature))))


class CharLMRun(NamedTuple):
    """What ``train_char_lm`` returns."""

    params: SeqModel  # best on the validation text
    history: list  # records of ``train_steps`` plus ``updates`` (optimiser updates so far)
    updates: int  # optimiser updates that ran
    updates_planned: int  # the budget (a multiple of ``chunks``)
    stopped_early: bool  # the ``max_seconds`` cap cut the run short


def train_char_lm(
    data: CharData,
    *,
    cell: str = "lstm",
    embed: int = 64,
    hidden: int = 256,
    layers: int = 2,
    seq_len: int = 100,
    chunks: int = 10,
    batch_size: int = 64,
    lr: float = 1e-2,
    dropout: float = 0.1,
    impl: str = "auto",
    updates: int = 1800,
    max_seconds: Optional[float] = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "",
) -> CharLMRun:
    """Train a ``layers`` x ``cell(hidden)`` LM on ``data.train`` with truncated BPTT: each call
    reads ``batch_size`` random windows of ``chunks`` x ``seq_len`` characters, one update per
    chunk, the state carried between chunks. Adam with warmup and cosine decay over ``updates``
    (rounded down to whole windows), clipping 1.0; the best params on ``data.val`` (every ~500
    updates and at the end) are returned. ``max_seconds`` (off by default) caps the wall clock;
    a run it cuts short says so in ``stopped_early`` and ``updates``."""
    from lstm_jax import train

    n_vocab = len(data.vocab.chars)
    params = jax.jit(
        partial(
            init_seq_model,
            cell=cell,
            input_size=embed,
            hidden_size=hidden,
            output_size=n_vocab,
            num_layers=layers,
            vocab_size=n_vocab,
        )
    )(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    sample = lambda step: lm_random_windows(data.train, batch_size, chunks * seq_len, rng)  # noqa: E731
    calls = max(1, updates // chunks)
    planned = calls * chunks
    optimizer = train.make_optimizer(
        lr, clip_norm=1.0, warmup_steps=min(200, planned // 10), total_steps=planned, end_fraction=0.05
    )
    run = train_steps(
        None,
        params,
        optimizer,
        sample,
        steps=calls,
        seed=seed,
        max_seconds=max_seconds,
        train_step=make_lm_train_step(optimizer, chunk=seq_len, impl=impl, dropout=dropout),
        eval_fn=lambda p: {"val_bits_per_char": lm_bits_per_char(p, data.val)},
        eval_every=max(1, 500 // chunks),
        monitor="val_bits_per_char",
        progress=progress,
        desc=desc,
    )
    for record in run.history:
        record["updates"] = record["step"] * chunks
    return CharLMRun(run.params, run.history, run.steps * chunks, planned, run.stopped_early)


def add_ngram_baselines(res: Results, dataset: str, data: CharData, *, order: int = 5) -> None:
    """Add the test bits per character of Witten-Bell (``<order>gram_wb``) and Kneser-Ney
    (``<order>gram_kn``) n-gram models counted on ``data.train`` to ``res``."""
    from lstm_jax import baselines as B

    for smoothing, label in (("witten_bell", "wb"), ("kneser_ney", "kn")):
        model = B.fit_ngram(data.train, len(data.vocab.chars), order=order, smoothing=smoothing)
        name = f"{order}gram_{label}"
        res.add(dataset, name, "bits_per_char", "test", B.ngram_bits_per_char(model, data.test))
        if len(data.test) > 32 * 200:
            blocks = ngram_block_bits(model, data.test).ravel()
            res.add_examples(dataset, name, "bits_per_char", "test", blocks, baseline=True)


def lm_samples(params: SeqModel, vocab: CharVocab, prompt: str, n_chars: int, temperatures: Sequence[float]) -> list:
    """One sample per temperature (the ``i``-th drawn with ``jax.random.key(i)``), each headed by
    ``--- temperature t ---``."""
    return [
        f"--- temperature {t} ---\n" + lm_sample(params, vocab, prompt, n_chars, t, jax.random.key(i))
        for i, t in enumerate(temperatures)
    ]
