"""Training and decoding of the CTC recogniser of ``experiments/speech_ctc.py``: padded
duration buckets, a step-budgeted loop selecting on dev greedy CER, batched jitted forward
passes, greedy and prefix-beam (+ character LM) decoding, and the LM weight search on dev.

Shapes: ``B`` batch, ``T`` padded frames of a bucket, ``m`` bands, ``k`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from lstm_jax.speech import ctc
from lstm_jax.speech import features as F
from lstm_jax.speech import metrics as M
from lstm_jax.speech.lm import CharNgramLM
from lstm_jax.speech.model import AcousticConfig, acoustic_logits, make_ctc_loss
from lstm_jax.tasks.speech import Buckets, Vocab

__all__ = [
    "Split",
    "make_split",
    "make_normalizer",
    "take",
    "concat",
    "pad_batch",
    "make_sampler",
    "log_posteriors",
    "make_forward",
    "beam_texts",
    "Decoder",
    "tune_lm",
    "train_ctc",
]


class Split(NamedTuple):
    """One split, ready for batching (features already normalised)."""

    feats: list  # [t_i, m] float32 per utterance
    texts: list  # normalised transcripts
    labels: list  # int ids per utterance (vocabulary characters only)
    seconds: np.ndarray  # [N] durations


def make_split(feats: Sequence[np.ndarray], texts: Sequence[str], vocab: Vocab, hop_ms: float) -> Split:
    return Split(
        list(feats), list(texts), [vocab.encode(t) for t in texts], np.array([len(f) * hop_ms / 1000.0 for f in feats])
    )


def make_normalizer(train_feats: Sequence[np.ndarray], norm: str = "global"):
    """``fn(feats list) -> normalised list``: mean/variance per band from ``train_feats``
    (``norm="global"``, global CMVN) or from each utterance itself (``"utterance"``)."""
    if norm == "utterance":
        return lambda fs: [F.normalize(f) for f in fs]
    if norm != "global":
        raise ValueError(f"expected norm 'global' or 'utterance', got {norm!r}")
    stacked = np.concatenate(list(train_feats))
    mean, std = stacked.mean(0), stacked.std(0)
    return lambda fs: [F.normalize(f, mean, std) for f in fs]


def take(split: Split, idx: Sequence[int]) -> Split:
    """The utterances ``idx`` of ``split``, in that order."""
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return Split(pick(split.feats), pick(split.texts), pick(split.labels), split.seconds[np.asarray(idx, int)])


def concat(first: Split, second: Split) -> Split:
    """The utterances of ``first``, then those of ``second``."""
    seconds = np.concatenate([first.seconds, second.seconds])
    return Split(first.feats + second.feats, first.texts + second.texts, first.labels + second.labels, seconds)


def _bucket_of(n_frames: int, lengths: Sequence[int]) -> int:
    for j, length in enumerate(lengths):
        if n_frames <= length:
            return j
    return len(lengths) - 1


def pad_batch(split: Split, idx: Sequence[int], frames: int, batch_size: int, max_labels: int) -> dict:
    """A ``[batch_size, frames, m]`` batch of utterances ``idx`` (rows past ``len(idx)`` have weight 0)."""
    m = split.feats[0].shape[1]
    feats = np.zeros((batch_size, frames, m), np.float32)
    labels = np.zeros((batch_size, max_labels), np.int32)
    lengths = np.ones((batch_size,), np.int32)
    label_lengths = np.zeros((batch_size,), np.int32)
    weight = np.zeros((batch_size,), np.float32)
    for r, i in enumerate(idx):
        f = split.feats[i][:frames]
        feats[r, : len(f)] = f
        lengths[r] = len(f)
        lab = split.labels[i][:max_labels]
        labels[r, : len(lab)] = lab
        label_lengths[r] = len(lab)
        weight[r] = 1.0
    return {"feats": feats, "lengths": lengths, "labels": labels, "label_lengths": label_lengths, "weight": weight}


def make_sampler(split: Split, buckets: Buckets, batch_size: int, max_labels: int, seed: int):
    """``step -> batch``: a bucket drawn in proportion to its size, then ``batch_size`` of its utterances."""
    sizes = np.array([len(m) for m in buckets.members], np.float64)

    def sample(step: int) -> dict:
        rng = np.random.default_rng([seed, step])
        j = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
        members = buckets.members[j]
        idx = [int(i) for i in rng.choice(members, size=min(batch_size, len(members)), replace=False)]
        return pad_batch(split, idx, buckets.lengths[j], batch_size, max_labels)

    return sample


def log_posteriors(forward, params, split: Split, lengths: Sequence[int], batch_size: int, max_labels: int):
    """Per utterance, the ``[t_i', k]`` log-softmax outputs of its valid frames and its greedy
    labelling, batched by bucket (utterances longer than the last bucket are truncated).

    ``forward`` is ``make_forward(config)``. Returns ``(log_probs, greedy ids)`` lists.
    """
    groups: dict = {}
    for i, f in enumerate(split.feats):
        groups.setdefault(_bucket_of(len(f), lengths), []).append(i)
    out: list = [None] * len(split.feats)
    greedy: list = [None] * len(split.feats)
    for j, members in sorted(groups.items()):
        for start in range(0, len(members), batch_size):
            idx = members[start : start + batch_size]
            batch = pad_batch(split, idx, lengths[j], batch_size, max_labels)
            lp, out_len, best, keep = jax.device_get(forward(params, batch["feats"], batch["lengths"]))
            for r, i in enumerate(idx):
                out[i] = lp[r, : out_len[r]]
                greedy[i] = ctc.collapse(best[r], keep[r])
    return out, greedy


def beam_texts(
    log_probs: Sequence[np.ndarray],
    vocab: Vocab,
    *,
    beam: int = 8,
    lm: Optional[CharNgramLM] = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
) -> list[str]:
    """Prefix beam search of each utterance, optionally with shallow fusion of ``lm`` (in this process)."""
    return [_beam_text(lp, vocab, beam, lm, lm_weight, insertion_bonus) for lp in log_probs]


def _beam_text(lp, vocab: Vocab, beam: int, lm, lm_weight: float, insertion_bonus: float) -> str:
    ids, _ = ctc.prefix_beam_search(
        lp, beam=beam, lm=lm, symbols=vocab.symbols, lm_weight=lm_weight, insertion_bonus=insertion_bonus
    )
    return vocab.decode(ids)


_WORKER: dict = {}  # a decoding worker's vocabulary and LM, sent once when it starts


def _init_worker(vocab: Vocab, lm) -> None:
    _WORKER.update(vocab=vocab, lm=lm)


def _decode_job(job) -> str:
    lp, beam, lm_weight, insertion_bonus = job
    return _beam_text(lp, _WORKER["vocab"], beam, _WORKER["lm"], lm_weight, insertion_bonus)


class Decoder:
    """Prefix beam search of many utterances with one vocabulary and LM, spread over ``workers``
    processes (a context manager; ``workers=1`` decodes in this process). The search is pure
    Python, one utterance per task; the texts do not depend on ``workers``.

    >>> with Decoder(vocab, lm, workers=2) as dec:  # doctest: +SKIP
    ...     hyps = dec.texts(log_probs, beam=16, lm_weight=0.6, insertion_bonus=1.0)
    """

    def __init__(self, vocab: Vocab, lm: Optional[CharNgramLM] = None, *, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"expected workers a positive int, got {workers!r}")
        self.vocab, self.lm, self.workers = vocab, lm, workers
        self._pool: Optional[Any] = None  # a ProcessPoolExecutor while entered, with workers > 1

    def __enter__(self) -> Decoder:
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),  # not fork: this process runs JAX's threads
                initializer=_init_worker,
                initargs=(self.vocab, self.lm),
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def texts(self, log_probs, *, beam: int, lm_weight: float = 0.0, insertion_bonus: float = 0.0) -> list[str]:
        """The best prefix of each ``[t_i, k]`` log-posterior array (the LM fused when ``lm_weight != 0``)."""
        if self._pool is None:
            return beam_texts(
                log_probs, self.vocab, beam=beam, lm=self.lm, lm_weight=lm_weight, insertion_bonus=insertion_bonus
            )
        jobs = [(lp, beam, lm_weight, insertion_bonus) for lp in log_probs]
        return list(self._pool.map(_decode_job, jobs, chunksize=max(1, len(jobs) // (16 * self.workers))))


def tune_lm(log_probs, refs, decoder: Decoder, weights, bonuses, *, beam: int = 8) -> tuple[dict, list, list]:
    """The ``(lm_weight, insertion_bonus)`` of the grid with the lowest CER on ``refs`` (dev).

    Returns ``({"lm_weight", "insertion_bonus", "cer"}, every grid point's record, the best
    point's texts)``.
    """
    grid, texts = [], []
    for w in weights:
        for b in bonuses:
            hyps = decoder.texts(log_probs, beam=beam, lm_weight=w, insertion_bonus=b)
            grid.append({"lm_weight": float(w), "insertion_bonus": float(b), "cer": M.cer(refs, hyps)})
            texts.append(hyps)
    i = min(range(len(grid)), key=lambda j: grid[j]["cer"])
    return grid[i], grid, texts[i]


def make_forward(config: AcousticConfig):
    """Jitted ``(params, feats, lengths) -> (log_probs, out_lengths, best, keep)`` (deterministic;
    ``best``/``keep`` of ``ctc.greedy_decode`` per utterance)."""

    @jax.jit
    def forward(params, feats, lengths):
        logits, out_len = acoustic_logits(params, feats, lengths, config)
        best, keep = jax.vmap(ctc.greedy_decode)(logits, out_len)
        return jax.nn.log_softmax(logits, axis=-1), out_len, best, keep

    return forward


def train_ctc(
    params,
    config: AcousticConfig,
    train: Split,
    dev: Split,
    buckets: Buckets,
    vocab: Vocab,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_every: int,
    max_labels: int,
    progress: bool = True,
    eval_lengths: Optional[Sequence[int]] = None,
    ema: Optional[float] = None,
):
    """Adam (warmup, cosine decay, clipping) on the CTC loss; returns the ``LoopResult`` whose
    params are the best by dev greedy CER among the evaluations (dev batched into ``eval_lengths``
    frames, default the training buckets'), of the params and, with ``ema`` (a decay), of their
    moving average (``loops.train_steps``)."""
    from lstm_jax import train as train_lib
    from lstm_jax.tasks import loops

    forward = make_forward(config)
    optimizer = train_lib.make_optimizer(
        lr, clip_norm=5.0, warmup_steps=min(200, steps // 10), total_steps=steps, end_fraction=0.05
    )

    def eval_fn(p):
        _, greedy = log_posteriors(forward, p, dev, list(eval_lengths or buckets.lengths), batch_size, max_labels)
        hyps = [vocab.decode(g) for g in greedy]
        return {"dev_cer": M.cer(dev.texts, hyps)}

    sampler = make_sampler(train, buckets, batch_size, max_labels, seed)
    return loops.train_steps(
        make_ctc_loss(config),
        params,
        optimizer,
        sampler,
        steps=steps,
        seed=seed,
        eval_fn=eval_fn,
        eval_every=eval_every,
        monitor="dev_cer",
        progress=progress,
        desc="ctc",
        ema=ema,
    ), forward
