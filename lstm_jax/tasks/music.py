"""Polyphonic music: Bach chorales as binary 88-key piano rolls, a recurrent model of the next
frame's keys (independent Bernoulli outputs given the history), its NLL in nats per frame, the
per-key Bernoulli and first-order Markov baselines, sampling from a primer and MIDI output
through music21; ``train_music`` is the training recipe of ``experiments/music.py``, its budget
a number of epochs.

Shapes: ``n`` chorales, ``b`` batch, ``t`` frames, ``K = 88`` keys (MIDI 21-108, A0-C8).
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.datasets import DatasetError
from lstm_jax.keys import as_key
from lstm_jax.tasks.seqmodel import SeqModel, apply_seq_model, init_seq_model, predict_batched
from lstm_jax.typing import Array

__all__ = [
    "KEYS",
    "LOWEST_MIDI",
    "score_roll",
    "load_chorales",
    "MusicData",
    "split_chorales",
    "pad_rolls",
    "bernoulli_nll",
    "music_loss",
    "music_nll",
    "fit_bernoulli",
    "fit_markov",
    "baseline_nll",
    "transpose_rolls",
    "MusicRun",
    "train_music",
    "sample_roll",
    "roll_to_score",
    "write_midi",
    "notes_per_frame",
]

KEYS = 88
LOWEST_MIDI = 21  # A0; key k is MIDI note 21 + k


def _music21():
    try:
        import music21
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetError(f"expected music21 to be installed (pip install music21), got {e}") from None
    return music21


# --------------------------------------------------------------------------- data
def score_roll(score, step: float = 1.0) -> np.ndarray:
    """Binary piano roll of a music21 stream: frame ``j`` covers ``[j*step, (j+1)*step)``
    quarter notes and key ``k`` is on when MIDI note ``21 + k`` sounds at the frame's start
    (offset ``<= j*step <`` offset + duration), in any part.

    Args:
      score: a ``music21.stream.Stream`` (a score, a part; chords count every pitch).
      step: frame length in quarter notes (``1.0`` quarter notes, ``0.5`` eighth notes).

    Returns:
      ``[t, 88]`` uint8 with ``t = ceil(highestTime / step)``.
    """
    if not step > 0:
        raise ValueError(f"expected step > 0 (quarter notes per frame), got {step}")
    t = int(math.ceil(float(score.highestTime) / step - 1e-9))
    roll = np.zeros((t, KEYS), np.uint8)
    for note in score.flatten().notes:
        on = float(note.offset) / step
        off = on + float(note.quarterLength) / step
        first, stop = int(math.ceil(on - 1e-9)), int(math.ceil(off - 1e-9))
        for pitch in note.pitches:
            key = int(pitch.midi) - LOWEST_MIDI
            if not 0 <= key < KEYS:
                raise ValueError(f"expected MIDI pitches 21-108, got {pitch.midi} ({pitch.nameWithOctave})")
            roll[first:stop, key] = 1
    return roll


def _cache_path(cache_dir, step: float, limit: Optional[int]) -> Path:
    root = Path(cache_dir or os.environ.get("LSTM_JAX_CACHE", Path.home() / ".cache" / "lstm_jax"))
    return root / f"bach_chorales_step{step:g}{'' if limit is None else f'_first{limit}'}.npz"


def load_chorales(step: float = 1.0, *, limit: Optional[int] = None, cache_dir=None) -> tuple:
    """The 4-part Bach chorales of music21's corpus (Riemenschneider order) as piano rolls.

    The first call parses the scores (tens of seconds for all 351) and caches the rolls as
    ``bach_chorales_step<step>[_first<limit>].npz`` under ``cache_dir`` (default
    ``$LSTM_JAX_CACHE`` or ``~/.cache/lstm_jax``); later calls read that file.

    Args:
      step: frame length in quarter notes.
      limit: parse only the first ``limit`` chorales of the corpus (quick runs).

    Returns:
      ``(names, rolls)``: corpus paths and ``[t_i, 88]`` uint8 rolls.
    """
    if not step > 0:
        raise ValueError(f"expected step > 0 (quarter notes per frame), got {step}")
    path = _cache_path(cache_dir, step, limit)
    if path.exists():
        with np.load(path) as z:
            bounds = np.concatenate([[0], np.cumsum(z["lengths"])])
            return [str(n) for n in z["names"]], [z["frames"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    corpus = _music21().corpus
    files = list(corpus.chorales.Iterator(numberingSystem="riemenschneider", returnType="filename"))
    names, rolls = [], []
    for name in files[:limit]:
        score = corpus.parse(name)
        if len(score.parts) == 4:
            names.append(str(name))
            rolls.append(score_roll(score, step))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp, names=np.array(names), lengths=np.array([len(r) for r in rolls]), frames=np.concatenate(rolls)
    )
    tmp.replace(path)
    return names, rolls


class MusicData(NamedTuple):
    """Chorales split by piece: names and ``[t_i, 88]`` rolls of each split."""

    names: dict  # split -> list of corpus paths
    rolls: dict  # split -> list of [t_i, 88] uint8


def split_chorales(names, rolls, *, seed: int = 0, fractions=(0.6, 0.2, 0.2)) -> MusicData:
    """Seeded random split by chorale (``np.random.default_rng(seed).permutation``): the first
    ``fractions[0]`` of the permutation train, the next ``fractions[1]`` validate, the rest test
    (351 chorales: 210 / 70 / 71)."""
    n = len(rolls)
    if len(names) != n or n < 3:
        raise ValueError(f"expected as many names as rolls (>= 3), got {len(names)} names, {n} rolls")
    perm = np.random.default_rng(seed).permutation(n)
    a = int(fractions[0] * n)
    b = a + int(fractions[1] * n)
    parts = {"train": perm[:a], "val": perm[a:b], "test": perm[b:]}
    return MusicData(
        {k: [names[i] for i in v] for k, v in parts.items()}, {k: [rolls[i] for i in v] for k, v in parts.items()}
    )


def pad_rolls(rolls, max_len: Optional[int] = None) -> dict:
    """Teacher-forcing batch of rolls: ``{"x": [n, T, 88]`` the previous frame (zeros before
    the first), ``"y": [n, T, 88]`` the frame to predict, ``"lengths": [n]}`` (float32, zero-padded
    to ``T = max_len`` or the longest roll)."""
    lengths = np.array([len(r) for r in rolls], np.int32)
    T = int(lengths.max()) if max_len is None else int(max_len)
    if lengths.max() > T:
        raise ValueError(f"expected rolls of at most {T} frames, got one of {lengths.max()}")
    y = np.zeros((len(rolls), T, KEYS), np.float32)
    for i, r in enumerate(rolls):
        y[i, : len(r)] = r
    x = np.concatenate([np.zeros_like(y[:, :1]), y[:, :-1]], axis=1)
    return {"x": x, "y": y, "lengths": lengths}


def transpose_rolls(rolls, shifts) -> list:
    """Every roll shifted by every semitone shift in ``shifts`` that keeps its notes on the 88
    keys (training-set augmentation; a shift of 0 is the roll itself)."""
    out = []
    for r in rolls:
        on = np.flatnonzero(r.any(0))
        for s in shifts:
            if len(on) and 0 <= on[0] + s and on[-1] + s < KEYS:
                out.append(np.roll(r, s, axis=1))
    return out


# --------------------------------------------------------------------------- likelihood
def bernoulli_nll(logits: Array, targets: Array, lengths: Optional[Array] = None) -> Array:
    """Negative log-likelihood in nats of each frame under independent Bernoulli keys.

    Args:
      logits: ``[..., t, K]`` log-odds of each key being on.
      targets: ``[..., t, K]`` 0/1.
      lengths: optional ``[...]`` valid frames; frames past them get 0.

    Returns:
      ``[..., t]`` nats per frame (summed over the keys).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"expected logits and targets of the same shape, got {logits.shape} and {targets.shape}")
    nll = jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1)
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != nll.shape[:-1]:
            raise ValueError(f"expected lengths of shape {nll.shape[:-1]}, got {lengths.shape}")
        steps = jnp.arange(nll.shape[-1]).reshape((1,) * lengths.ndim + (-1,))
        nll = jnp.where(steps < lengths[..., None], nll, 0.0)
    return nll


def music_loss(params: SeqModel, batch: dict, rng, *, dropout: float = 0.0, impl: str = "auto") -> tuple:
    """Mean NLL per valid frame of a teacher-forced batch (``pad_rolls``) for ``lstm_jax.train.fit``.

    ``dropout`` (between the layers and on the head's input) applies only when ``rng`` is given.
    Returns ``(nats per frame, {"frames": valid frames})``.
    """
    logits = apply_seq_model(
        params,
        batch["x"],
        lengths=batch["lengths"],
        readout="sequence",
        dropout=dropout,
        dropout_key=None if rng is None else as_key(rng, "rng"),
        impl=impl,
    )
    frames = jnp.sum(batch["lengths"]).astype(jnp.float32)
    return jnp.sum(bernoulli_nll(logits, batch["y"], batch["lengths"])) / frames, {"frames": frames}


@partial(jax.jit, static_argnames="impl")
def _sequence_nll(params, batch, impl="auto"):
    logits = apply_seq_model(params, batch["x"], lengths=batch["lengths"], readout="sequence", impl=impl)
    return jnp.sum(bernoulli_nll(logits, batch["y"], batch["lengths"]), axis=-1)


def music_nll(params: SeqModel, rolls, *, max_len: Optional[int] = None, impl: str = "auto") -> float:
    """NLL in nats per frame of ``rolls``: every frame of every roll, each given all the frames
    before it in its chorale (the first given nothing), summed and divided by the frame count."""
    data = pad_rolls(rolls, max_len)
    total = predict_batched(partial(_sequence_nll, impl=impl), params, data, batch_size=64)
    return float(np.sum(total) / np.sum(data["lengths"]))


def _log_bernoulli(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x * np.log(p) + (1.0 - x) * np.log1p(-p)


def fit_bernoulli(rolls, *, alpha: float = 1.0) -> np.ndarray:
    """Per-key probability of being on, add-``alpha`` smoothed frame counts: ``[88]``."""
    frames = np.concatenate(rolls).astype(np.float64)
    return (frames.sum(0) + alpha) / (len(frames) + 2.0 * alpha)


def fit_markov(rolls, *, alpha: float = 1.0) -> tuple:
    """Per-key first-order Markov chain: ``(p_first [88], p_on_after_off [88], p_on_after_on [88])``
    from add-``alpha`` smoothed counts (``p_first`` is ``fit_bernoulli``, used for each first frame)."""
    prev = np.concatenate([r[:-1] for r in rolls]).astype(np.float64)
    nxt = np.concatenate([r[1:] for r in rolls]).astype(np.float64)
    after_on = ((prev * nxt).sum(0) + alpha) / (prev.sum(0) + 2.0 * alpha)
    after_off = (((1.0 - prev) * nxt).sum(0) + alpha) / ((1.0 - prev).sum(0) + 2.0 * alpha)
    return fit_bernoulli(rolls, alpha=alpha), after_off, after_on


def baseline_nll(model, rolls) -> float:
    """NLL in nats per frame of ``rolls`` under ``fit_bernoulli``'s ``[88]`` or ``fit_markov``'s triple."""
    total, frames = 0.0, 0
    for r in rolls:
        r = r.astype(np.float64)
        if isinstance(model, tuple):
            first, after_off, after_on = model
            p = np.concatenate([first[None], np.where(r[:-1] > 0, after_on, after_off)])
        else:
            p = np.broadcast_to(model, r.shape)
        total -= float(_log_bernoulli(p, r).sum())
        frames += len(r)
    return total / frames


# --------------------------------------------------------------------------- training
class MusicRun(NamedTuple):
    """What ``train_music`` returns."""

    params: SeqModel  # best on the validation chorales
    history: list  # one record per epoch (``epoch``, ``train_loss``, ``val_loss`` in nats/frame)
    best_epoch: int
    updates: int  # optimiser updates that ran


def train_music(
    data: MusicData,
    *,
    cell: str = "lstm",
    hidden: int = 256,
    layers: int = 1,
    epochs: int = 60,
    batch_size: int = 16,
    lr: float = 3e-3,
    dropout: float = 0.3,
    transpose: int = 0,
    seed: int = 0,
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
) -> MusicRun:
    """Train a ``layers`` x ``cell(hidden)`` next-frame model with ``lstm_jax.train.fit``.

    Adam with warmup and cosine decay over all ``epochs``, clipping 1.0, dropout on the head's
    input (and between layers); the head's bias starts at the log-odds of each key in the
    training chorales (the per-key Bernoulli baseline); the params of the epoch with the lowest
    validation NLL are returned. ``transpose = s`` adds the training chorales shifted by
    ``-s..s`` semitones (augmentation).
    """
    from lstm_jax import train

    train_rolls = transpose_rolls(data.rolls["train"], range(-transpose, transpose + 1))
    max_len = max(len(r) for split in data.rolls.values() for r in split)
    train_set, val_set = pad_rolls(train_rolls, max_len), pad_rolls(data.rolls["val"], max_len)
    batch_size = min(batch_size, len(train_rolls))
    init = partial(init_seq_model, cell=cell, input_size=KEYS, hidden_size=hidden, output_size=KEYS, num_layers=layers)
    params = jax.jit(init)(jax.random.key(seed))
    # start from the per-key Bernoulli baseline: head bias = log-odds of each key in training
    p = fit_bernoulli(data.rolls["train"])
    params = params._replace(b_out=jnp.asarray(np.log(p) - np.log1p(-p), jnp.float32))
    total = epochs * (len(train_rolls) // batch_size)
    optimizer = train.make_optimizer(lr, clip_norm=1.0, warmup_steps=min(100, total // 10), total_steps=total)
    result = train.fit(
        partial(music_loss, dropout=dropout, impl=impl),
        params,
        optimizer,
        train_set,
        val_data=val_set,
        epochs=epochs,
        batch_size=batch_size,
        eval_batch_size=len(data.rolls["val"]),  # one batch: val_loss is the exact nats per frame
        seed=seed,
        compiled_epoch=True,
        progress=progress,
        desc=desc,
    )
    best = result.best_epoch if result.best_epoch is not None else epochs
    return MusicRun(result.params, result.history, int(best), int(result.state.step))


# --------------------------------------------------------------------------- sampling and MIDI
_SAMPLERS: dict = {}


def sample_roll(
    params: SeqModel, primer: np.ndarray, n_frames: int, key, *, temperature: float = 1.0, impl: str = "auto"
) -> np.ndarray:
    """Read ``primer`` (``[p, 88]``, ``p >= 1``), then draw ``n_frames`` frames, each key an
    independent Bernoulli of ``sigmoid(logit / temperature)`` given every frame before it
    (one jitted ``lax.scan``; ``impl``: the recurrent backend).

    Returns:
      ``[p + n_frames, 88]`` uint8: the primer followed by the sampled frames.
    """
    primer = np.asarray(primer)
    if primer.ndim != 2 or primer.shape[1] != KEYS or len(primer) < 1:
        raise ValueError(f"expected a primer of shape [p >= 1, {KEYS}], got {primer.shape}")
    if (n_frames, impl) not in _SAMPLERS:

        @jax.jit
        def run(params, xs, key, temperature):
            logits, state = apply_seq_model(params, xs, readout="sequence", return_state=True, impl=impl)

            def step(carry, k):
                last, state = carry
                frame = jax.random.bernoulli(k, jax.nn.sigmoid(last / temperature)).astype(jnp.float32)
                out, state = apply_seq_model(
                    params, frame[:, None], readout="sequence", initial_state=state, return_state=True, impl=impl
                )
                return (out[:, 0], state), frame[0]

            _, frames = jax.lax.scan(step, (logits[:, -1], state), jax.random.split(key, n_frames))
            return frames

        _SAMPLERS[(n_frames, impl)] = run
    # inputs are the previous frames: a zero frame, then the primer
    xs = np.concatenate([np.zeros((1, KEYS), np.float32), primer.astype(np.float32)])[None]
    frames = _SAMPLERS[(n_frames, impl)](params, jnp.asarray(xs), as_key(key), jnp.float32(temperature))
    return np.concatenate([primer.astype(np.uint8), np.asarray(frames, np.uint8)])


def roll_to_score(roll: np.ndarray, step: float = 1.0):
    """A music21 score of a roll: each run of consecutive on frames of a key is one note, the
    notes dealt to as few parts (voices) as keep every part free of overlapping notes, so a roll
    read back by ``score_roll`` (from the score or its MIDI file) is the same roll."""
    m21 = _music21()
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != KEYS:
        raise ValueError(f"expected a roll of shape [t, {KEYS}], got {roll.shape}")
    padded = np.concatenate([np.zeros((1, KEYS), np.int8), (roll > 0).astype(np.int8), np.zeros((1, KEYS), np.int8)])
    edges = np.diff(padded, axis=0)  # +1 at a run's first frame, -1 one past its last
    runs = []  # (start, -key, stop): by start time, the highest key first
    for key in range(KEYS):
        starts, stops = np.flatnonzero(edges[:, key] == 1), np.flatnonzero(edges[:, key] == -1)
        runs += [(int(a), -key, int(b)) for a, b in zip(starts, stops)]
    parts: list = []
    ends: list = []  # greedy interval partitioning: the first part free at the run's start
    for start, neg_key, stop in sorted(runs):
        free = [i for i, end in enumerate(ends) if end <= start]
        if free:
            i = free[0]
        else:
            i = len(parts)
            parts.append(m21.stream.Part())
            parts[i].insert(0, m21.instrument.Piano())
            ends.append(0)
        note = m21.note.Note(midi=LOWEST_MIDI - neg_key, quarterLength=float((stop - start) * step))
        parts[i].insert(float(start * step), note)
        ends[i] = stop
    score = m21.stream.Score()
    for part in parts or [m21.stream.Part()]:
        score.insert(0, part)
    return score


def write_midi(roll: np.ndarray, path, step: float = 1.0) -> Path:
    """Write a roll as a MIDI file through music21 (``roll_to_score``) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    roll_to_score(roll, step).write("midi", fp=str(path))
    return path


def notes_per_frame(rolls) -> float:
    """Mean number of keys on per frame over all frames of ``rolls``."""
    frames = np.concatenate([np.asarray(r) for r in rolls])
    return float(frames.sum() / len(frames))
