"""Pure recurrent cells for ONE example: LSTM (with peephole, LayerNorm and projection
options), GRU (PyTorch convention) and the vanilla tanh RNN.

Every cell is written as two halves so the input projection can run outside the scan:

* ``*_input_projection(params, x) -> zx``: the part that depends only on the input,
  ``x: [..., d_in] -> zx: [..., n*d_h]`` (works for one step or for a whole ``[t, d_in]``).
* ``*_recurrence(params, carry, zx) -> (carry, y)``: the part that depends on the carry.

and ``*_step(params, carry, x) = *_recurrence(params, carry, *_input_projection(params, x))``
is the scan-native step: ``partial(lstm_step, params)`` plugs straight into ``lax.scan``
and ``jax.vmap`` gives batching.

Gate order along the last weight axis: LSTM ``i, f, g, o``; GRU ``r, z, n``.
Dtypes: weights may be any float dtype (e.g. bfloat16 for compute); the carry is kept in
``carry_dtype(params)`` (float32, or float64 under x64 weights) and gate nonlinearities and
the cell update run in that dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.keys import as_key
from lstm_jax.typing import Array, DType, PRNGKey

__all__ = [
    "LSTMCarry",
    "LSTMParams",
    "LSTMLayerNorm",
    "GRUParams",
    "RNNParams",
    "CellDef",
    "LSTM_CELL",
    "GRU_CELL",
    "RNN_CELL",
    "carry_dtype",
    "init_lstm_cell",
    "init_gru_cell",
    "init_rnn_cell",
    "lstm_input_projection",
    "lstm_recurrence",
    "lstm_step",
    "lstm_zero_carry",
    "gru_input_projection",
    "gru_recurrence",
    "gru_step",
    "gru_zero_carry",
    "rnn_input_projection",
    "rnn_recurrence",
    "rnn_step",
    "rnn_zero_carry",
]

_LN_EPS = 1e-5


# --------------------------------------------------------------------------- pytrees
class LSTMCarry(NamedTuple):
    """LSTM state of one example (or, at the batched level, with leading axes)."""

    h: Array  # [d_out]: emitted hidden state (d_out = proj_size if projected, else d_h)
    c: Array  # [d_h]: cell state


class LSTMLayerNorm(NamedTuple):
    """Layer-norm gains of a LayerNorm-LSTM (Ba et al. 2016, eqs. 20-22).

    The input and recurrent pre-activations are normalised separately over all ``4*d_h``
    gate units (their shifts are the cell bias ``b``); the cell state is normalised before
    the output ``tanh``.
    """

    scale_x: Array  # [4*d_h]
    scale_h: Array  # [4*d_h]
    scale_c: Array  # [d_h]
    bias_c: Array  # [d_h]


class LSTMParams(NamedTuple):
    """Parameters of one LSTM cell. Optional parts are ``None`` (an empty pytree)."""

    w_x: Array  # [d_in, 4*d_h], gates i, f, g, o
    w_h: Array  # [d_out, 4*d_h]
    b: Array  # [4*d_h]  (forget slice initialised to +1: visible here, not in the math)
    w_peep: Optional[Array] = None  # [3, d_h]: peephole weights for i, f (on c_{t-1}) and o (on c_t)
    ln: Optional[LSTMLayerNorm] = None  # LayerNorm-LSTM gains
    w_proj: Optional[Array] = None  # [d_h, d_out]: output projection (LSTMP, as torch proj_size)


class GRUParams(NamedTuple):
    """Parameters of one GRU cell, PyTorch convention (reset gate multiplies ``W_hn h + b_hn``)."""

    w_x: Array  # [d_in, 3*d_h], gates r, z, n
    w_h: Array  # [d_h, 3*d_h]
    b_x: Array  # [3*d_h]
    b_h: Array  # [3*d_h]  (kept apart from b_x because r multiplies the n slice of it)


class RNNParams(NamedTuple):
    """Parameters of one Elman RNN cell ``h' = tanh(x W_x + h W_h + b)``."""

    w_x: Array  # [d_in, d_h]
    w_h: Array  # [d_h, d_h]
    b: Array  # [d_h]


def carry_dtype(params) -> DType:
    """The dtype the carry is kept in: float32, or wider if the recurrent weights are wider."""
    # not jnp.promote_types: under jax.numpy_dtype_promotion("strict") it raises for bf16/f64 vs f32
    dt = jnp.dtype(params.w_h.dtype)
    return dt if dt.itemsize > 4 else jnp.dtype(jnp.float32)


# --------------------------------------------------------------------------- init
@partial(jax.jit, static_argnums=(1, 2))  # only so that eager inits reuse the compiled loop
def orthogonal(key: PRNGKey, rows: int, cols: int) -> Array:
    """A random ``[rows, cols]`` float32 matrix with orthonormal columns (or rows if ``rows < cols``).

    The same draw as ``jax.nn.initializers.orthogonal()`` (a Gaussian matrix, its QR factor
    with the signs that make ``diag(R)`` positive), computed by Gram-Schmidt with
    re-orthogonalisation from matrix-vector products only. No LAPACK QR: under ``jax.vmap``
    on CPU (ensembles initialising inside the vmapped program) jax's batched QR kernel can
    deadlock XLA's intra-op thread pool.
    """
    n, m = max(rows, cols), min(rows, cols)
    a = jax.random.normal(key, (n, m), jnp.float32)

    def add_column(j, q):
        v = a[:, j]
        for _ in range(2):  # classical Gram-Schmidt, twice: orthogonal to rounding
            v = v - q @ (q.T @ v)  # columns >= j of q are still zero
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, m, add_column, jnp.zeros((n, m), jnp.float32))
    return q.T if rows < cols else q


def _orthogonal_per_gate(key: PRNGKey, rows: int, d_h: int, n_gates: int, dtype: DType) -> Array:
    keys = jax.random.split(key, n_gates)
    blocks = jax.vmap(lambda k: orthogonal(k, rows, d_h))(keys)  # [n_gates, rows, d_h]
    return jnp.moveaxis(blocks, 0, 1).reshape(rows, n_gates * d_h).astype(dtype)


def _lecun_normal(key: PRNGKey, shape, dtype: DType) -> Array:
    return jax.nn.initializers.lecun_normal()(key, shape, jnp.float32).astype(dtype)


def _check_sizes(input_size: int, hidden_size: int) -> None:
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"expected {name} to be a positive int, got {value!r}")


def init_lstm_cell(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    proj_size: int = 0,
    peephole: bool = False,
    layer_norm: bool = False,
    forget_bias: float = 1.0,
    dtype: DType = jnp.float32,
) -> LSTMParams:
    """Initialise one LSTM cell.

    ``w_x`` is LeCun-normal, ``w_h`` orthogonal per gate, ``b`` zero except the forget
    slice, which is ``forget_bias`` (+1 by default). Peephole weights start at zero, layer
    norm gains at one.

    Args:
      key: PRNG key.
      input_size: ``d_in``.
      hidden_size: ``d_h``.
      proj_size: if > 0, ``h`` is projected to this size (``d_out``); must be < ``d_h``.
      peephole: add peephole connections ``w_peep: [3, d_h]``.
      layer_norm: LayerNorm-LSTM.
      forget_bias: initial value of the forget-gate bias.
      dtype: parameter dtype.

    Returns:
      ``LSTMParams`` with ``w_x: [d_in, 4*d_h]``, ``w_h: [d_out, 4*d_h]``, ``b: [4*d_h]``.
    """
    _check_sizes(input_size, hidden_size)
    if not isinstance(proj_size, int) or proj_size < 0:
        raise ValueError(f"expected proj_size to be a non-negative int, got {proj_size!r}")
    if proj_size >= hidden_size:
        raise ValueError(
            f"expected proj_size < hidden_size (or 0 for no projection), got proj_size={proj_size}, "
            f"hidden_size={hidden_size}"
        )
    d_out = proj_size or hidden_size
    k_x, k_h, k_p = jax.random.split(as_key(key), 3)
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size : 2 * hidden_size].set(forget_bias)
    return LSTMParams(
        w_x=_lecun_normal(k_x, (input_size, 4 * hidden_size), dtype),
        w_h=_orthogonal_per_gate(k_h, d_out, hidden_size, 4, dtype),
        b=b,
        w_peep=jnp.zeros((3, hidden_size), dtype) if peephole else None,
        ln=(
            LSTMLayerNorm(
                scale_x=jnp.ones((4 * hidden_size,), dtype),
                scale_h=jnp.ones((4 * hidden_size,), dtype),
                scale_c=jnp.ones((hidden_size,), dtype),
                bias_c=jnp.zeros((hidden_size,), dtype),
            )
            if layer_norm
            else None
        ),
        w_proj=_lecun_normal(k_p, (hidden_size, proj_size), dtype) if proj_size else None,
    )


def init_gru_cell(key: PRNGKey, input_size: int, hidden_size: int, *, dtype: DType = jnp.float32) -> GRUParams:
    """Initialise one GRU cell: ``w_x`` LeCun-normal, ``w_h`` orthogonal per gate, zero biases."""
    _check_sizes(input_size, hidden_size)
    k_x, k_h = jax.random.split(as_key(key))
    return GRUParams(
        w_x=_lecun_normal(k_x, (input_size, 3 * hidden_size), dtype),
        w_h=_orthogonal_per_gate(k_h, hidden_size, hidden_size, 3, dtype),
        b_x=jnp.zeros((3 * hidden_size,), dtype),
        b_h=jnp.zeros((3 * hidden_size,), dtype),
    )


def init_rnn_cell(key: PRNGKey, input_size: int, hidden_size: int, *, dtype: DType = jnp.float32) -> RNNParams:
    """Initialise one tanh RNN cell: ``w_x`` LeCun-normal, ``w_h`` orthogonal, zero bias."""
    _check_sizes(input_size, hidden_size)
    k_x, k_h = jax.random.split(as_key(key))
    return RNNParams(
        w_x=_lecun_normal(k_x, (input_size, hidden_size), dtype),
        w_h=_orthogonal_per_gate(k_h, hidden_size, hidden_size, 1, dtype),
        b=jnp.zeros((hidden_size,), dtype),
    )


# --------------------------------------------------------------------------- LSTM math
def _along_last(v: Array, like: Array) -> Array:
    """``v: [n]`` broadcast explicitly to ``like: [..., n]`` (no implicit rank promotion)."""
    return jnp.broadcast_to(v.astype(like.dtype), like.shape)


def _layer_norm(z: Array, scale: Array, bias: Optional[Array] = None) -> Array:
    mean = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
    out = (z - mean) * jax.lax.rsqrt(var + _LN_EPS) * _along_last(scale, z)
    return out if bias is None else out + _along_last(bias, z)


def lstm_input_projection(params: LSTMParams, x: Array) -> Array:
    """Input half of the LSTM pre-activation. ``x: [..., d_in] -> zx: [..., 4*d_h]`` (bias included)."""
    zx = x.astype(params.w_x.dtype) @ params.w_x
    if params.ln is not None:
        zx = _layer_norm(zx.astype(carry_dtype(params)), params.ln.scale_x)
    return zx + _along_last(params.b, zx)


def lstm_recurrence(
    params: LSTMParams, carry: LSTMCarry, zx: Array, *, recurrent_mask: Optional[Array] = None
) -> tuple[LSTMCarry, Array]:
    """Carry half of one LSTM step.

    Args:
      params: the cell's ``LSTMParams``.
      carry: ``LSTMCarry(h: [d_out], c: [d_h])``.
      zx: ``[4*d_h]`` from ``lstm_input_projection``.
      recurrent_mask: optional ``[d_out]`` multiplier on ``h`` where it enters ``w_h``
        (variational recurrent dropout).

    Returns:
      ``(LSTMCarry(h', c'), h')`` with ``h': [d_out]``.
    """
    with jax.named_scope("lstm_recurrence"):
        dt = carry.c.dtype
        h = carry.h if recurrent_mask is None else carry.h * recurrent_mask
        zh = h.astype(params.w_h.dtype) @ params.w_h
        if params.ln is not None:
            zh = _layer_norm(zh.astype(dt), params.ln.scale_h)
        z = zx.astype(dt) + zh.astype(dt)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        if params.w_peep is not None:
            p = params.w_peep.astype(dt)
            i = i + p[0] * carry.c
            f = f + p[1] * carry.c
        c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        if params.w_peep is not None:
            o = o + p[2] * c
        c_out = c if params.ln is None else _layer_norm(c, params.ln.scale_c, params.ln.bias_c)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_out)
        if params.w_proj is not None:
            h_new = (h_new.astype(params.w_proj.dtype) @ params.w_proj).astype(dt)
        return LSTMCarry(h_new, c), h_new


def lstm_step(
    params: LSTMParams, carry: LSTMCarry, x: Array, *, recurrent_mask: Optional[Array] = None
) -> tuple[LSTMCarry, Array]:
    """One LSTM step for one example.

    ``x: [d_in]``, ``carry: LSTMCarry(h: [d_out], c: [d_h])`` -> ``(LSTMCarry, h: [d_out])``.

    >>> params = init_lstm_cell(jax.random.key(0), 3, 8)
    >>> carry, h = lstm_step(params, lstm_zero_carry(params), jnp.ones(3))
    >>> h.shape
    (8,)
    """
    return lstm_recurrence(params, carry, lstm_input_projection(params, x), recurrent_mask=recurrent_mask)


def lstm_zero_carry(params: LSTMParams) -> LSTMCarry:
    """Zero ``LSTMCarry(h: [d_out], c: [d_h])`` in ``carry_dtype(params)``."""
    dt = carry_dtype(params)
    d_h = params.w_h.shape[-1] // 4
    return LSTMCarry(jnp.zeros((params.w_h.shape[0],), dt), jnp.zeros((d_h,), dt))


# --------------------------------------------------------------------------- GRU math
def gru_input_projection(params: GRUParams, x: Array) -> Array:
    """``x: [..., d_in] -> zx: [..., 3*d_h]`` = ``x W_x + b_x``."""
    zx = x.astype(params.w_x.dtype) @ params.w_x
    return zx + _along_last(params.b_x, zx)


def gru_recurrence(
    params: GRUParams, h: Array, zx: Array, *, recurrent_mask: Optional[Array] = None
) -> tuple[Array, Array]:
    """Carry half of one GRU step (PyTorch's equations).

    ``r = σ(zx_r + W_hr h + b_hr)``, ``z = σ(zx_z + W_hz h + b_hz)``,
    ``n = tanh(zx_n + r ⊙ (W_hn h + b_hn))``, ``h' = (1 - z) ⊙ n + z ⊙ h``.
    ``h: [d_h]``, ``zx: [3*d_h]`` -> ``(h', h')``. ``recurrent_mask`` multiplies ``h`` where it
    enters ``W_h`` only.
    """
    with jax.named_scope("gru_recurrence"):
        dt = h.dtype
        hm = h if recurrent_mask is None else h * recurrent_mask
        zh = hm.astype(params.w_h.dtype) @ params.w_h
        zh = zh.astype(dt) + params.b_h.astype(dt)
        xr, xz, xn = jnp.split(zx.astype(dt), 3, axis=-1)
        hr, hz, hn = jnp.split(zh, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h_new = (1.0 - z) * n + z * h
        return h_new, h_new


def gru_step(params: GRUParams, h: Array, x: Array, *, recurrent_mask: Optional[Array] = None) -> tuple[Array, Array]:
    """One GRU step for one example. ``x: [d_in]``, ``h: [d_h]`` -> ``(h', h': [d_h])``."""
    return gru_recurrence(params, h, gru_input_projection(params, x), recurrent_mask=recurrent_mask)


def gru_zero_carry(params: GRUParams) -> Array:
    """Zero ``h: [d_h]``."""
    return jnp.zeros((params.w_h.shape[0],), carry_dtype(params))


# --------------------------------------------------------------------------- RNN math
def rnn_input_projection(params: RNNParams, x: Array) -> Array:
    """``x: [..., d_in] -> zx: [..., d_h]`` = ``x W_x + b``."""
    zx = x.astype(params.w_x.dtype) @ params.w_x
    return zx + _along_last(params.b, zx)


def rnn_recurrence(
    params: RNNParams, h: Array, zx: Array, *, recurrent_mask: Optional[Array] = None
) -> tuple[Array, Array]:
    """Carry half of one tanh-RNN step. ``h: [d_h]``, ``zx: [d_h]`` -> ``(h', h')``."""
    with jax.named_scope("rnn_recurrence"):
        dt = h.dtype
        hm = h if recurrent_mask is None else h * recurrent_mask
        h_new = jnp.tanh(zx.astype(dt) + (hm.astype(params.w_h.dtype) @ params.w_h).astype(dt))
        return h_new, h_new


def rnn_step(params: RNNParams, h: Array, x: Array, *, recurrent_mask: Optional[Array] = None) -> tuple[Array, Array]:
    """One tanh-RNN step for one example. ``x: [d_in]``, ``h: [d_h]`` -> ``(h', h': [d_h])``."""
    return rnn_recurrence(params, h, rnn_input_projection(params, x), recurrent_mask=recurrent_mask)


def rnn_zero_carry(params: RNNParams) -> Array:
    """Zero ``h: [d_h]``."""
    return jnp.zeros((params.w_h.shape[0],), carry_dtype(params))


# --------------------------------------------------------------------------- cell table
class CellDef(NamedTuple):
    """The functions that define a cell kind; hashable, so usable as a static argument."""

    name: str
    input_projection: Callable  # (params, x: [..., d_in]) -> zx: [..., n*d_h]
    recurrence: Callable  # (params, carry, zx, *, recurrent_mask) -> (carry, y)
    zero_carry: Callable  # params -> carry of one example

    def step(self, params, carry, x, *, recurrent_mask=None):
        """``step(params, carry, x) -> (carry, y)`` for one example."""
        return self.recurrence(params, carry, self.input_projection(params, x), recurrent_mask=recurrent_mask)


LSTM_CELL = CellDef("lstm", lstm_input_projection, lstm_recurrence, lstm_zero_carry)
GRU_CELL = CellDef("gru", gru_input_projection, gru_recurrence, gru_zero_carry)
RNN_CELL = CellDef("rnn", rnn_input_projection, rnn_recurrence, rnn_zero_carry)
