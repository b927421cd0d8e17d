"""The sequence model every task trains: a recurrent stack (LSTM, GRU or tanh RNN) with a
linear head, optionally reading token ids through an embedding; batched jitted prediction;
ensembles of independently initialised members trained together under ``jax.vmap``.

Shapes: ``b`` batch, ``t`` steps, ``d_in`` features, ``k`` outputs, ``E`` ensemble members.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import GRUParams, LSTMCarry, LSTMParams, RNNParams
from lstm_jax.keys import as_key
from lstm_jax.layers import StackParams, gru, init_gru, init_lstm, init_rnn, lstm, rnn
from lstm_jax.tasks.cli import CELLS
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = [
    "SeqModel",
    "init_seq_model",
    "apply_seq_model",
    "count_params",
    "predict_batched",
    "init_ensemble",
    "ensemble_apply",
    "make_ensemble_regression_loss",
]

_INIT = {"lstm": init_lstm, "gru": init_gru, "rnn": init_rnn}
_FORWARD = {LSTMParams: lstm, GRUParams: gru, RNNParams: rnn}


class SeqModel(NamedTuple):
    """A recurrent network with a linear read-out, optionally reading token ids through an embedding."""

    rnn: StackParams  # any cell kind
    w_out: Array  # [D*d_out, k]
    b_out: Array  # [k]
    embed: Optional[Array] = None  # [V, d_in] when the inputs are token ids


def init_seq_model(
    key: PRNGKey,
    cell: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    vocab_size: Optional[int] = None,
    out_scale: float = 1.0,
) -> SeqModel:
    """Initialise ``SeqModel``.

    Args:
      key: ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)`` (same numbers).
      cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
      input_size: features per step (the embedding width when ``vocab_size`` is given).
      hidden_size, num_layers, bidirectional: of the recurrent stack.
      output_size: ``k`` outputs of the linear head.
      vocab_size: if given, inputs are int token ids embedded by a learned ``[V, input_size]`` table.
      out_scale: multiplies the (Glorot-uniform) head init.
    """
    key = as_key(key)
    if cell not in _INIT:
        raise ValueError(f"expected cell in {CELLS}, got {cell!r}")
    k_rnn, k_out, k_emb = jax.random.split(key, 3)
    rnn_params = _INIT[cell](k_rnn, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional)
    d = (2 if bidirectional else 1) * hidden_size
    limit = out_scale * math.sqrt(6.0 / (d + output_size))
    w_out = jax.random.uniform(k_out, (d, output_size), jnp.float32, -limit, limit)
    embed = None
    if vocab_size is not None:
        embed = jax.random.normal(k_emb, (vocab_size, input_size), jnp.float32) * (1.0 / math.sqrt(input_size))
    return SeqModel(rnn_params, w_out, jnp.zeros((output_size,), jnp.float32), embed)


def _final_h(state) -> Array:
    """Last layer's final hidden state, directions concatenated: ``[b, D*d]``."""
    h = state.h if isinstance(state, LSTMCarry) else state
    last = h[:, -1]  # [b, D, d]
    return last.reshape(last.shape[0], -1)


def apply_seq_model(
    params: SeqModel,
    xs: Array,
    *,
    lengths: Optional[Array] = None,
    readout: str = "final",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    dropout_key: Optional[PRNGKey] = None,
    initial_state: Optional[PyTree] = None,
    return_state: bool = False,
    unroll: int = 1,
    hoist: int = 0,
    impl: str = "auto",
    compute_dtype=None,
):
    """Run the network on a batch and apply the head.

    Args:
      xs: ``[b, t, d_in]`` floats, or ``[b, t]`` int token ids when the model has an embedding.
      lengths: optional ``[b]`` valid lengths (masking; see ``lstm_jax.lstm``).
      readout: ``"final"`` (final state of the last layer, both directions: ``[b, k]``),
        ``"sequence"`` (every step: ``[b, t, k]``), ``"mean"`` / ``"max"`` (pooled over the
        valid steps: ``[b, k]``).
      dropout: inter-layer dropout and dropout on the head's input; ``recurrent_dropout``
        variational dropout on ``h``; both only when ``dropout_key`` is given.
      initial_state / return_state: carry a state across calls (truncated BPTT, sampling).
      unroll, hoist, impl: passed to the layer (scan unroll factor, input projection chunking,
        the backend: ``"auto"`` (default) picks by platform and params, see
        ``lstm_jax.backends.choose``; any name in ``lstm_jax.backends.names()``).
      compute_dtype: the layer's matmul dtype (e.g. ``jnp.bfloat16``; None: the params' dtype);
        the head runs in the params' dtype.

    Returns:
      outputs (and the final state when ``return_state``).
    """
    if readout not in ("final", "sequence", "mean", "max"):
        raise ValueError(f"expected readout in ('final', 'sequence', 'mean', 'max'), got {readout!r}")
    if params.embed is not None:
        if not jnp.issubdtype(jnp.asarray(xs).dtype, jnp.integer):
            raise TypeError(f"expected int token ids [b, t] for a model with an embedding, got {jnp.asarray(xs).dtype}")
        xs = jnp.take(params.embed, xs, axis=0)
    forward = _FORWARD[type(params.rnn.layers[0][0])]
    use_dropout = dropout_key is not None
    if use_dropout:
        dropout_key, head_key = jax.random.split(as_key(dropout_key, "dropout_key"))
    ys, state = forward(
        params.rnn,
        xs,
        lengths=lengths,
        initial_state=initial_state,
        dropout=dropout if use_dropout else 0.0,
        recurrent_dropout=recurrent_dropout if use_dropout else 0.0,
        dropout_key=dropout_key,
        unroll=unroll,
        hoist=hoist,
        impl=impl,
        compute_dtype=compute_dtype,
    )
    if readout == "final":
        feats = _final_h(state)
    elif readout == "sequence":
        feats = ys
    else:
        t = ys.shape[1]
        valid = jnp.ones(ys.shape[:2], bool) if lengths is None else jnp.arange(t)[None, :] < lengths[:, None]
        if readout == "mean":
            feats = (ys * valid[..., None]).sum(1) / valid.sum(1, keepdims=True).astype(ys.dtype)
        else:
            feats = jnp.where(valid[..., None], ys, -jnp.inf).max(1)
    if use_dropout and dropout > 0.0:
        keep = jax.random.bernoulli(head_key, 1.0 - dropout, feats.shape)
        feats = jnp.where(keep, feats / (1.0 - dropout), 0.0)
    out = feats @ params.w_out
    out = out + params.b_out.reshape((1,) * (out.ndim - 1) + (-1,))
    return (out, state) if return_state else out


def count_params(tree: PyTree) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def predict_batched(fn: Callable, params: PyTree, data: PyTree, *, batch_size: int = 256) -> np.ndarray:
    """Apply ``fn(params, batch) -> [b, ...]`` to ``data`` (pytree, leading axis N) in batches.

    Every batch, the last one and a data set smaller than ``batch_size`` included, is padded to
    ``batch_size`` rows (by repeating the last row), so a jitted ``fn`` compiles once for all
    data sets. Returns a numpy array ``[N, ...]``.
    """
    leaves = jax.tree_util.tree_leaves(data)
    n = len(leaves[0])
    outs = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        idx = np.minimum(idx, n - 1)
        batch = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], data)
        outs.append(np.asarray(fn(params, batch))[: min(batch_size, n - start)])
    return np.concatenate(outs, axis=0)


def init_ensemble(init_fn: Callable[[PRNGKey], PyTree], key: PRNGKey, size: int) -> PyTree:
    """``size`` independently initialised members stacked on a leading axis (``jax.vmap`` of ``init_fn``)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"expected a positive ensemble size, got {size!r}")
    return jax.jit(jax.vmap(init_fn))(jax.random.split(as_key(key), size))


def ensemble_apply(apply_fn: Callable, params: PyTree, *args, rng: Optional[PRNGKey] = None) -> Array:
    """Run every member: ``apply_fn(member_params, *args, rng) -> [b, ...]`` -> ``[E, b, ...]``.

    Members get independent dropout keys (``rng=None``: deterministic for all).
    """
    size = jax.tree_util.tree_leaves(params)[0].shape[0]
    if rng is None:
        return jax.vmap(lambda p: apply_fn(p, *args, None))(params)
    return jax.vmap(lambda p, k: apply_fn(p, *args, k))(params, jax.random.split(as_key(rng, "rng"), size))


def make_ensemble_regression_loss(apply_fn: Callable, *, bagging: bool = False) -> Callable:
    """``loss_fn(params [E, ...], batch {"x", "y": [b, k]}, rng)`` for ``lstm_jax.train.fit``.

    The loss is the mean of the members' MSEs, so every member gets its own gradient (Adam
    is per-parameter, so the members train as if alone, on the same batches). With
    ``bagging`` each member weights each training example by its own Poisson(1) draw (online
    bagging, Oza & Russell 2001), so members see different resamples of the data. Metrics:
    ``ens_mse`` (MSE of the members' mean prediction) and ``member_mse``.
    """

    def loss_fn(params, batch, rng):
        if rng is not None:
            rng, bag_key = jax.random.split(as_key(rng, "rng"))
        preds = ensemble_apply(apply_fn, params, batch["x"], rng=rng)  # [E, b, k]
        sq = jnp.square(preds - batch["y"][None])
        sq = sq.reshape(sq.shape[0], sq.shape[1], -1).mean(-1)  # [E, b]
        if bagging and rng is not None:
            w = jax.random.poisson(bag_key, 1.0, sq.shape).astype(sq.dtype)
            member = jnp.sum(w * sq, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        else:
            member = sq.mean(1)
        ens = jnp.mean(jnp.square(preds.mean(0) - batch["y"]))
        return member.mean(), {"ens_mse": ens, "member_mse": sq.mean()}

    return loss_fn
