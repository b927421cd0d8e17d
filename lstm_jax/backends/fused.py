"""A fast LSTM layer for training on CPU: a custom VJP over the whole batch and sequence.

Plain ``jax.grad`` through ``lax.scan`` carries the ``[d_h, 4*d_h]`` weight-gradient
accumulator through the backward loop and does a matmul per step for it. Here, as cuDNN
does, the backward loop keeps only the one GEMM per step that is truly sequential
(``dh_{t-1} = dz_t W_h^T``) and the weight and input gradients are single large GEMMs after
the loop::

    dW_h = sum_t h_{t-1}^T dz_t      dW_x = sum_t x_t^T dz_t      db = sum_t dz_t
    dX   = dZ W_x^T

The forward pass is one fused step per time step; its input projection is computed inside
each step (``hoist=0``), for chunks of ``hoist`` steps with one matmul per chunk
(``0 < hoist < t``), or for the whole sequence (``hoist >= t``).

Three memory modes (``memory=``):

* ``"gates"`` (fastest): the forward stores, per step, the gate derivatives the backward
  needs (``6*d_h`` numbers per example and step, plus ``h``).
* ``"recompute"``: the forward stores only ``h`` and ``c`` per step (``2*d_h``); the
  backward recomputes the gates chunk by chunk with two large matmuls per chunk (they
  are not sequential, since every ``h_{t-1}`` is known).
* ``"checkpoint"``: the forward stores ``(h, c)`` only every ``k ~ sqrt(t)`` steps; the
  backward re-runs the forward over each chunk, then its backward. Memory ``O(sqrt(t))``.

Masking has exactly the core semantics (see ``lstm_jax.scan``): past ``lengths[i]`` the
carry is frozen and the outputs are zero. ``reverse=True`` reads the valid prefix
backwards (the permutation is applied here, around the custom-VJP core).

Everything here is batch-level and time-major (``xs: [t, b, d_in]``); ``fused_stack`` is
the batch-major network entry point that ``lstm(..., impl="fused")`` calls through this
backend's ``run`` (see ``lstm_jax.backends``). The custom VJP
sits at the batch level on purpose: under ``jax.vmap`` of a per-example custom VJP the
weight gradients would be formed per example (``[b, d_h, 4*d_h]``) and then summed.

Reverse mode only: like any ``jax.custom_vjp``, this layer supports ``jax.grad``/``jax.vjp``
(and ``vmap``/``jit``/``remat`` around them) but not forward-mode ``jax.jvp``; use
``impl="scan"`` for forward-mode derivatives.

>>> from lstm_jax.cells import init_lstm_cell, LSTMCarry
>>> p = init_lstm_cell(jax.random.key(0), 3, 8)
>>> carry0 = LSTMCarry(jnp.zeros((2, 8)), jnp.zeros((2, 8)))
>>> (h, c), ys = lstm_layer(p, carry0, jnp.ones((5, 2, 3)))
>>> ys.shape, h.shape
((5, 2, 8), (2, 8))
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from lstm_jax.backends import LayerCall
from lstm_jax.backends.fused_core import _Config, _core, _Weights
from lstm_jax.backends.masking import permute_valid_prefix, zero_padding
from lstm_jax.backends.network import run_network
from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.typing import Array, DType, PRNGKey

__all__ = [
    "MEMORY_MODES",
    "fused_stack",
    "is_fusable",
    "lstm_layer",
    "permute_valid_prefix",
    "run",
    "unfusable_reason",
    "unsupported",
]

MEMORY_MODES = ("gates", "recompute", "checkpoint")


def unfusable_reason(params, compute_dtype: Optional[DType] = None) -> Optional[str]:
    """Why ``lstm_layer`` cannot run these cell params, or None if it can.

    It runs a plain LSTM (no peephole, LayerNorm or projection) whose weights share one
    float32 or float64 dtype, without a separate ``compute_dtype``.
    """
    if not isinstance(params, LSTMParams):
        return f"{type(params).__name__} cells (only LSTMParams)"
    extras = [name for name in ("w_peep", "ln", "w_proj") if getattr(params, name) is not None]
    if extras:
        return f"LSTM cells with {', '.join(extras)}"
    dtypes = {jnp.dtype(a.dtype) for a in (params.w_x, params.w_h, params.b)}
    if len(dtypes) != 1 or not dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)}:
        return f"weights of dtypes {sorted(map(str, dtypes))}"
    if compute_dtype is not None and jnp.dtype(compute_dtype) not in dtypes:
        return f"compute_dtype={jnp.dtype(compute_dtype)}"
    return None


def is_fusable(params, compute_dtype: Optional[DType] = None) -> bool:
    """Whether ``lstm_layer`` supports these cell params (see ``unfusable_reason``)."""
    return unfusable_reason(params, compute_dtype) is None


# --------------------------------------------------------------------------- public layer
def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"expected {name} to be an int >= {low}, got {value!r}")


def lstm_layer(
    params: LSTMParams,
    carry: LSTMCarry,
    xs: Array,
    lengths: Optional[Array] = None,
    *,
    reverse: bool = False,
    memory: str = "gates",
    unroll: int = 1,
    hoist: int = 0,
    chunk: Optional[int] = None,
    recurrent_mask: Optional[Array] = None,
) -> tuple[LSTMCarry, Array]:
    """One LSTM layer over a whole batch, time-major, with the fused custom VJP.

    Same results (and gradients, to float rounding) as ``jax.vmap`` of ``scan.scan_cell``
    with ``LSTM_CELL`` over the batch axis.

    Args:
      params: plain ``LSTMParams`` (see ``is_fusable``).
      carry: ``LSTMCarry(h: [b, d_h], c: [b, d_h])`` initial state (differentiable).
      xs: ``[t, b, d_in]``.
      lengths: optional ``[b]`` ints in ``[1, t]`` (frozen carry and zero outputs past them).
      reverse: read each sequence's valid prefix backwards (outputs at original positions).
      memory: ``"gates"``, ``"recompute"`` or ``"checkpoint"`` (see module docstring).
      unroll: unroll of the forward scan (with ``hoist > 0``: of the per-chunk scan).
      hoist: input projection: 0 inside each step, ``k`` per chunk of ``k`` steps, ``>= t``
        the whole sequence at once.
      chunk: backward chunk length for ``"recompute"`` (default 32) / checkpoint interval for
        ``"checkpoint"`` (default ``ceil(sqrt(t))``).
      recurrent_mask: optional ``[b, d_h]`` multiplier on ``h`` where it enters ``w_h``
        (variational recurrent dropout); treated as a constant (no gradient).

    Returns:
      ``(LSTMCarry(h: [b, d_h], c: [b, d_h]), ys: [t, b, d_h])``.
    """
    reason = unfusable_reason(params)
    if reason is not None:
        raise ValueError(
            f"expected plain float32/float64 LSTMParams (no peephole, layer_norm or proj_size), got {reason}"
        )
    if memory not in MEMORY_MODES:
        raise ValueError(f"expected memory in {MEMORY_MODES}, got {memory!r}")
    _check_int("unroll", unroll, 1)
    _check_int("hoist", hoist, 0)
    if xs.ndim != 3:
        raise ValueError(f"expected xs of shape [t, b, d_in] (rank 3), got shape {tuple(xs.shape)}")
    t, b, d_in = xs.shape
    d_h = params.w_h.shape[0]
    if params.w_x.shape[0] != d_in:
        raise ValueError(f"expected xs of shape [t, b, {params.w_x.shape[0]}], got shape {tuple(xs.shape)}")
    if tuple(carry.h.shape) != (b, d_h) or tuple(carry.c.shape) != (b, d_h):
        raise ValueError(
            f"expected carry h and c of shape [{b}, {d_h}], got {tuple(carry.h.shape)} and {tuple(carry.c.shape)}"
        )
    if lengths is not None and tuple(lengths.shape) != (b,):
        raise ValueError(f"expected lengths of shape [{b}], got shape {tuple(lengths.shape)}")
    if chunk is None:
        chunk = 32 if memory == "recompute" else max(1, math.isqrt(t - 1) + 1 if t > 1 else 1)
    _check_int("chunk", chunk, 1)
    chunk = min(chunk, t)
    dt = params.w_h.dtype
    w = _Weights(params.w_x, params.w_h, params.b)
    x = xs.astype(dt)
    if lengths is not None:
        lengths = lengths.astype(jnp.int32)
        x = zero_padding(x, lengths)
    if reverse:
        x = permute_valid_prefix(x, lengths)
    rmask = None if recurrent_mask is None else jax.lax.stop_gradient(recurrent_mask.astype(dt))
    cfg = _Config(memory, unroll, hoist, chunk)
    (h, c), ys = _core(cfg, w, carry.h.astype(dt), carry.c.astype(dt), x, lengths, rmask)
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    return LSTMCarry(h, c), ys


# --------------------------------------------------------------------------- network
def fused_stack(
    params,
    xs: Array,
    *,
    lengths: Optional[Array] = None,
    initial_state: Optional[LSTMCarry] = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    variational_dropout: bool = False,
    dropout_key: Optional[PRNGKey] = None,
    unroll: int = 1,
    hoist: int = 0,
    memory: str = "gates",
    chunk: Optional[int] = None,
) -> tuple[Array, LSTMCarry]:
    """A whole (stacked, possibly bidirectional) LSTM network over a batch with ``lstm_layer``.

    Same arguments, results and dropout masks as ``layers.lstm`` (which calls this for
    ``impl="fused"``); inputs are validated there.

    Args:
      params: ``StackParams`` of plain LSTM cells.
      xs: ``[b, t, d_in]``.
      lengths: optional ``[b]`` ints in ``[1, t]``, as ``layers.lstm``.
      initial_state: optional ``LSTMCarry`` with leaves ``[b, L, D, d_h]``.
      dropout: inter-layer dropout rate, as ``layers.lstm``.
      recurrent_dropout: variational dropout rate on ``h``, as ``layers.lstm``.
      variational_dropout: share the inter-layer mask across time.
      dropout_key: PRNG key; None means no dropout.
      unroll: unroll of the forward scan.
      hoist: input projection chunking, as ``lstm_layer``.
      memory, chunk: see ``lstm_layer``.

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``.
    """
    call = LayerCall(
        lengths=lengths,
        initial_state=initial_state,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        variational_dropout=variational_dropout,
        dropout_key=dropout_key,
    )

    def layer_fn(cell_params, carry0, inputs, reverse, rmask):
        return lstm_layer(
            cell_params,
            carry0,
            inputs,
            lengths,
            reverse=reverse,
            memory=memory,
            unroll=unroll,
            hoist=hoist,
            chunk=chunk,
            recurrent_mask=rmask,
        )

    return run_network(params, xs, call, layer_fn)


# --------------------------------------------------------------------------- backend interface
def unsupported(params, xs, call) -> Optional[str]:
    """Why the fused backend cannot run this call (see ``lstm_jax.backends``), or None."""
    reasons = [r for layer in params.layers for p in layer if (r := unfusable_reason(p, call.compute_dtype))]
    if reasons:
        return f"expected plain LSTM params (no peephole, layer_norm, proj_size or compute_dtype), got {reasons[0]}"
    return None


def run(params, xs: Array, call, *, memory: str = "gates") -> tuple[Array, LSTMCarry]:
    """``fused_stack`` with the options of a ``backends.LayerCall``."""
    return fused_stack(
        params,
        xs,
        lengths=call.lengths,
        initial_state=call.initial_state,
        dropout=call.dropout,
        recurrent_dropout=call.recurrent_dropout,
        variational_dropout=call.variational_dropout,
        dropout_key=call.dropout_key,
        unroll=call.unroll,
        hoist=call.hoist,
        memory=memory,
    )
