"""The reference backend: ``jax.vmap`` over the batch of ``layers.run_stack`` (one ``lax.scan``
per layer and direction, per example), differentiated by JAX's autodiff.

It serves every cell (LSTM with peepholes, LayerNorm or projection, GRU, tanh-RNN), every
option (``compute_dtype``, ``hoist``, dropout of all kinds) and both modes of autodiff
(``jax.jvp`` as well as ``jax.grad``). Every other backend is tested against it.
"""

from __future__ import annotations

from typing import Optional

import jax

from lstm_jax.layers import run_stack
from lstm_jax.typing import Array, PyTree

__all__ = ["unsupported", "run"]


def unsupported(params, xs, call) -> Optional[str]:
    """The scan backend serves every call."""
    return None


def run(params, xs: Array, call) -> tuple[Array, PyTree]:
    """``jax.vmap`` of ``run_stack`` over ``xs: [b, t, d_in]``; each example its own dropout key."""

    def one(x, length, state, key):
        return run_stack(
            params,
            x,
            length=length,
            initial_state=state,
            dropout=call.dropout,
            recurrent_dropout=call.recurrent_dropout,
            variational_dropout=call.variational_dropout,
            dropout_key=key,
            unroll=call.unroll,
            hoist=call.hoist,
            compute_dtype=call.compute_dtype,
        )

    keys = None if call.dropout_key is None else jax.random.split(call.dropout_key, xs.shape[0])
    axes = tuple(None if a is None else 0 for a in (xs, call.lengths, call.initial_state, keys))
    return jax.vmap(one, in_axes=axes)(xs, call.lengths, call.initial_state, keys)
