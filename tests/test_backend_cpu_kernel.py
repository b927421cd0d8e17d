"""impl="cpu_kernel" (the C++ XLA FFI kernel) against the reference impl="scan": outputs, final
states and gradients, fuzzed over shapes and lengths; vmap; the inference path; and what happens
where the kernel cannot be built."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_jax import backends
from lstm_jax.backends import LayerCall, cpu_build, cpu_hybrid, cpu_kernel
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import init_gru, init_lstm, lstm

TOL = {"atol": 2e-5, "rtol": 2e-5}


def _problem(b, t, d_in, d_h, num_layers, bidirectional, lengths, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    params = init_lstm(keys[0], d_in, d_h, num_layers=num_layers, bidirectional=bidirectional)
    xs = jax.random.normal(keys[1], (b, t, d_in))
    shape = (b, num_layers, 2 if bidirectional else 1, d_h)
    state = LSTMCarry(0.5 * jax.random.normal(keys[2], shape), 0.5 * jax.random.normal(keys[3], shape))
    cts = (jax.random.normal(keys[4], (b, t, shape[2] * d_h)), jax.random.normal(keys[5], (2,) + shape))
    if lengths is not None:
        lengths = jnp.asarray(lengths, jnp.int32)
        pad = jnp.arange(t)[None, :, None] >= lengths[:, None, None]
        xs = jnp.where(pad, jnp.nan, xs)  # junk in the padding must not reach outputs or gradients
    return params, xs, state, lengths, cts


def _loss_and_grads(impl, params, xs, state, cts, kwargs):
    def loss(p, x, s):
        ys, final = backends.run(impl, p, x, LayerCall(initial_state=s, **kwargs))
        return jnp.sum(ys * cts[0]) + jnp.sum(final.h * cts[1][0]) + jnp.sum(final.c * cts[1][1]), (ys, final)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)


def _close(a, b, **tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, x.dtype, y.shape, y.dtype)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_the_kernel_builds_here():
    # CI installs the cpu-kernel extra and has g++: a missing kernel there is a failure, not a skip
    status = cpu_build.status()
    assert status.ok, status.reason


@settings(max_examples=12, deadline=None)
@given(
    b=st.integers(1, 5),
    t=st.integers(1, 9),
    d_h=st.sampled_from([1, 3, 8, 17]),
    num_layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    with_lengths=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_fuzzed_shapes_and_lengths_match_scan(b, t, d_h, num_layers, bidirectional, with_lengths, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b) if with_lengths else None
    params, xs, state, lengths, cts = _problem(b, t, 3, d_h, num_layers, bidirectional, lengths, seed)
    kwargs = {"lengths": lengths}
    (_, (ys_ref, fin_ref)), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, (ys, fin)), g = _loss_and_grads("cpu_kernel", params, xs, state, cts, kwargs)
    _close((ys, fin), (ys_ref, fin_ref), **TOL)
    if lengths is not None:  # exact zeros past each length
        assert not np.any(np.asarray(ys)[np.arange(t)[None, :] >= np.asarray(lengths)[:, None]])
    _close(g, g_ref, **TOL)  # params, inputs (NaN where padded, as scan), initial state


@pytest.mark.parametrize("b, d_h", [(13, 40), (13, 80), (7, 160)])
def test_blocked_and_threaded_shapes_match_scan(b, d_h):
    # rows past a multiple of the micro-kernel's row block, hidden sizes past a multiple of the
    # panel widths (16 forward, 32 backward), and steps large enough to be split across threads
    lengths = np.random.default_rng(d_h).integers(1, 6, size=b)
    params, xs, state, lengths, cts = _problem(b, 5, 4, d_h, 1, True, lengths, seed=d_h)
    kwargs = {"lengths": lengths, "recurrent_dropout": 0.2, "dropout_key": jax.random.key(2)}
    (_, out_ref), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, out), g = _loss_and_grads("cpu_kernel", params, xs, state, cts, kwargs)
    _close(out, out_ref, **TOL)
    _close(g, g_ref, **TOL)


def test_dropout_masks_are_those_of_scan():
    params, xs, state, lengths, cts = _problem(3, 6, 3, 5, 2, True, [6, 1, 4])
    kwargs = {
        "lengths": lengths,
        "dropout": 0.3,
        "recurrent_dropout": 0.25,
        "variational_dropout": True,
        "dropout_key": jax.random.key(7),
    }
    (_, out_ref), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, out), g = _loss_and_grads("cpu_kernel", params, xs, state, cts, kwargs)
    _close(out, out_ref, **TOL)
    _close(g, g_ref, **TOL)


def test_the_raw_kernel_is_right_for_rows_in_any_order():
    """The Python side sorts rows longest first; the kernel itself (which skips each step's rows
    past the last live one) must be right for unsorted rows too: values and gradients vs scan."""
    assert cpu_build.status().ok  # loads the kernel and registers its FFI targets
    lengths = [2, 7, 1, 7, 4, 5, 1]
    params, xs, state, lengths, cts = _problem(7, 7, 3, 6, 1, False, lengths, seed=4)
    xs = jnp.where(jnp.isnan(xs), 0.0, xs)
    p = params.layers[0][0]
    mask = jnp.ones((7, 6), jnp.float32)

    def kernel(p, x, h0, c0):
        ys, h, c = cpu_kernel._core(False, p.w_x, p.w_h, p.b, x.transpose(1, 0, 2), h0, c0, lengths, mask)
        return ys.transpose(1, 0, 2), h, c

    def scan(p, x, h0, c0):
        s = LSTMCarry(h0[:, None, None], c0[:, None, None])
        ys, final = backends.run(
            "scan", params._replace(layers=((p,),)), x, LayerCall(initial_state=s, lengths=lengths)
        )
        return ys, final.h[:, 0, 0], final.c[:, 0, 0]

    def loss(fn, *args):
        ys, h, c = fn(*args)
        return jnp.sum(ys * cts[0]) + jnp.sum(h * cts[1][0, :, 0, 0]) + jnp.sum(c * cts[1][1, :, 0, 0])

    args = (p, xs, state.h[:, 0, 0], state.c[:, 0, 0])
    _close(kernel(*args), scan(*args), **TOL)
    grads = [jax.grad(partial(loss, fn), argnums=(0, 1, 2, 3))(*args) for fn in (kernel, scan)]
    _close(*grads, **TOL)


@pytest.mark.parametrize(
    "lead, t, b, d_in, d_h",
    [
        ((), 37, 9, 5, 21),  # 333 rows: two row blocks, the second partial; 4h = 84: a partial column panel
        ((3,), 7, 4, 3, 8),  # ensemble members (vmap's leading axis), one small block each
        ((), 64, 32, 16, 64),  # large enough that the blocks are shared out across threads
    ],
)
def test_weight_gradient_kernel_is_the_transposed_gemm(lead, t, b, d_in, d_h):
    """dW = [X | H_prev]^T dz and db = sum dz, against float64 NumPy: H_prev is h0, then ys one step
    back, times the recurrent-dropout mask."""
    assert cpu_build.status().ok  # loads the kernel and registers its FFI targets
    rng = np.random.default_rng(t)
    xs, ys = rng.normal(size=(*lead, t, b, d_in)), rng.normal(size=(*lead, t, b, d_h))
    h0, dz = rng.normal(size=(*lead, b, d_h)), rng.normal(size=(*lead, t, b, 4 * d_h))
    mask = (rng.random((*lead, b, d_h)) > 0.3) / 0.7
    f32 = [jnp.asarray(a, jnp.float32) for a in (xs, ys, h0, mask, dz)]
    dw, db = jax.jit(cpu_kernel._weight_grads)(*f32)
    h_prev = np.concatenate([h0[..., None, :, :], ys[..., :-1, :, :]], axis=-3) * mask[..., None, :, :]
    a = np.concatenate([xs, h_prev], axis=-1).reshape(*lead, t * b, d_in + d_h)
    want_dw = np.swapaxes(a, -1, -2) @ dz.reshape(*lead, t * b, 4 * d_h)
    np.testing.assert_allclose(np.asarray(dw), want_dw, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(db), dz.sum(axis=(-3, -2)), atol=2e-4, rtol=1e-4)


def test_inference_path_and_public_entry_point():
    params, xs, _, _, _ = _problem(4, 7, 3, 6, 1, False, None)
    run = jax.jit(lambda p, x: lstm(p, x, impl="cpu_kernel"))
    _close(run(params, xs), lstm(params, xs, impl="scan"), **TOL)


def test_vmap_over_members_values_and_gradients():
    members = jax.vmap(lambda k: init_lstm(k, 3, 8))(jax.random.split(jax.random.key(3), 4))
    xs = jax.random.normal(jax.random.key(4), (5, 6, 3))
    lengths = jnp.array([6, 2, 1, 5, 3])

    def grads(impl):
        loss = lambda p: jnp.sum(jnp.sin(lstm(p, xs, lengths=lengths, impl=impl)[0]))
        return jax.jit(jax.vmap(jax.value_and_grad(loss)))(members)

    _close(grads("cpu_kernel"), grads("scan"), **TOL)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda k: init_lstm(k, 3, 4, layer_norm=True), "ln"),
        (lambda k: init_lstm(k, 3, 4, peephole=True), "w_peep"),
        (lambda k: init_gru(k, 3, 4), "GRUParams"),
        (lambda k: init_lstm(k, 3, 4, dtype=jnp.bfloat16), "only float32 weights"),
    ],
)
def test_unsupported_cells_are_refused_with_a_reason(make, match):
    params = make(jax.random.key(0))
    xs = jnp.ones((2, 3, 3))
    assert match in cpu_kernel.unsupported(params, xs, LayerCall())
    assert "float16" in cpu_kernel.unsupported(
        init_lstm(jax.random.key(0), 3, 4), xs, LayerCall(compute_dtype=jnp.float16)
    )


def _bf16(tree):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), tree)


def test_bfloat16_compute_dtype_is_mixed_precision():
    # one bidirectional layer: the bf16 path is the float32 kernel on bf16-rounded weights and
    # inputs (a product of two bf16 numbers is exact in float32), float32 accumulation
    params, xs, state, lengths, cts = _problem(3, 7, 5, 6, 1, True, [7, 4, 1])
    xs = jnp.where(jnp.isnan(xs), 0.0, xs)
    mixed = {"lengths": lengths, "compute_dtype": jnp.bfloat16}
    (v16, (y16, s16)), g16 = _loss_and_grads("cpu_kernel", params, xs, state, cts, mixed)
    (v32, (y32, s32)), g32 = _loss_and_grads("scan", _bf16(params), _bf16(xs), state, cts, {"lengths": lengths})
    _close((y16, s16), (y32, s32), **TOL)
    # the gradient GEMMs of the projection round the cotangent to bf16 (relative error ~ 2^-8)
    _close(g16, g32, atol=2e-2, rtol=2e-2)
    # against scan with the same compute_dtype, which also rounds h before its recurrent matmul
    (_, (ys_scan, _)), _ = _loss_and_grads("scan", params, xs, state, cts, mixed)
    np.testing.assert_allclose(np.asarray(y16), np.asarray(ys_scan), atol=3e-2, rtol=3e-2)
    assert "cpu_kernel" in cpu_hybrid.unsupported(params, xs, LayerCall(compute_dtype=jnp.bfloat16))
    assert backends.choose(params, xs, LayerCall(compute_dtype=jnp.bfloat16), platform="cpu") == "cpu_kernel"


def test_without_a_compiler_the_backend_says_why_and_auto_runs_xla(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler: 'no-such-compiler-here' is not on PATH"):
        cpu_build.build()
    missing = cpu_build.KernelStatus(False, None, "the CPU kernel is not available: no C++ compiler")
    monkeypatch.setattr(cpu_build, "status", lambda: missing)
    params, xs = init_lstm(jax.random.key(0), 3, 4), jnp.ones((2, 3, 3))
    with pytest.raises(ValueError, match="impl='cpu_kernel' cannot run this call: the CPU kernel is not available"):
        lstm(params, xs, impl="cpu_kernel")
    assert backends.choose(params, xs, LayerCall(), platform="cpu") != "cpu_kernel"
    _close(lstm(params, xs, impl="auto"), lstm(params, xs, impl="scan"), **TOL)


def test_the_build_cache_key_covers_every_included_header_and_the_cpu(monkeypatch):
    import re

    included = set(re.findall(r'#include "([^"/]+)"', cpu_build.SOURCE.read_text()))
    for header in cpu_build.HEADERS:
        included |= set(re.findall(r'#include "([^"/]+)"', cpu_build.SOURCE.with_name(header).read_text()))
    assert included == set(cpu_build.HEADERS)  # a new local header must join the key (and package-data)
    key = cpu_build._key("g++")
    monkeypatch.setattr(cpu_build, "_cpu", lambda: "model name=another CPU\nflags=sse2")
    assert cpu_build._key("g++") != key  # a -march=native build is never loaded on another CPU
    monkeypatch.setattr(cpu_build, "_sources", lambda: ["// edited", *cpu_build.HEADERS])
    assert cpu_build._key("g++") not in (key, cpu_build._key("clang++"))


def test_a_failed_compile_reports_the_compiler_output(monkeypatch, tmp_path):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that exits 1
    with pytest.raises(RuntimeError, match="compiling lstm_cpu.cc failed"):
        cpu_build.build(force=True)
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written is left for a later load


def test_hybrid_runs_scan_undifferentiated_and_the_kernel_under_grad(monkeypatch):
    from lstm_jax.backends import cpu_hybrid
    from lstm_jax.backends import scan as scan_backend

    params, xs, state, lengths, cts = _problem(3, 6, 3, 5, 2, True, [6, 1, 4])
    kwargs = {"lengths": lengths, "dropout": 0.2, "recurrent_dropout": 0.3, "dropout_key": jax.random.key(5)}
    (_, out_ref), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, out), g = _loss_and_grads("cpu_hybrid", params, xs, state, cts, kwargs)
    _close(out, out_ref, **TOL)
    _close(g, g_ref, **TOL)
    # which program runs: count the calls of each backend while tracing
    calls = []
    for module in (scan_backend, cpu_kernel):
        real = module.run
        monkeypatch.setattr(
            module, "run", lambda *a, _real=real, _m=module.__name__, **k: calls.append(_m) or _real(*a, **k)
        )
    call = LayerCall(lengths=lengths)
    jax.jit(lambda p, x: cpu_hybrid.run(p, x, call)).lower(params, xs)
    assert calls == ["lstm_jax.backends.scan"]
    calls.clear()
    jax.jit(jax.grad(lambda p, x: jnp.sum(cpu_hybrid.run(p, x, call)[0]))).lower(params, xs)
    assert calls == ["lstm_jax.backends.cpu_kernel"]
