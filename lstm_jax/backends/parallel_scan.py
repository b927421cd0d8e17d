"""Helpers of the parallel-in-time backend (``backends.parallel``): the LSTM step evaluated at
every time step at once, its approximate Jacobians, and the linear recurrence they define,
solved with ``jax.lax.associative_scan``.

Shapes (time-major, batch-level): a trajectory ``s: [t, b, 2, d_h]`` stacks ``h`` (row 0) and
``c`` (row 1); ``zx: [t, b, 4*d_h]`` is the input projection plus bias (gates i, f, g, o);
``valid: [t, b, 1, 1]`` bool or None. Jacobians of ``s_t`` w.r.t. ``s_{t-1}``, per unit ``j``:

* ``"diag"``: the diagonal, ``a: [t, b, 2, d_h]`` (``dh_j/dh_j`` and ``dc_j/dc_j``);
* ``"block"``: the 2x2 block of unit ``j``, ``a: [t, b, 2, 2, d_h]`` (``a[p, q] = ds_p/ds_q``),

both O(t*d_h) per iteration (the full Jacobian, DEER's, is O(t*d_h^3)). At an invalid step
(past a length) the step is the identity, so its Jacobian is the identity and its offset zero.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lstm_jax.typing import Array

__all__ = ["JACOBIANS", "cell_all", "cell_and_jacobian", "shift", "solve_linear"]

JACOBIANS = ("diag", "block")


def shift(s: Array, s0: Array) -> Array:
    """The states entering each step: ``[s0, s_0, ..., s_{t-2}]`` for ``s: [t, ...]``, ``s0: [...]``."""
    return jnp.concatenate([s0[None], s[:-1]], axis=0)


def _gates(w_h: Array, zx: Array, h: Array):
    d_h = h.shape[-1]
    z = zx + jnp.einsum("...j,jk->...k", h, w_h, precision=jax.lax.Precision.HIGHEST)
    zr = z.reshape(z.shape[:-1] + (4, d_h))
    sig = jax.nn.sigmoid(zr)
    return sig[..., 0, :], sig[..., 1, :], jnp.tanh(zr[..., 2, :]), sig[..., 3, :]


def cell_all(w_h: Array, zx: Array, s_prev: Array, valid: Optional[Array]) -> Array:
    """The LSTM step at every position at once: ``s_prev: [..., 2, d_h] -> s_new: [..., 2, d_h]``.

    ``zx: [..., 4*d_h]``; where ``valid`` (``[..., 1, 1]``) is False the state passes unchanged.
    """
    h, c = s_prev[..., 0, :], s_prev[..., 1, :]
    i, f, g, o = _gates(w_h, zx, h)
    c_new = f * c + i * g
    s_new = jnp.stack([o * jnp.tanh(c_new), c_new], axis=-2)
    return s_new if valid is None else jnp.where(valid, s_new, s_prev)


def cell_and_jacobian(w_h: Array, zx: Array, s_prev: Array, valid: Optional[Array], jacobian: str):
    """``cell_all`` and its approximate Jacobian w.r.t. ``s_prev`` (see module docstring).

    Returns ``(s_new: [..., 2, d_h], a)`` with ``a: [..., 2, d_h]`` ("diag") or ``[..., 2, 2, d_h]`` ("block").
    """
    d_h = s_prev.shape[-1]
    h, c = s_prev[..., 0, :], s_prev[..., 1, :]
    i, f, g, o = _gates(w_h, zx, h)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    s_new = jnp.stack([o * tc, c_new], axis=-2)
    wd = jnp.diagonal(w_h.reshape(d_h, 4, d_h), axis1=0, axis2=2)  # [4, d_h]: dz_{k,j} / dh_j
    wi, wf, wg, wo = (w.reshape((1,) * (i.ndim - 1) + (d_h,)) for w in wd)
    dc_dh = wi * i * (1 - i) * g + wf * f * (1 - f) * c + wg * (1 - g * g) * i
    e = o * (1 - tc * tc)
    dh_dh = wo * o * (1 - o) * tc + e * dc_dh
    if jacobian == "diag":
        a = jnp.stack([dh_dh, f], axis=-2)
        eye = jnp.ones_like(a)
    else:
        a = jnp.stack([jnp.stack([dh_dh, e * f], axis=-2), jnp.stack([dc_dh, f], axis=-2)], axis=-3)
        eye = jnp.broadcast_to(jnp.eye(2, dtype=a.dtype)[:, :, None], a.shape)
    if valid is None:
        return s_new, a
    va = valid if jacobian == "diag" else valid[..., None]
    return jnp.where(valid, s_new, s_prev), jnp.where(va, a, eye)


def _matvec(a: Array, u: Array) -> Array:
    """Per-unit ``a @ u``: ``a: [..., 2, 2, d]``, ``u: [..., 2, d]`` -> ``[..., 2, d]``."""
    return jnp.sum(a * u[..., None, :, :], axis=-2)


def _matmul(a2: Array, a1: Array) -> Array:
    """Per-unit ``a2 @ a1`` for ``[..., 2, 2, d]`` blocks."""
    return jnp.sum(a2[..., :, :, None, :] * a1[..., None, :, :, :], axis=-3)


def solve_linear(a: Array, u: Array, s0: Array, jacobian: str) -> Array:
    """All ``s_t = a_t s_{t-1} + u_t`` (``t = 0..T-1``) from ``s0: [b, 2, d]`` by an associative scan.

    Args:
      a: ``[t, b, 2, d]`` ("diag") or ``[t, b, 2, 2, d]`` ("block").
      u: ``[t, b, 2, d]``.
      s0: ``[b, 2, d]``, the state before step 0.

    Returns:
      ``s: [t, b, 2, d]``. O(t) work, O(log t) depth.
    """
    if jacobian == "diag":
        u = u.at[0].add(a[0] * s0)

        def combine(e1, e2):  # e1 earlier: s -> a2 (a1 s + u1) + u2
            a1, u1 = e1
            a2, u2 = e2
            return a2 * a1, a2 * u1 + u2
    else:
        u = u.at[0].add(_matvec(a[0], s0))

        def combine(e1, e2):
            a1, u1 = e1
            a2, u2 = e2
            return _matmul(a2, a1), _matvec(a2, u1) + u2

    _, s = jax.lax.associative_scan(combine, (a, u), axis=0)
    return s
