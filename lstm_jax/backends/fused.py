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
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.layers import dropout_mask, stack_states
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



class _Weights(NamedTuple):
    w_x: Array  # [d_in, 4*d_h]
    w_h: Array  # [d_h, 4*d_h]
    b: Array  # [4*d_h]


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


# --------------------------------------------------------------------------- cell math
def _act_consts(dtype):
    """``act = tanh(z * s) * m + a``: sigmoid for gates i, f, o and tanh for g, in one op.

    ``sigmoid(x) = 0.5 * tanh(0.5 x) + 0.5``, so the four gates of a step are one fused
    elementwise op over ``[..., 4, d_h]``. Shapes ``[4, 1]``.
    """
    s = jnp.asarray([[0.5], [0.5], [1.0], [0.5]], dtype)
    a = jnp.asarray([[0.5], [0.5], [0.0], [0.5]], dtype)
    return s, s, a  # scale in, scale out (same numbers), shift


def _cell(z: Array, h: Array, c: Array, valid: Optional[Array], store: bool):
    """One step's elementwise part, for any leading shape.

    Args:
      z: ``[..., 4*d_h]`` pre-activations (input projection + bias + recurrent term).
      h, c: ``[..., d_h]`` carry before the step.
      valid: ``[..., 1]`` bool, or None (all valid).
      store: also return the backward residual ``r: [..., 6, d_h]``: ``G`` (4 rows), the
        derivatives of ``c_t`` w.r.t. the pre-activations of i, f, g and of ``h_t`` w.r.t.
        that of o; ``E = o * (1 - tanh(c_t)^2)``; ``F`` = the forget gate. The backward step
        is then ``dc += dh * E``, ``dz = G * [dc, dc, dc, dh]``, ``dc_prev = dc * F``. At
        invalid steps ``G = E = 0`` and ``F = 1``, so the cotangents pass through unchanged.

    Returns:
      ``(h', c', y, r)`` with ``y`` zero at invalid steps (``r`` None unless ``store``).
    """
    d_h = c.shape[-1]
    zr = z.reshape(z.shape[:-1] + (4, d_h))
    s, m, a = (v.reshape((1,) * (zr.ndim - 2) + (4, 1)) for v in _act_consts(z.dtype))
    act = jnp.tanh(zr * s) * m + a  # one elementwise op for all four gates
    i, f, g, o = act[..., 0, :], act[..., 1, :], act[..., 2, :], act[..., 3, :]
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h_new = o * tc
    r = None
    if store:
        gd = jnp.stack([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], axis=-2)
        e = o * (1 - tc * tc)
        if valid is not None:
            gd = jnp.where(valid[..., None], gd, 0)
            e = jnp.where(valid, e, 0)
            f = jnp.where(valid, f, 1)
        r = jnp.concatenate([gd, e[..., None, :], f[..., None, :]], axis=-2)
    if valid is None:
        return h_new, c_new, h_new, r
    return jnp.where(valid, h_new, h), jnp.where(valid, c_new, c), jnp.where(valid, h_new, 0), r


def _valid(steps: Array, lengths: Optional[Array]) -> Optional[Array]:
    """``[..., b, 1]`` bool from step indices ``[...]`` and ``lengths: [b]``."""
    if lengths is None:
        return None
    steps = jnp.asarray(steps)
    return (steps[..., None] < lengths.reshape((1,) * steps.ndim + lengths.shape))[..., None]


# --------------------------------------------------------------------------- forward
def _forward(w: _Weights, h0, c0, xs, lengths, rmask, *, unroll: int, hoist: int, store: Optional[str], t0=0):
    """Run the LSTM over ``xs: [t, b, d_in]`` from ``(h0, c0): [b, d_h]``.

    ``store``: None, ``"res"`` (emit the residual ``r: [t, b, 6, d_h]``) or ``"c"`` (emit the
    cell states ``[t, b, d_h]``). ``t0`` offsets the step index used for masking.
    Returns ``((h_T, c_T), ys: [t, b, d_h], extra)``.
    """
    t, b, d_in = xs.shape
    wh = w.w_h

    def rec(h):
        hm = h if rmask is None else h * rmask
        return hm @ wh

    def emit(y, c, r):
        if store == "res":
            return y, r
        if store == "c":
            return y, c
        return y, None

    if hoist == 0 or t == 1:

        def step(carry, inp):
            h, c = carry
            x, s = inp
            z = x @ w.w_x + rec(h) + w.b[None]
            h, c, y, r = _cell(z, h, c, _valid(s, lengths), store == "res")
            return (h, c), emit(y, c, r)

        steps = t0 + jnp.arange(t)
        (h, c), (ys, extra) = jax.lax.scan(step, (h0, c0), (xs, steps), unroll=max(1, min(unroll, t)))
        return (h, c), ys, extra

    if hoist >= t:
        zx = (xs.reshape(t * b, d_in) @ w.w_x + w.b[None]).reshape(t, b, -1)

        def step(carry, inp):
            h, c = carry
            z, s = inp
            h, c, y, r = _cell(z + rec(h), h, c, _valid(s, lengths), store == "res")
            return (h, c), emit(y, c, r)

        steps = t0 + jnp.arange(t)
        (h, c), (ys, extra) = jax.lax.scan(step, (h0, c0), (zx, steps), unroll=max(1, min(unroll, t)))
        return (h, c), ys, extra

    k = hoist
    n = -(-t // k)
    pad = n * k - t
    lens = lengths
    if pad:  # the padded steps at the end must not touch the carry
        end = jnp.full((b,), t0 + t, jnp.int32)
        lens = end if lens is None else jnp.minimum(lens, end)
    xc = jnp.pad(xs, ((0, pad), (0, 0), (0, 0))).reshape(n, k, b, d_in)

    def chunk(carry, inp):
        h, c = carry
        x, j0 = inp
        zx = (x.reshape(k * b, d_in) @ w.w_x + w.b[None]).reshape(k, b, -1)
        outs = []
        for j in range(k):
            h, c, y, r = _cell(zx[j] + rec(h), h, c, _valid(j0 + j, lens), store == "res")
            outs.append(emit(y, c, r))
        return (h, c), jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

    starts = t0 + k * jnp.arange(n)
    (h, c), (ys, extra) = jax.lax.scan(chunk, (h0, c0), (xc, starts), unroll=max(1, min(unroll, n)))
    unchunk = lambda a: a.reshape((n * k,) + a.shape[2:])[:t]  # noqa: E731
    return (h, c), unchunk(ys), (None if extra is None else unchunk(extra))


# --------------------------------------------------------------------------- backward
def _reverse_cells(w_hT, r, dys, steps, lengths, rmask, dh, dc):
    """The sequential part of the backward pass: one GEMM per step.

    ``r: [t, b, 6, d_h]`` residuals, ``dys: [t, b, d_h]``; ``(dh, dc): [b, d_h]`` cotangents of
    the carry after the last step. Returns ``((dh_0, dc_0), dz: [t, b, 4*d_h])``.
    """
    b, d_h = dh.shape
    oslot = jnp.asarray([[[0.0], [0.0], [0.0], [1.0]]], r.dtype)  # [1, 4, 1]

    def step(carry, inp):
        dh, dc = carry
        dy, rr, s = inp
        valid = _valid(s, lengths)
        if valid is not None:
            dy = jnp.where(valid, dy, 0)
        dh = dh + dy
        dc = dc + dh * rr[:, 4]
        m = dc[:, None, :] + oslot * (dh - dc)[:, None, :]
        dz = (rr[:, :4] * m).reshape(b, 4 * d_h)
        dh_prev = dz @ w_hT
        if rmask is not None:
            dh_prev = dh_prev * rmask
        if valid is not None:
            dh_prev = jnp.where(valid, dh_prev, dh)
        return (dh_prev, dc * rr[:, 5]), dz

    return jax.lax.scan(step, (dh, dc), (dys, r, steps), reverse=True)


def _tdot(a: Array, b: Array) -> Array:
    """``sum_{t,b} a[t, b, :]^T b[t, b, :]``: one GEMM contracting time and batch."""
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1])
    # XLA:CPU runs a dot that contracts both operands' leading axis on its slower generic
    # path (measured 45 vs 82 GFLOP/s at [2048, 64]^T [2048, 256]); a materialised transpose,
    # kept by the barrier (XLA would fold it back into the dot), makes it a plain matmul.
    return jax.lax.optimization_barrier(a2.T) @ b2


def _h_prev(h0, ys, rmask):
    """``[t, b, d_h]``: the (masked) ``h`` that entered each step's recurrent matmul."""
    hp = jnp.concatenate([h0[None], ys[:-1]], axis=0)
    return hp if rmask is None else hp * rmask[None]


def _weight_grads(w: _Weights, xs, h_prev, dz):
    """``(dW_x, dW_h, db, dX)`` from ``dz: [t, b, 4*d_h]`` as single large GEMMs."""
    t, b, _ = xs.shape
    dw_x = _tdot(xs, dz)
    dw_h = _tdot(h_prev, dz)
    db = jnp.sum(dz.reshape(t * b, -1), axis=0)
    dxs = (dz.reshape(t * b, -1) @ w.w_x.T).reshape(xs.shape)
    return dw_x, dw_h, db, dxs


class _Config(NamedTuple):
    memory: str
    unroll: int
    hoist: int
    chunk: int  # backward chunk (recompute) / checkpoint interval (checkpoint)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(cfg: _Config, w: _Weights, h0, c0, xs, lengths, rmask):
    (h, c), ys, _ = _forward(w, h0, c0, xs, lengths, rmask, unroll=cfg.unroll, hoist=cfg.hoist, store=None)
    return (h, c), ys


def _core_fwd(cfg: _Config, w: _Weights, h0, c0, xs, lengths, rmask):
    with jax.named_scope("fused_lstm_forward"):
        if cfg.memory == "gates":
            (h, c), ys, r = _forward(w, h0, c0, xs, lengths, rmask, unroll=cfg.unroll, hoist=cfg.hoist, store="res")
            res = (w, h0, c0, xs, lengths, rmask, ys, r)
        elif cfg.memory == "recompute":
            (h, c), ys, cs = _forward(w, h0, c0, xs, lengths, rmask, unroll=cfg.unroll, hoist=cfg.hoist, store="c")
            res = (w, h0, c0, xs, lengths, rmask, ys, cs)
        else:
            (h, c), ys, bounds = _checkpoint_forward(cfg, w, h0, c0, xs, lengths, rmask)
            res = (w, h0, c0, xs, lengths, rmask, None, bounds)
    return ((h, c), ys), res


def _chunked(a: Array, n: int, k: int) -> Array:
    """``[t, ...] -> [n, k, ...]``, zero-padded at the end."""
    pad = n * k - a.shape[0]
    a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((n, k) + a.shape[1:])


def _checkpoint_forward(cfg: _Config, w, h0, c0, xs, lengths, rmask):
    t, b, _ = xs.shape
    k = cfg.chunk
    n = -(-t // k)
    lens = lengths if lengths is not None or n * k == t else jnp.full((b,), t, jnp.int32)

    def chunk(carry, inp):
        x, j0 = inp
        new, ys, _ = _forward(w, *carry, x, lens, rmask, unroll=cfg.unroll, hoist=cfg.hoist, store=None, t0=j0)
        return new, (ys, carry)

    (h, c), (ys, bounds) = jax.lax.scan(chunk, (h0, c0), (_chunked(xs, n, k), k * jnp.arange(n)))
    return (h, c), ys.reshape((n * k,) + ys.shape[2:])[:t], bounds


def _core_bwd(cfg: _Config, res, cts):
    (dh, dc), dys = cts
    w, h0, c0, xs, lengths, rmask, ys, stored = res
    t, b, _ = xs.shape
    w_hT = w.w_h.T
    with jax.named_scope("fused_lstm_backward"):
        if cfg.memory == "gates":
            (dh0, dc0), dz = _reverse_cells(w_hT, stored, dys, jnp.arange(t), lengths, rmask, dh, dc)
            dw_x, dw_h, db, dxs = _weight_grads(w, xs, _h_prev(h0, ys, rmask), dz)
        else:
            (dh0, dc0), (dw_x, dw_h, db), dxs = _chunked_backward(cfg, w, w_hT, h0, c0, xs, lengths, rmask, ys,
                                                                    stored, dys, dh, dc)
    grads_w = _Weights(dw_x.astype(w.w_x.dtype), dw_h.astype(w.w_h.dtype), db.astype(w.b.dtype))
    # lengths are integers (no cotangent); the recurrent mask is treated as a constant
    # (the caller stops its gradient).
    return grads_w, dh0, dc0, dxs.astype(xs.dtype), None, None if rmask is None else jnp.zeros_like(rmask)


def _chunked_backward(cfg: _Config, w, w_hT, h0, c0, xs, lengths, rmask, ys, stored, dys, dh, dc):
    """Backward pass chunk by chunk (``recompute`` and ``checkpoint`` modes).

    Per chunk (last to first): get the residuals of its ``k`` steps (recomputed from the
    stored ``h``/``c`` with two large matmuls, or by re-running the forward from the
    checkpointed carry), run the reverse cell scan, and accumulate the weight gradients
    with one GEMM each.
    """
    t, b, d_in = xs.shape
    d_h = h0.shape[-1]
    k = cfg.chunk
    n = -(-t // k)
    lens = lengths if lengths is not None or n * k == t else jnp.full((b,), t, jnp.int32)
    steps = k * jnp.arange(n)

    if cfg.memory == "recompute":
        hp = jnp.concatenate([h0[None], ys[:-1]], axis=0)  # h entering each step (valid steps)
        cp = jnp.concatenate([c0[None], stored[:-1]], axis=0)
        chunk_in = (_chunked(xs, n, k), _chunked(dys, n, k), steps, _chunked(hp, n, k), _chunked(cp, n, k))
    else:
        chunk_in = (_chunked(xs, n, k), _chunked(dys, n, k), steps, stored)

    def chunk(carry, inp):
        dh, dc, gw_x, gw_h, gb = carry
        if cfg.memory == "recompute":
            x, dy, j0, hp_c, cp_c = inp
            hpm = hp_c if rmask is None else hp_c * rmask[None]
            z = (x.reshape(k * b, d_in) @ w.w_x + hpm.reshape(k * b, d_h) @ w.w_h + w.b[None]).reshape(k, b, 4 * d_h)
            valid = _valid(j0 + jnp.arange(k), lens)
            _, _, _, r = _cell(z, hp_c, cp_c, valid, store=True)
        else:
            x, dy, j0, (hb, cb) = inp
            _, ys_c, r = _forward(w, hb, cb, x, lens, rmask, unroll=cfg.unroll, hoist=cfg.hoist, store="res", t0=j0)
            hpm = jnp.concatenate([hb[None], ys_c[:-1]], axis=0)
            if rmask is not None:
                hpm = hpm * rmask[None]
        (dh, dc), dz = _reverse_cells(w_hT, r, dy, j0 + jnp.arange(k), lens, rmask, dh, dc)
        gx, gh, g_b, dx = _weight_grads(w, x, hpm, dz)
        return (dh, dc, gw_x + gx, gw_h + gh, gb + g_b), dx

    zeros = (jnp.zeros_like(w.w_x), jnp.zeros_like(w.w_h), jnp.zeros_like(w.b))
    (dh0, dc0, gw_x, gw_h, gb), dxs = jax.lax.scan(chunk, (dh, dc) + zeros, chunk_in, reverse=True)
    return (dh0, dc0), (gw_x, gw_h, gb), dxs.reshape((n * k, b, d_in))[:t]


_core.defvjp(_core_fwd, _core_bwd)


# --------------------------------------------------------------------------- reversal
def _reverse_index(t: int, lengths: Array) -> Array:
    steps = jnp.arange(t)[:, None]
    lengths = lengths[None]
    return jnp.where(steps < lengths, lengths - 1 - steps, steps)  # [t, b]


@jax.custom_vjp
def _permute(x: Array, index: Array) -> Array:
    return jnp.take_along_axis(x, index[:, :, None], axis=0)


def _permute_fwd(x, index):
    return _permute(x, index), index


def _permute_bwd(index, ct):
    # the valid-prefix reversal is its own inverse, so its transpose is itself (a gather,
    # not the scatter-add autodiff would emit)
    return _permute(ct, index), None


_permute.defvjp(_permute_fwd, _permute_bwd)


def permute_valid_prefix(x: Array, lengths: Optional[Array]) -> Array:
    """Time-major ``reverse_valid_prefix``: ``x: [t, b, d]``, ``lengths: [b]`` or None (flip)."""
    if lengths is None:
        return jnp.flip(x, axis=0)
    return _permute(x, _reverse_index(x.shape[0], lengths))


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
        # padding replaced by zeros (as the core scan does): NaN/inf junk there must not reach
        # the weight gradients through dW_x = sum_t x_t^T dz_t, where dz_t = 0
        x = jnp.where(_valid(jnp.arange(t), lengths), x, jnp.zeros_like(x))
    if reverse:
        x = permute_valid_prefix(x, lengths)
    rmask = None if recurrent_mask is None else jax.lax.stop_gradient(recurrent_mask.astype(dt))
    cfg = _Config(memory, unroll, hoist, chunk)
    (h, c), ys = _core(cfg, w, carry.h.astype(dt), carry.c.astype(dt), x, lengths, rmask)
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    return LSTMCarry(h, c), ys


# --------------------------------------------------------------------------- network
def _masks_like_run_stack(dropout_key: PRNGKey, b: int, num_layers: int, num_directions: int):
    """Per-example keys exactly as ``layers._batched`` + ``layers.run_stack`` derive them.

    Returns ``(k_between: [b, L] keys, k_rec: [b, L, D] keys)``.
    """
    keys = jax.random.split(dropout_key, b)

    def one(key):
        layer_keys = jax.random.split(key, num_layers)
        pairs = jax.vmap(jax.random.split)(layer_keys)  # [L, 2]
        return pairs[:, 0], jax.vmap(lambda k: jax.random.split(k, num_directions))(pairs[:, 1])

    return jax.vmap(one)(keys)


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
      lengths, initial_state, dropout, recurrent_dropout, variational_dropout, dropout_key,
        unroll, hoist: as ``layers.lstm``.
      memory, chunk: see ``lstm_layer``.

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``.
    """
    b, t, _ = xs.shape
    num_layers, num_directions = len(params.layers), len(params.layers[0])
    dt = params.layers[0][0].w_h.dtype
    d_h = params.layers[0][0].w_h.shape[0]
    use_dropout = dropout_key is not None
    if use_dropout:
        k_between, k_rec = _masks_like_run_stack(dropout_key, b, num_layers, num_directions)
    inputs = jnp.swapaxes(xs, 0, 1)  # [t, b, d_in]
    finals = []
    for l, layer in enumerate(params.layers):
        if l > 0 and use_dropout and dropout > 0.0:
            d = inputs.shape[-1]
            shape = (1, d) if variational_dropout else (t, d)
            mask = jax.vmap(lambda k: dropout_mask(k, dropout, shape, inputs.dtype))(k_between[:, l])
            inputs = inputs * jnp.swapaxes(mask, 0, 1)
        outputs = []
        for direction, cell_params in enumerate(layer):
            if initial_state is None:
                carry0 = LSTMCarry(jnp.zeros((b, d_h), dt), jnp.zeros((b, d_h), dt))
            else:
                carry0 = LSTMCarry(initial_state.h[:, l, direction], initial_state.c[:, l, direction])
            rmask = None
            if use_dropout and recurrent_dropout > 0.0:
                rmask = jax.vmap(lambda k: dropout_mask(k, recurrent_dropout, (d_h,), dt))(k_rec[:, l, direction])
            final, ys = lstm_layer(
                cell_params, carry0, inputs, lengths, reverse=(direction == 1), memory=memory,
                unroll=unroll, hoist=hoist, chunk=chunk, recurrent_mask=rmask,
            )
            outputs.append(ys)
            finals.append(final)
        inputs = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
    return jnp.swapaxes(inputs, 0, 1), stack_states(finals, num_layers, num_directions, axis=1)


# --------------------------------------------------------------------------- backend interface
def unsupported(params, xs, call) -> Optional[str]:
    """Why the fused backend cannot run this call (see ``lstm_jax.backends``), or None."""
    reasons = [r for layer in params.layers for p in layer if (r := unfusable_reason(p, call.compute_dtype))]
    if reasons:
        return (
            f"expected plain LSTM params (no peephole, layer_norm, proj_size or compute_dtype), got {reasons[0]}"
        )
    return None


def run(params, xs: Array, call, *, memory: str = "gates") -> tuple[Array, LSTMCarry]:
    """``fused_stack`` with the options of a ``backends.LayerCall``."""
    return fused_stack(
        params, xs, lengths=call.lengths, initial_state=call.initial_state, dropout=call.dropout,
        recurrent_dropout=call.recurrent_dropout, variational_dropout=call.variational_dropout,
        dropout_key=call.dropout_key, unroll=call.unroll, hoist=call.hoist, memory=memory,
    )
