"""The backend registry: names, the impl="auto" policy, refusals that name the reason and the
backends that can, and a conformance check of every registered backend against the scan
reference on one call with lengths, two layers and both directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lstm_jax
from lstm_jax import backends
from lstm_jax.backends import LayerCall, cpu_build
from lstm_jax.layers import init_gru, init_lstm

KEY = jax.random.key(0)
XS = jax.random.normal(jax.random.key(1), (3, 6, 4))
LENGTHS = jnp.array([6, 1, 4], jnp.int32)


def test_registry_lists_reference_and_fused():
    assert backends.names()[0] == "scan"
    assert {"fused", "fused_recompute", "fused_checkpoint"} <= set(backends.names())
    assert lstm_jax.layers.IMPLS[0] == "auto"
    table = backends.describe()
    for name in backends.names():
        assert f"`{name}`" in table


@pytest.mark.parametrize(
    "params,expected",
    [
        (init_lstm(KEY, 4, 8), "cpu_hybrid"),
        (init_lstm(KEY, 4, 256), "cpu_kernel"),
        (init_lstm(KEY, 4, 8, dtype=jnp.bfloat16), "scan"),  # neither custom VJP takes bfloat16 weights
        (init_lstm(KEY, 4, 8, peephole=True), "scan"),
        (init_lstm(KEY, 4, 8, proj_size=3), "scan"),
        (init_gru(KEY, 4, 8), "scan"),
    ],
    ids=["plain", "plain_wide", "plain_bf16", "peephole", "proj", "gru"],
)
def test_auto_policy_on_cpu(params, expected, monkeypatch):
    monkeypatch.setattr(cpu_build, "avx512", lambda: False)  # the AVX2 table; AVX-512 below
    if expected.startswith("cpu_") and not cpu_build.status().ok:
        expected = "fused"  # no kernel on this machine: the next in AUTO_ORDER["cpu"]
    assert backends.choose(params, XS, LayerCall(), platform="cpu") == expected
    # a bfloat16 compute_dtype: the kernel's mixed precision for plain float32 LSTMs, else scan
    kernel = expected.startswith("cpu_")
    mixed = backends.choose(params, XS, LayerCall(compute_dtype=jnp.bfloat16), platform="cpu")
    assert mixed == ("cpu_kernel" if kernel else "scan")


@pytest.mark.skipif(not cpu_build.status().ok, reason="the kernel backends need the C++ kernel built")
def test_auto_takes_the_kernel_forward_at_small_d_h_on_avx512(monkeypatch):
    small = init_lstm(KEY, 4, 8)
    monkeypatch.setattr(cpu_build, "avx512", lambda: True)
    assert backends.choose(small, XS, LayerCall(), platform="cpu") == "cpu_kernel"
    monkeypatch.setattr(cpu_build, "avx512", lambda: False)
    assert backends.choose(small, XS, LayerCall(), platform="cpu") == "cpu_hybrid"


def test_avx512_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(cpu_build, "_cpu", lambda: "flags=fpu sse avx2 avx512f avx512bw\nmodel name=X")
    assert cpu_build.avx512()
    monkeypatch.setattr(cpu_build, "_cpu", lambda: "flags=fpu sse avx2 avx512_vnni\nmodel name=avx512f")
    assert not cpu_build.avx512()


def test_auto_runs_what_it_chooses():
    params = init_lstm(KEY, 4, 8, num_layers=2)
    auto = lstm_jax.lstm(params, XS, lengths=LENGTHS, impl="auto")
    chosen = lstm_jax.lstm(params, XS, lengths=LENGTHS, impl=backends.choose(params, XS, LayerCall()))
    for a, b in zip(jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(chosen)):
        np.testing.assert_array_equal(a, b)


def test_refusal_names_reason_and_alternatives():
    params = init_gru(KEY, 4, 8)
    with pytest.raises(ValueError, match=r"impl='fused' cannot run this call: .*GRUParams.*backends that can: .*scan"):
        lstm_jax.gru(params, XS, impl="fused")
    with pytest.raises(ValueError, match=r"expected impl in \('auto', 'scan'"):
        lstm_jax.lstm(init_lstm(KEY, 4, 8), XS, impl="nope")


@pytest.mark.parametrize("name", backends.names())
def test_every_backend_matches_scan_or_says_why_not(name):
    params = init_lstm(KEY, 4, 5, num_layers=2, bidirectional=True)
    h0 = jax.random.normal(jax.random.key(2), (3, 2, 2, 5))
    state0 = lstm_jax.LSTMCarry(h0, -h0)
    call = LayerCall(lengths=LENGTHS, initial_state=state0)
    reason = backends.unsupported(name, params, XS, call)
    if reason is not None:  # e.g. cuDNN off a GPU: refused with a reason, never run
        assert isinstance(reason, str) and reason
        with pytest.raises(ValueError, match="cannot run this call"):
            backends.run(name, params, XS, call)
        return
    ref = backends.run("scan", params, XS, call)
    got = backends.run(name, params, XS, call)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fused", "cpu_kernel", "cpu_hybrid", "auto"])
def test_forward_mode_through_a_custom_vjp_backend_names_scan(name):
    params = init_lstm(KEY, 4, 5)
    f = lambda impl: lambda x: lstm_jax.lstm(params, x, impl=impl)[0]  # noqa: E731
    if name == "auto" and backends.choose(params, XS, LayerCall()) == "scan":
        pytest.fail("expected auto to pick a custom-VJP backend for a plain LSTM on CPU")
    with pytest.raises(TypeError, match="use impl='scan' for forward-mode AD"):
        jax.jvp(f(name), (XS,), (XS,))
    # scan gives forward-mode derivatives, equal to reverse mode (a linear functional of both)
    _, tangent = jax.jvp(f("scan"), (XS,), (jnp.ones_like(XS),))
    _, vjp = jax.vjp(f(name), XS)
    (cot,) = vjp(jnp.ones_like(tangent))
    np.testing.assert_allclose(float(jnp.sum(tangent)), float(jnp.sum(cot)), rtol=1e-4)


def test_the_default_impl_is_auto_for_the_functions_and_the_flax_modules(monkeypatch):
    seen = []
    run = backends.run
    monkeypatch.setattr(backends, "run", lambda impl, *a, **k: seen.append(impl) or run(impl, *a, **k))
    params = init_lstm(KEY, 4, 5)
    ys, _ = lstm_jax.lstm(params, XS, lengths=LENGTHS)
    module = lstm_jax.nn.LSTM(4, 5, rngs=nnx.Rngs(0))
    module(XS)
    assert seen == ["auto", "auto"]
    ref, _ = lstm_jax.lstm(params, XS, lengths=LENGTHS, impl="scan")
    np.testing.assert_allclose(np.asarray(ys), np.asarray(ref), rtol=1e-5, atol=1e-6)
