"""The custom-VJP core of the fused LSTM layer: cell math, forward scan, backward scan.

Time-major and batch-level (``xs: [t, b, d_in]``); ``backends.fused.lstm_layer`` is the
public, checked entry point and explains the three memory modes. The backward loop keeps
only the sequential GEMM ``dh_{t-1} = dz_t W_h^T``; the weight and input gradients are
single large GEMMs after it (``_weight_grads``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.typing import Array

__all__: list = []


class _Weights(NamedTuple):
    w_x: Array  # [d_in, 4*d_h]
    w_h: Array  # [d_h, 4*d_h]
    b: Array  # [4*d_h]


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
            (dh0, dc0), (dw_x, dw_h, db), dxs = _chunked_backward(
                cfg, w, w_hT, h0, c0, xs, lengths, rmask, ys, stored, dys, dh, dc
            )
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
        chunk_in = (_chunked(xs, n, k), _chunked(dys, n, k), steps, stored)  # type: ignore[assignment]

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
