"""Truncated backpropagation through time: a long sequence in chunks, the carry passed on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from lstm_jax.data import tbptt_chunks
from lstm_jax.train.state import TrainState
from lstm_jax.train.steps import _apply_gradients
from lstm_jax.typing import PRNGKey, PyTree

__all__ = ["tbptt_value_and_grad", "make_tbptt_train_step"]


def tbptt_value_and_grad(
    chunk_loss_fn: Callable,
    params: PyTree,
    carry: PyTree,
    batch: PyTree,
    chunk: int,
    *,
    rng: Optional[PRNGKey] = None,
    truncate: bool = True,
):
    """Loss and gradient of a long sequence processed in chunks, the carry passed on.

    ``chunk_loss_fn(params, carry, chunk_batch, rng) -> (loss, (carry, metrics))`` runs the
    model over one chunk (every leaf of ``batch`` is ``[b, T, ...]``, cut into
    ``[b, chunk, ...]`` pieces) starting from ``carry``. The total loss is the mean of the
    chunk losses. With ``truncate=True`` the carry entering each chunk is wrapped in
    ``stop_gradient`` (truncated BPTT: no gradient flows across chunk boundaries); with
    ``truncate=False`` the gradient is exactly the full-sequence gradient.

    Returns:
      ``((loss, final_carry, metrics), grads)``; metrics are averaged over chunks.
    """
    chunks = jax.tree_util.tree_map(lambda a: tbptt_chunks(a, chunk), batch)
    n = jax.tree_util.tree_leaves(chunks)[0].shape[0]
    keys = None if rng is None else jax.random.split(rng, n)

    def run(p, carry0):
        def body(c, inputs):
            piece, k = inputs
            if truncate:
                c = jax.lax.stop_gradient(c)
            loss, (c, metrics) = chunk_loss_fn(p, c, piece, k)
            return c, (loss, metrics)

        final, (losses, metrics) = jax.lax.scan(body, carry0, (chunks, keys))
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        return jnp.mean(losses), (final, metrics)

    (loss, (final, metrics)), grads = jax.value_and_grad(run, has_aux=True)(params, carry)
    return (loss, final, metrics), grads


def make_tbptt_train_step(
    chunk_loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    chunk: int,
    init_carry: Callable[[PyTree, PyTree], PyTree],
    truncate: bool = True,
    update_every_chunk: bool = True,
    guard_nonfinite: bool = True,
):
    """Truncated-BPTT ``train_step(state, batch) -> (state, metrics)`` for ``fit(train_step=...)``.

    Each batch holds long sequences (leaves ``[b, T, ...]``, ``T % chunk == 0``). Starting from
    ``init_carry(params, batch)`` the model reads them chunk by chunk (``chunk_loss_fn`` as in
    ``tbptt_value_and_grad``), the carry passed on with ``stop_gradient`` between chunks. With
    ``update_every_chunk`` the optimizer steps after every chunk (classic TBPTT; ``state.step``
    advances by the number of chunks); otherwise the chunk gradients are averaged into one
    update per batch.

    For language modelling give inputs and targets as separate aligned arrays,
    ``{"x": tokens[:, :-1], "y": tokens[:, 1:]}``, so no prediction is lost at chunk edges::

        def chunk_loss(params, carry, piece, rng):
            ys, carry = lstm_jax.lstm(params["rnn"], params["emb"][piece["x"]], initial_state=carry)
            return softmax_cross_entropy(ys @ params["out"], piece["y"]), (carry, {})
        def init_carry(params, batch):
            zero = lstm_jax.zero_state(params["rnn"])               # leaves [L, D, d]
            return jax.tree_util.tree_map(lambda s: jnp.zeros((batch["x"].shape[0],) + s.shape), zero)
        step = make_tbptt_train_step(chunk_loss, opt, chunk=100, init_carry=init_carry)
        result = fit(full_sequence_loss, params, opt, train, train_step=step, ...)
    """

    def train_step(state: TrainState, batch: PyTree):
        carry0 = init_carry(state.params, batch)
        if not update_every_chunk:
            rng = jax.random.fold_in(state.rng, state.step)
            (loss, _, metrics), grads = tbptt_value_and_grad(
                chunk_loss_fn, state.params, carry0, batch, chunk, rng=rng, truncate=truncate
            )
            return _apply_gradients(optimizer, state, loss, dict(metrics), grads, guard_nonfinite)
        chunks = jax.tree_util.tree_map(lambda a: tbptt_chunks(a, chunk), batch)

        def objective(p, c, piece, k):
            loss, (c, metrics) = chunk_loss_fn(p, c, piece, k)
            return loss, (c, metrics)

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def body(carry, piece):
            st, c = carry
            k = jax.random.fold_in(st.rng, st.step)
            (loss, (c_new, metrics)), grads = grad_fn(st.params, jax.lax.stop_gradient(c), piece, k)
            st, m = _apply_gradients(optimizer, st, loss, dict(metrics), grads, guard_nonfinite)
            return (st, c_new), m

        (state, _), stacked = jax.lax.scan(body, (state, carry0), chunks)
        finite = jnp.all(stacked.pop("finite"))
        metrics = {k: jnp.mean(v) for k, v in stacked.items()}
        return state, {**metrics, "finite": finite}

    return train_step
