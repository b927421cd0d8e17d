"""The network walk every batch-level, time-major LSTM backend shares (fused, pallas, parallel).

A backend supplies one function for a layer and direction,
``layer_fn(cell_params, carry0: LSTMCarry([b, d_h], [b, d_h]), inputs: [t, b, d_in], reverse: bool,
recurrent_mask: [b, d_h] | None) -> (LSTMCarry, ys: [t, b, d_h])``; ``run_network`` walks the
layers and directions, applies inter-layer dropout, draws the recurrent masks, takes the initial
state apart and stacks the final states. Dropout masks are exactly those ``layers.run_stack``
draws under ``jax.vmap`` from the same key (``masking.per_example_dropout_keys``), which is what
makes every backend's dropout equal the scan backend's.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lstm_jax.backends.masking import per_example_dropout_keys
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import dropout_mask, stack_states
from lstm_jax.typing import Array

__all__ = ["run_network"]


def _between_layers(inputs: Array, keys, call) -> Array:
    """Inter-layer dropout on time-major ``inputs: [t, b, d]``, one key per example (``keys: [b]``)."""
    t, _, d = inputs.shape
    shape = (1, d) if call.variational_dropout else (t, d)
    mask = jax.vmap(lambda k: dropout_mask(k, call.dropout, shape, inputs.dtype))(keys)  # [b, t|1, d]
    return inputs * jnp.swapaxes(mask, 0, 1)


def run_network(params, xs: Array, call, layer_fn: Callable) -> tuple[Array, LSTMCarry]:
    """Run ``layer_fn`` over every layer and direction of ``params`` for ``xs: [b, t, d_in]``.

    Args:
      params: ``StackParams`` of LSTM cells.
      xs: ``[b, t, d_in]``.
      call: a ``backends.LayerCall`` (its lengths are for ``layer_fn``; its initial state, dropout
        rates and key are applied here).
      layer_fn: see the module docstring.

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``.
    """
    b = xs.shape[0]
    num_layers, num_directions = len(params.layers), len(params.layers[0])
    use_dropout = call.dropout_key is not None
    if use_dropout:
        k_between, k_rec = per_example_dropout_keys(call.dropout_key, b, num_layers, num_directions)
    inputs = jnp.swapaxes(xs, 0, 1)  # [t, b, d_in]
    finals = []
    for l, layer in enumerate(params.layers):
        if l > 0 and use_dropout and call.dropout > 0.0:
            inputs = _between_layers(inputs, k_between[:, l], call)
        outputs = []
        for direction, cell_params in enumerate(layer):
            d_h, dt = cell_params.w_h.shape[0], cell_params.w_h.dtype
            if call.initial_state is None:
                carry0 = LSTMCarry(jnp.zeros((b, d_h), dt), jnp.zeros((b, d_h), dt))
            else:
                carry0 = LSTMCarry(call.initial_state.h[:, l, direction], call.initial_state.c[:, l, direction])
            rmask = None
            if use_dropout and call.recurrent_dropout > 0.0:
                draw = lambda k: dropout_mask(k, call.recurrent_dropout, (d_h,), dt)
                rmask = jax.vmap(draw)(k_rec[:, l, direction])
            final, ys = layer_fn(cell_params, carry0, inputs, direction == 1, rmask)
            outputs.append(ys)
            finals.append(final)
        inputs = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
    return jnp.swapaxes(inputs, 0, 1), stack_states(finals, num_layers, num_directions, axis=1)
