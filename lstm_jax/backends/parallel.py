"""Parallel-in-time LSTM (``impl="parallel"``, research mode): the recurrence over all ``t``
steps at once by Newton-type fixed-point iterations whose linear step is an associative scan.

The trajectory ``s = (h_t, c_t)_{t<T}`` is the fixed point of ``s_t = F(s_{t-1}, x_t)``. From
a guess ``s^k`` (zeros at first), one iteration linearises every step at once around
``s^k_{t-1}`` with an approximate Jacobian ``A_t`` and solves the linear recurrence

    s_t = A_t s_{t-1} + F(s^k_{t-1}) - A_t s^k_{t-1}

with ``jax.lax.associative_scan`` (O(log t) depth). DEER uses the full Jacobian (O(t d^3));
here it is quasi-DEER, the diagonal (``jacobian="diag"``), or the 2x2 block of each unit's
``(h_j, c_j)`` (``"block"``: the same O(t d) order and closer to the true Jacobian, ~35 % fewer
iterations, but 5-10x the time per iteration on a CPU in ``benchmarks/parallel_in_time.py``, so
``"diag"`` is the default). Without damping
the first ``k`` steps are exact after ``k`` iterations, so it converges in at most ``t``.

Damping (a trust region in the spirit of ELK, Gonzalez et al. 2024, reduced to its diagonal
form): the linear solve pulls each step towards the current guess,
``s_t = (A_t s_{t-1} + u_t + lam s^k_t) / (1 + lam)``, which shrinks ``A`` and keeps the scan
stable where ``|A|`` > 1 would blow up. With ``adaptive=True`` a step whose residual
``max |F(s_{t-1}) - s_t|`` grows by more than ``accept_growth`` (or overflows) is rejected
and ``lam`` grows; accepted steps shrink it back to 0. Fixed points are the same for every
``lam``. Defaults are plain quasi-DEER (``damping=0``, ``adaptive=False``): on random and
weight-scaled models (CPU, t = 1000) damping never cut the iteration count, and a strictly
monotone acceptance (``accept_growth=1``) stalled where plain quasi-DEER converged.

It stops when the residual is below ``tol`` or after ``max_iters`` iterations; if it has not
converged it falls back to the sequential ``lax.scan`` (``lax.cond``: run only then). The
number of iterations and the convergence flag come back with ``return_info=True``.

Gradients: a ``jax.custom_vjp`` by the implicit-function theorem at the converged
trajectory: the adjoint ``lam_t = g_t + J_{t+1}^T lam_{t+1}`` is solved by a sequential
reverse scan of per-step VJPs at the stored states (the backward of the sequential scan,
without re-running its forward), then one parallel VJP of ``F`` gives the weight and input
gradients. Reverse mode only (no ``jax.jvp``).

Plain LSTMs only (no peephole, LayerNorm or projection; float32 or float64), no dropout.
Semantics as the scan backend: past a length the step is the identity (carry frozen,
outputs zero, final state at the last valid step); the reverse direction reads the valid
prefix reversed.

>>> from lstm_jax.layers import init_lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> ys, state, info = parallel_stack(params, jnp.ones((2, 50, 3)), return_info=True)
>>> ys.shape, bool(info[0].converged)
((2, 50, 8), True)
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.backends import LayerCall
from lstm_jax.backends.fused import unfusable_reason
from lstm_jax.backends.masking import permute_valid_prefix
from lstm_jax.backends.network import run_network
from lstm_jax.backends.parallel_scan import JACOBIANS, cell_all, cell_and_jacobian, shift, solve_linear
from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.typing import Array

__all__ = ["ParallelInfo", "SolverConfig", "parallel_lstm_layer", "parallel_stack", "run", "unsupported"]


class SolverConfig(NamedTuple):
    """Static (hashable) settings of the fixed-point solver."""

    max_iters: int = 100
    tol: Optional[float] = None  # residual tolerance; None: 1e-6 (float32), 1e-12 (float64)
    jacobian: str = "diag"  # "diag" (quasi-DEER) or "block" (2x2 per unit)
    damping: float = 0.0  # initial trust-region weight lam
    adaptive: bool = False  # reject diverging steps and adapt lam
    accept_growth: float = 2.0  # adaptive: accept a step unless its residual grows by this factor
    fallback: bool = True  # sequential scan if not converged


class ParallelInfo(NamedTuple):
    """What the solver did for one layer and direction."""

    iterations: Array  # shape=[], int32: iterations run
    converged: Array  # shape=[], bool: residual < tol (False: the sequential fallback ran)
    residual: Array  # shape=[], float: max |F(s_{t-1}) - s_t| at the last accepted iterate


def _tol(cfg: SolverConfig, dtype) -> float:
    if cfg.tol is not None:
        return cfg.tol
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def _residual(fs: Array, s: Array) -> Array:
    r = jnp.max(jnp.abs(fs - s))
    return jnp.where(jnp.isfinite(r), r, jnp.inf)


def _newton(cfg: SolverConfig, w_h, zx, s0, valid):
    """The fixed-point iterations. Returns ``(s: [t, b, 2, d_h], iterations, residual)``."""
    t = zx.shape[0]
    s_init = jnp.zeros((t,) + s0.shape, s0.dtype)
    fs, a = cell_and_jacobian(w_h, zx, shift(s_init, s0), valid, cfg.jacobian)
    tol = _tol(cfg, s0.dtype)

    def cond(st):
        k, _, _, _, res, _ = st
        return (k < cfg.max_iters) & (res >= tol)

    def body(st):
        k, s, fs, a, res, lam = st
        s_prev = shift(s, s0)
        u = fs - (a * s_prev if cfg.jacobian == "diag" else jnp.sum(a * s_prev[..., None, :, :], axis=-2))
        scale = 1.0 / (1.0 + lam)
        a_l = a * scale
        u_l = (u + lam * s) * scale
        s_new = solve_linear(a_l, u_l, s0, cfg.jacobian)
        fs_new, a_new = cell_and_jacobian(w_h, zx, shift(s_new, s0), valid, cfg.jacobian)
        res_new = _residual(fs_new, s_new)
        if not cfg.adaptive:
            return k + 1, s_new, fs_new, a_new, res_new, lam
        ok = res_new < cfg.accept_growth * res  # inf/NaN (mapped to inf) never accepted
        pick = lambda x, y: jnp.where(ok, x, y)  # noqa: E731
        lam_next = jnp.where(ok, jnp.where(lam < 1e-3, 0.0, lam * 0.25), jnp.maximum(1.0, lam * 4.0))
        return k + 1, pick(s_new, s), pick(fs_new, fs), pick(a_new, a), pick(res_new, res), lam_next.astype(lam.dtype)

    res0 = _residual(fs, s_init)
    st0 = (jnp.int32(0), s_init, fs, a, res0, jnp.asarray(cfg.damping, s0.dtype))
    k, s, _, _, res, _ = jax.lax.while_loop(cond, body, st0)
    return s, k, res


def _sequential(w_h, zx, s0, valid):
    """The same trajectory by a sequential ``lax.scan`` (the fallback): ``[t, b, 2, d_h]``."""

    def step(s, inp):
        z, v = inp
        s_new = cell_all(w_h, z, s, v)
        return s_new, s_new

    vs = valid if valid is not None else jnp.ones(zx.shape[:2] + (1, 1), bool)
    return jax.lax.scan(step, s0, (zx, vs))[1]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(cfg: SolverConfig, w_h, zx, s0, valid):
    return _solve_fwd(cfg, w_h, zx, s0, valid)[0]


def _solve_fwd(cfg: SolverConfig, w_h, zx, s0, valid):
    with jax.named_scope("parallel_lstm_newton"):
        s, k, res = _newton(cfg, w_h, zx, s0, valid)
    converged = res < _tol(cfg, s0.dtype)
    if cfg.fallback:
        s = jax.lax.cond(converged, lambda: s, lambda: _sequential(w_h, zx, s0, valid))
    return (s, k, converged, res), (w_h, zx, s0, valid, s)


def _solve_bwd(cfg: SolverConfig, saved, cts):
    w_h, zx, s0, valid, s = saved
    g = cts[0]
    s_prev = shift(s, s0)
    vs = valid if valid is not None else jnp.ones(zx.shape[:2] + (1, 1), bool)

    def step(mu, inp):  # mu: cotangent reaching s_t from step t+1
        sp, z, v, g_t = inp
        lam_t = g_t + mu
        _, vjp = jax.vjp(lambda x: cell_all(w_h, z, x, v), sp)
        return vjp(lam_t)[0], lam_t

    with jax.named_scope("parallel_lstm_adjoint"):
        ds0, lam = jax.lax.scan(step, jnp.zeros_like(s0), (s_prev, zx, vs, g), reverse=True)
        _, vjp = jax.vjp(lambda w, z: cell_all(w, z, s_prev, valid), w_h, zx)
        dw_h, dzx = vjp(lam)
    return dw_h, dzx, ds0, None


_solve.defvjp(_solve_fwd, _solve_bwd)


# --------------------------------------------------------------------------- public layer
def _check_config(cfg: SolverConfig) -> None:
    if cfg.jacobian not in JACOBIANS:
        raise ValueError(f"expected jacobian in {JACOBIANS}, got {cfg.jacobian!r}")
    if not isinstance(cfg.max_iters, int) or isinstance(cfg.max_iters, bool) or cfg.max_iters < 1:
        raise ValueError(f"expected max_iters to be an int >= 1, got {cfg.max_iters!r}")
    if cfg.damping < 0:
        raise ValueError(f"expected damping >= 0, got {cfg.damping!r}")


def parallel_lstm_layer(
    params: LSTMParams,
    carry: LSTMCarry,
    xs: Array,
    lengths: Optional[Array] = None,
    *,
    reverse: bool = False,
    config: SolverConfig = SolverConfig(),
    return_info: bool = False,
):
    """One plain LSTM layer over a batch, time-major, evaluated parallel in time.

    Args:
      params: plain float32/float64 ``LSTMParams``.
      carry: ``LSTMCarry(h: [b, d_h], c: [b, d_h])`` initial state.
      xs: ``[t, b, d_in]``.
      lengths: optional ``[b]`` ints in ``[1, t]``.
      reverse: read each valid prefix backwards (outputs at their original positions).
      config: ``SolverConfig`` (iterations, tolerance, Jacobian, damping, fallback).
      return_info: also return a ``ParallelInfo``.

    Returns:
      ``(LSTMCarry(h: [b, d_h], c: [b, d_h]), ys: [t, b, d_h])`` (``+ (info,)`` with ``return_info``).
    """
    reason = unfusable_reason(params)
    if reason is not None:
        raise ValueError(f"expected plain float32/float64 LSTMParams, got {reason}")
    _check_config(config)
    if xs.ndim != 3 or xs.shape[-1] != params.w_x.shape[0]:
        raise ValueError(f"expected xs of shape [t, b, {params.w_x.shape[0]}], got shape {tuple(xs.shape)}")
    t, b, _ = xs.shape
    dt = params.w_h.dtype
    x = xs.astype(dt)
    valid = None
    if lengths is not None:
        lengths = lengths.astype(jnp.int32)
        mask = jnp.arange(t)[:, None] < lengths[None, :]  # [t, b]
        x = jnp.where(mask[..., None], x, jnp.zeros_like(x))
        valid = mask[..., None, None]
    if reverse:
        x = permute_valid_prefix(x, lengths)
    zx = jnp.einsum("tbi,ik->tbk", x, params.w_x, precision=jax.lax.Precision.HIGHEST) + params.b[None, None]
    s0 = jnp.stack([carry.h.astype(dt), carry.c.astype(dt)], axis=-2)  # [b, 2, d_h]
    s, k, converged, res = _solve(config, params.w_h, zx, s0, valid)
    ys = s[:, :, 0]
    if valid is not None:
        ys = jnp.where(valid[..., 0], ys, jnp.zeros_like(ys))
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    final = LSTMCarry(s[-1, :, 0], s[-1, :, 1])
    if return_info:
        return final, ys, ParallelInfo(k, converged, jax.lax.stop_gradient(res))
    return final, ys


def parallel_stack(
    params,
    xs: Array,
    *,
    lengths: Optional[Array] = None,
    initial_state: Optional[LSTMCarry] = None,
    config: SolverConfig = SolverConfig(),
    return_info: bool = False,
):
    """A stacked, possibly bidirectional plain-LSTM network, each layer parallel in time.

    Args:
      params: ``StackParams`` of plain LSTM cells.
      xs: ``[b, t, d_in]``.
      lengths: optional ``[b]`` ints; initial_state: optional ``LSTMCarry``, leaves ``[b, L, D, d_h]``.
      config: ``SolverConfig``; return_info: also return a list of ``ParallelInfo``, one per
        layer and direction (layer-major).

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h, c: [b, L, D, d_h]))`` (``+ (infos,)`` with ``return_info``).
    """
    infos = []

    def layer_fn(p, carry0, inputs, reverse, rmask):
        final, ys, info = parallel_lstm_layer(
            p, carry0, inputs, lengths, reverse=reverse, config=config, return_info=True
        )
        infos.append(info)
        return final, ys

    out = run_network(params, xs, LayerCall(lengths=lengths, initial_state=initial_state), layer_fn)
    return out + (infos,) if return_info else out


# --------------------------------------------------------------------------- backend interface
def unsupported(params, xs, call) -> Optional[str]:
    """Why the parallel backend cannot run this call (see ``lstm_jax.backends``), or None."""
    reasons = [r for layer in params.layers for p in layer if (r := unfusable_reason(p, call.compute_dtype))]
    if reasons:
        return f"expected plain LSTM params (no peephole, layer_norm, proj_size or compute_dtype), got {reasons[0]}"
    if call.uses_dropout:
        return (
            f"expected no dropout (the parallel backend has none), got dropout={call.dropout}, "
            f"recurrent_dropout={call.recurrent_dropout}"
        )
    return None


def run(params, xs: Array, call, **options) -> tuple[Array, LSTMCarry]:
    """``parallel_stack`` with the options of a ``backends.LayerCall``; ``options`` are ``SolverConfig`` fields."""
    return parallel_stack(
        params, xs, lengths=call.lengths, initial_state=call.initial_state, config=SolverConfig(**options)
    )
