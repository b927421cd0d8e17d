"""One sequence through a step function with ``lax.scan``: lengths/masking, reverse, unroll,
and input projection hoisted out of the recurrence.

Masking semantics (``length`` given, ``t`` steps, ``0 < length <= t``):

* steps ``s >= length`` do not change the carry, and their outputs are exactly zero;
* the returned final carry is therefore the carry after the last valid step;
* ``reverse=True`` runs over the valid prefix backwards (``xs[length-1], ..., xs[0]``) and
  writes each output at its original position, as PyTorch packed sequences do; padded
  positions still give zero outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp

from lstm_jax.cells import CellDef
from lstm_jax.typing import Array, PyTree

__all__ = ["scan_sequence", "scan_cell", "reverse_valid_prefix"]


def reverse_valid_prefix(xs: PyTree, length: Optional[Array]) -> PyTree:
    """Reverse the first ``length`` entries of every leaf along axis 0, leaving padding in place.

    ``xs`` leaves: ``[t, ...]``. With ``length=None`` it is a plain flip. The permutation is
    its own inverse, so applying it to the outputs puts them back at their positions.
    """
    if length is None:
        return jax.tree_util.tree_map(lambda a: jnp.flip(a, axis=0), xs)
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    steps = jnp.arange(t)
    index = jnp.where(steps < length, length - 1 - steps, steps)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0), xs)


def _zero_where_invalid(valid: Array, x):
    """Padding inputs replaced by zeros, so NaN/inf junk there cannot reach the gradients
    through the (discarded) computation of the padded steps."""
    return jax.tree_util.tree_map(lambda a: jnp.where(valid, a, jnp.zeros_like(a)), x)


def _freeze_past_length(valid: Array, new_carry, old_carry, y):
    """Keep ``old_carry`` and zero ``y`` where ``valid`` is False."""
    carry = jax.tree_util.tree_map(lambda n, o: jnp.where(valid, n, o), new_carry, old_carry)
    y = jax.tree_util.tree_map(lambda v: jnp.where(valid, v, jnp.zeros_like(v)), y)
    return carry, y


def scan_sequence(
    step: Callable,
    carry: PyTree,
    xs: PyTree,
    *,
    length: Optional[Array] = None,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[PyTree, PyTree]:
    """Run ``step(carry, x) -> (carry, y)`` over the leading axis of ``xs`` (one example).

    Args:
      step: a scan-native step, e.g. ``partial(lstm_step, params)``.
      carry: initial carry.
      xs: pytree of ``[t, ...]`` inputs.
      length: optional scalar int, number of valid steps (see module docstring).
      reverse: run the (valid prefix of the) sequence backwards.
      unroll: ``lax.scan`` unroll factor.

    Returns:
      ``(final_carry, ys)`` like ``lax.scan``; ``ys`` leaves ``[t, ...]`` in input order.

    >>> from functools import partial
    >>> from lstm_jax.cells import init_lstm_cell, lstm_step, lstm_zero_carry
    >>> p = init_lstm_cell(jax.random.key(0), 3, 8)
    >>> carry, ys = scan_sequence(partial(lstm_step, p), lstm_zero_carry(p), jnp.ones((5, 3)), length=3)
    >>> ys.shape
    (5, 8)
    """
    if length is None:
        return jax.lax.scan(step, carry, xs, reverse=reverse, unroll=unroll)
    if reverse:
        xs = reverse_valid_prefix(xs, length)
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def masked_step(c, inputs):
        x, s = inputs
        valid = s < length
        new_c, y = step(c, _zero_where_invalid(valid, x))
        return _freeze_past_length(valid, new_c, c, y)

    carry, ys = jax.lax.scan(masked_step, carry, (xs, jnp.arange(t)), unroll=unroll)
    if reverse:
        ys = reverse_valid_prefix(ys, length)
    return carry, ys


def scan_cell(
    cell: CellDef,
    params,
    carry,
    xs: Array,
    *,
    length: Optional[Array] = None,
    reverse: bool = False,
    unroll: int = 1,
    recurrent_mask: Optional[Array] = None,
    hoist: int = 0,
) -> tuple[PyTree, Array]:
    """Run a cell over one sequence ``xs: [t, d_in]``; returns ``(final_carry, ys: [t, d_out])``.

    Args:
      cell: ``LSTM_CELL``, ``GRU_CELL`` or ``RNN_CELL`` (or any ``CellDef``).
      params: the cell's params.
      carry: initial carry of one example.
      xs: ``[t, d_in]``.
      length: optional number of valid steps (scalar int).
      reverse: backward direction over the valid prefix.
      unroll: unroll factor of the scan (with ``hoist > 0``: of the outer, per-chunk scan).
      recurrent_mask: optional ``[d_out]`` mask on ``h`` inside the recurrence (variational
        recurrent dropout; the same mask at every step).
      hoist: 0 computes the input projection inside each step (one fused matmul per step);
        ``k > 0`` projects ``k`` steps of input with one matmul outside the recurrence and
        runs those ``k`` recurrences unrolled inside one scan iteration (``k >= t``: project
        the whole sequence up front).
    """
    if hoist < 0:
        raise ValueError(f"expected hoist >= 0, got {hoist}")
    if length is not None and hoist > 0:
        # the hoisted projection also sees the padding: zero it first (NaN junk -> NaN grads)
        xs = _zero_where_invalid((jnp.arange(xs.shape[0]) < length)[:, None], xs)
    if hoist == 0:

        def step(c, x):
            return cell.step(params, c, x, recurrent_mask=recurrent_mask)

        return scan_sequence(step, carry, xs, length=length, reverse=reverse, unroll=unroll)

    t = xs.shape[0]
    if hoist >= t:

        def rec(c, z):
            return cell.recurrence(params, c, z, recurrent_mask=recurrent_mask)

        zx = cell.input_projection(params, xs)
        return scan_sequence(rec, carry, zx, length=length, reverse=reverse, unroll=unroll)

    if reverse:
        xs = reverse_valid_prefix(xs, length)
    k = hoist
    n_chunks = -(-t // k)
    pad = n_chunks * k - t
    chunks = jnp.pad(xs, ((0, pad), (0, 0))).reshape(n_chunks, k, xs.shape[-1])
    limit = length if length is not None else (t if pad else None)

    def chunk_step(c, inputs):
        chunk, index = inputs
        zx = cell.input_projection(params, chunk)  # [k, n*d_h]
        ys = []
        for j in range(k):
            new_c, y = cell.recurrence(params, c, zx[j], recurrent_mask=recurrent_mask)
            if limit is not None:
                new_c, y = _freeze_past_length(index * k + j < limit, new_c, c, y)
            c = new_c
            ys.append(y)
        return c, jnp.stack(ys)

    carry, ys = jax.lax.scan(chunk_step, carry, (chunks, jnp.arange(n_chunks)), unroll=unroll)
    ys = ys.reshape((n_chunks * k,) + ys.shape[2:])[:t]
    if reverse:
        ys = reverse_valid_prefix(ys, length)
    return carry, ys
