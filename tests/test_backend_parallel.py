"""The parallel-in-time backend against the scan backend: outputs, final states, lengths
(1 and t), reverse, 2 layers, initial state, the sequential fallback, and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.backends import LayerCall
from lstm_jax.backends import parallel as P
from lstm_jax.backends.parallel_scan import solve_linear
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import init_lstm, lstm

B, T, D_IN, H = 3, 40, 4, 8


def _setup(num_layers=1, bidirectional=False, dtype=jnp.float32, t=T, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = init_lstm(k1, D_IN, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
    xs = jax.random.normal(k2, (B, t, D_IN), dtype)
    nd = 2 if bidirectional else 1
    state = LSTMCarry(
        0.5 * jax.random.normal(k3, (B, num_layers, nd, H), dtype),
        0.5 * jax.random.normal(k4, (B, num_layers, nd, H), dtype),
    )
    return params, xs, state


def _close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


@pytest.mark.parametrize("jacobian", ["diag", "block"])
@pytest.mark.parametrize("a_shape", [(5, 2, 2, 3)])
def test_solve_linear_matches_loop(jacobian, a_shape):
    t, b, _, d = a_shape
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    shape_a = (t, b, 2, d) if jacobian == "diag" else (t, b, 2, 2, d)
    a = jax.random.uniform(k1, shape_a, minval=-1, maxval=1)
    u, s0 = jax.random.normal(k2, (t, b, 2, d)), jax.random.normal(k3, (b, 2, d))
    s, want = s0, []
    for i in range(t):
        s = a[i] * s + u[i] if jacobian == "diag" else jnp.einsum("bpqd,bqd->bpd", a[i], s) + u[i]
        want.append(s)
    _close(solve_linear(a, u, s0, jacobian), jnp.stack(want), 1e-5)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, True)])
@pytest.mark.parametrize("lengths", [None, [1, T, 17]])
@pytest.mark.parametrize("jacobian", ["diag", "block"])
def test_matches_scan(num_layers, bidirectional, lengths, jacobian):
    params, xs, state = _setup(num_layers, bidirectional)
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    cfg = P.SolverConfig(jacobian=jacobian, fallback=False)
    ys, fin, infos = jax.jit(
        lambda p, x, s: P.parallel_stack(p, x, lengths=lengths, initial_state=s, config=cfg, return_info=True)
    )(params, xs, state)
    ys_s, fin_s = lstm(params, xs, lengths=lengths, initial_state=state, impl="scan")
    assert all(bool(i.converged) for i in infos)  # without the fallback
    assert ys.shape == ys_s.shape and ys.dtype == ys_s.dtype
    _close((ys, fin), (ys_s, fin_s), 1e-5)
    if lengths is not None:
        assert float(jnp.abs(ys[0, 1:]).max()) == 0.0


def test_through_lstm_impl_and_damping():
    params, xs, state = _setup(1, True)
    want = lstm(params, xs, initial_state=state, impl="scan")
    _close(lstm(params, xs, initial_state=state, impl="parallel"), want, 1e-5)
    damped = P.run(params, xs, LayerCall(initial_state=state), damping=1.0, max_iters=400, fallback=False)
    _close(damped, want, 1e-5)
    adaptive = P.run(params, xs, LayerCall(initial_state=state), damping=0.5, adaptive=True, fallback=False)
    _close(adaptive, want, 1e-5)


def test_fallback_when_not_converged():
    params, xs, state = _setup(2, True)
    lengths = jnp.asarray([1, T, 17], jnp.int32)
    cfg = P.SolverConfig(max_iters=1)
    ys, fin, infos = P.parallel_stack(params, xs, lengths=lengths, initial_state=state, config=cfg, return_info=True)
    assert not any(bool(i.converged) for i in infos) and all(int(i.iterations) == 1 for i in infos)
    _close((ys, fin), lstm(params, xs, lengths=lengths, initial_state=state, impl="scan"), 1e-5)
    no_fb = P.parallel_stack(params, xs, lengths=lengths, initial_state=state, config=cfg._replace(fallback=False))
    assert float(jnp.abs(no_fb[0] - ys).max()) > 1e-3  # the fallback really changed the result


def _grads(impl_fn, params, xs, state, lengths):
    def loss(p, x, s):
        ys, fin = impl_fn(p, x, s)
        return jnp.sum(ys**2) + jnp.sum(fin.h * fin.c) + jnp.sum(fin.c)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, state)


@pytest.mark.parametrize("lengths", [None, [1, T, 17]])
def test_grads_match_scan_float32(lengths):
    params, xs, state = _setup(2, True)
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    g_p = _grads(
        lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="parallel"), params, xs, state, lengths
    )
    g_s = _grads(lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="scan"), params, xs, state, lengths)
    _close(g_p, g_s, 1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(g_p), jax.tree_util.tree_leaves(g_s)):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * max(1.0, float(jnp.abs(b).max()))


def test_grads_match_scan_float64():
    with jax.enable_x64(True):
        params, xs, state = _setup(1, True, dtype=jnp.float64)
        lengths = jnp.asarray([1, T, 17], jnp.int32)
        g_p = _grads(
            lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="parallel"), params, xs, state, lengths
        )
        g_s = _grads(
            lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="scan"), params, xs, state, lengths
        )
        assert g_p[0].layers[0][0].w_h.dtype == jnp.float64
        _close(g_p, g_s, 1e-9)


def test_long_sequence_converges_in_few_iterations():
    params, xs, _ = _setup(t=2000)
    ys, fin, infos = jax.jit(
        lambda p, x: P.parallel_stack(p, x, config=P.SolverConfig(fallback=False), return_info=True)
    )(params, xs)
    assert bool(infos[0].converged) and int(infos[0].iterations) < 100
    _close((ys, fin), lstm(params, xs, impl="scan"), 1e-5)


def test_unsupported_and_errors():
    params, xs, _ = _setup()
    assert P.unsupported(params, xs, LayerCall()) is None
    assert "expected no dropout" in P.unsupported(params, xs, LayerCall(dropout=0.3, dropout_key=jax.random.key(0)))
    assert "w_peep" in P.unsupported(init_lstm(jax.random.key(1), D_IN, H, peephole=True), xs, LayerCall())
    with pytest.raises(ValueError, match="expected jacobian in"):
        P.parallel_stack(params, xs, config=P.SolverConfig(jacobian="full"))
    with pytest.raises(ValueError, match="expected max_iters to be an int >= 1, got 0"):
        P.parallel_stack(params, xs, config=P.SolverConfig(max_iters=0))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason=f"GPU check; default backend is {jax.default_backend()}")
def test_gpu_parallel_matches_scan():
    params, xs, state = _setup(2, True, t=300)
    lengths = jnp.asarray([1, 300, 170], jnp.int32)
    with jax.default_matmul_precision("highest"):
        got = _grads(
            lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="parallel"), params, xs, state, lengths
        )
        want = _grads(
            lambda p, x, s: lstm(p, x, lengths=lengths, initial_state=s, impl="scan"), params, xs, state, lengths
        )
        out = jax.jit(lambda p, x, s: P.parallel_stack(p, x, lengths=lengths, initial_state=s, return_info=True))(
            params, xs, state
        )
        ref = lstm(params, xs, lengths=lengths, initial_state=state, impl="scan")
    assert all(bool(i.converged) for i in out[2])
    _close(out[:2], ref, 1e-5)
    _close(got, want, 1e-4)
