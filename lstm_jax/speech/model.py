"""The CTC acoustic model: stacked frames -> bidirectional LSTM (optionally LSTMP, a projected
LSTM) -> per-frame class scores, and its training loss with SpecAugment.

Shapes: ``b`` batch, ``t`` input frames (a multiple of ``stack``), ``m`` bands, ``k`` classes.
The model is a ``tasks.seqmodel.SeqModel`` read out at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.keys import as_key
from lstm_jax.layers import init_gru, init_lstm, init_rnn
from lstm_jax.speech.ctc import ctc_loss
from lstm_jax.speech.features import spec_augment, stack_frames
from lstm_jax.tasks.seqmodel import SeqModel, apply_seq_model
from lstm_jax.typing import Array, PRNGKey

__all__ = [
    "AcousticConfig",
    "init_acoustic_model",
    "map_classes",
    "acoustic_logits",
    "output_lengths",
    "make_ctc_loss",
]


class AcousticConfig(NamedTuple):
    """What the forward pass needs besides the params (hashable: a static jit argument)."""

    stack: int = 3  # frames concatenated (and the subsampling factor)
    dropout: float = 0.2  # between layers and before the head, training only
    freq_masks: int = 2  # SpecAugment, training only
    freq_width: int = 15
    time_masks: int = 2
    time_width: int = 40
    feature_groups: int = 1  # blocks of the same bands in a frame (2: log-mel + high-pass), masked alike
    impl: str = "auto"
    compute_dtype: Optional[str] = None  # the LSTM's matmul dtype, e.g. "bfloat16" (None: float32)


def init_acoustic_model(
    key: PRNGKey,
    n_mels: int,
    hidden: int,
    n_classes: int,
    *,
    stack: int = 3,
    num_layers: int = 3,
    proj_size: int = 0,
    cell: str = "lstm",
) -> SeqModel:
    """A bidirectional ``num_layers``-layer LSTM (or ``cell="gru"``/``"rnn"``) over
    ``stack * n_mels`` inputs with a linear head.

    ``proj_size > 0`` gives LSTMP layers (``h`` projected to ``proj_size``; served by the scan
    backend). The head bias starts at +2 for the blank (class 0), which speeds up the first
    updates of CTC training.
    """
    k_rnn, k_out = jax.random.split(as_key(key))
    if cell == "lstm":
        rnn = init_lstm(k_rnn, stack * n_mels, hidden, num_layers=num_layers, bidirectional=True, proj_size=proj_size)
    elif cell in ("gru", "rnn") and not proj_size:
        init = init_gru if cell == "gru" else init_rnn
        rnn = init(k_rnn, stack * n_mels, hidden, num_layers=num_layers, bidirectional=True)
    else:
        raise ValueError(
            f"expected cell 'lstm' (any proj_size) or 'gru'/'rnn' without projection, got {cell!r}, proj_size={proj_size}"
        )
    d = 2 * (proj_size or hidden)
    limit = (6.0 / (d + n_classes)) ** 0.5
    w_out = jax.random.uniform(k_out, (d, n_classes), jnp.float32, -limit, limit)
    b_out = jnp.zeros((n_classes,), jnp.float32).at[0].set(2.0)
    return SeqModel(rnn, w_out, b_out)


def map_classes(source: SeqModel, fresh: SeqModel, source_symbols, symbols) -> tuple[SeqModel, int]:
    """``source``'s trained weights with its head re-indexed to another class list: the start of
    a model for another language or vocabulary (cross-lingual transfer).

    Class ``j`` of the result (symbol ``symbols[j]``; ``""`` is the blank) takes the head column
    and bias of the same symbol in ``source`` (``source_symbols``); a symbol ``source`` lacks
    keeps ``fresh``'s. The recurrent layers are ``source``'s; they must have ``fresh``'s shapes.

    Returns:
      ``(params, number of classes taken from source)``.
    """
    src_shapes = [x.shape for x in jax.tree_util.tree_leaves(source.rnn)]
    new_shapes = [x.shape for x in jax.tree_util.tree_leaves(fresh.rnn)]
    same_tree = str(jax.tree_util.tree_structure(source.rnn)) == str(jax.tree_util.tree_structure(fresh.rnn))
    if not same_tree or src_shapes != new_shapes:
        raise ValueError(
            f"expected source layers shaped like the new model's {new_shapes}, got {src_shapes} "
            "(same inputs, stack, hidden size, layers, projection and cell are needed)"
        )
    if len(source_symbols) != source.w_out.shape[1] or len(symbols) != fresh.w_out.shape[1]:
        raise ValueError(
            f"expected one symbol per class, got {len(source_symbols)} for {source.w_out.shape[1]} source classes "
            f"and {len(symbols)} for {fresh.w_out.shape[1]} new classes"
        )
    where = {s: i for i, s in enumerate(source_symbols)}
    cols = jnp.asarray([where.get(s, -1) for s in symbols])
    hit = cols >= 0
    w = jnp.where(hit[None, :], jnp.asarray(source.w_out)[:, jnp.maximum(cols, 0)], fresh.w_out)
    b = jnp.where(hit, jnp.asarray(source.b_out)[jnp.maximum(cols, 0)], fresh.b_out)
    rnn = jax.tree_util.tree_map(jnp.asarray, source.rnn)
    return SeqModel(rnn, w, b), int(hit.sum())


def output_lengths(lengths: Array, stack: int) -> Array:
    """Output frames of inputs of ``lengths`` frames: ``ceil(lengths / stack)``."""
    return (lengths + stack - 1) // stack


def acoustic_logits(
    params: SeqModel, feats: Array, lengths: Array, config: AcousticConfig, *, key: Optional[PRNGKey] = None
) -> tuple[Array, Array]:
    """Per-frame class scores.

    Args:
      feats: ``[b, t, m]`` normalised log-mel frames, ``t`` a multiple of ``config.stack``.
      lengths: ``[b]`` valid input frames.
      key: training randomness (SpecAugment and dropout); None: deterministic evaluation.
    Returns:
      ``(logits: [b, t // stack, k], out_lengths: [b])``.
    """
    if feats.ndim != 3:
        raise ValueError(f"expected feats [b, t, m], got shape {feats.shape}")
    drop_key = None
    if key is not None:
        aug_key, drop_key = jax.random.split(as_key(key))
        keys = jax.random.split(aug_key, feats.shape[0])
        augment = lambda k, x, n: spec_augment(  # noqa: E731
            k,
            x,
            n,
            freq_masks=config.freq_masks,
            freq_width=config.freq_width,
            time_masks=config.time_masks,
            time_width=config.time_width,
            groups=config.feature_groups,
        )
        feats = jax.vmap(augment)(keys, feats, lengths)
    xs = stack_frames(feats, config.stack)
    out_len = output_lengths(lengths, config.stack)
    logits = apply_seq_model(
        params,
        xs,
        lengths=out_len,
        readout="sequence",
        dropout=config.dropout,
        dropout_key=drop_key,
        impl=config.impl,
        compute_dtype=config.compute_dtype,
    )
    return logits, out_len


def make_ctc_loss(config: AcousticConfig) -> Callable:
    """``loss_fn(params, batch, rng) -> (loss, metrics)`` for ``lstm_jax.train``.

    ``batch``: ``feats [b, t, m]``, ``lengths [b]``, ``labels [b, n]``, ``label_lengths [b]``
    and ``weight [b]`` (0 for padding rows). The loss is the CTC negative log-likelihood summed
    over the batch divided by the number of labels (nats per character).
    """

    def loss_fn(params, batch, rng):
        logits, out_len = acoustic_logits(params, batch["feats"], batch["lengths"], config, key=rng)
        per_utt = ctc_loss(logits, out_len, batch["labels"], batch["label_lengths"])
        w = batch["weight"]
        n_labels = jnp.maximum(jnp.sum(w * batch["label_lengths"]), 1.0)
        loss = jnp.sum(w * per_utt) / n_labels
        return loss, {"nats_per_char": loss}

    return loss_fn
