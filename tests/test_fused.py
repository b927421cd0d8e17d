"""The fused custom-VJP LSTM layer against autodiff through the plain per-example scan.

Oracles: ``jax.vmap`` of ``scan.scan_cell`` differentiated by ``jax.grad`` (the core),
``lstm(impl="scan")``, the same layer run one example at a time, and finite differences
(``check_grads``). Every comparison is one jitted ``value_and_grad`` to keep compiles few.
"""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax.backends.fused import MEMORY_MODES, fused_stack, is_fusable, lstm_layer
from lstm_jax.cells import LSTM_CELL, LSTMCarry, init_lstm_cell
from lstm_jax.scan import scan_cell

B, T, D, H = 3, 9, 4, 5
LENGTHS = np.array([9, 4, 6])


def _inputs(dtype=jnp.float32, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    p = init_lstm_cell(k[0], D, H, dtype=dtype)
    p = p._replace(b=jax.random.normal(k[1], p.b.shape, dtype) * 0.5)  # not the init's zeros
    xs = jax.random.normal(k[2], (T, B, D), dtype)
    carry = LSTMCarry(jax.random.normal(k[3], (B, H), dtype) * 0.5, jax.random.normal(k[4], (B, H), dtype) * 0.5)
    return p, carry, xs


def _reference(p, carry, xs, lengths=None, reverse=False):
    """``jax.vmap`` over the batch of the core per-example ``scan_cell`` (time-major in/out)."""

    def one(h, c, x, length):
        return scan_cell(LSTM_CELL, p, LSTMCarry(h, c), x, length=length, reverse=reverse)

    final, ys = jax.vmap(one, in_axes=(0, 0, 1, None if lengths is None else 0))(carry.h, carry.c, xs, lengths)
    return final, jnp.swapaxes(ys, 0, 1)


def _both_directions(fn, lengths="arg"):
    """Forward and reverse direction of a layer in one function (one compile per check).

    ``lengths="arg"``: the lengths are the function's fourth argument.
    """

    def f(p, carry, xs, lens=None):
        lens = lens if lengths == "arg" else lengths
        f0, y0 = fn(p, carry, xs, lengths=lens, reverse=False)
        f1, y1 = fn(p, carry, xs, lengths=lens, reverse=True)
        return LSTMCarry(f0.h + 2 * f1.h, f0.c - f1.c), jnp.concatenate([y0, y1], axis=-1)

    return f


def _loss(fn):
    """A loss that touches every output, the final h and the final c with different weights."""

    def loss(p, carry, xs, *lengths):
        final, ys = fn(p, carry, xs, *lengths)
        w = jnp.arange(1, ys.size + 1, dtype=ys.dtype).reshape(ys.shape) / ys.size
        return jnp.sum(jnp.sin(ys) * w) + jnp.sum(final.h**2) + 1.5 * jnp.sum(final.c), (final, ys)

    return loss


_jit = jax.jit  # (conftest makes XLA compile cheaply: these tests are dominated by compiles)


def _run(fn, *args):
    return _jit(fn)(*args)


def _value_and_grads(fn, *args):
    return _run(jax.value_and_grad(_loss(fn), argnums=(0, 1, 2), has_aux=True), *args)


@pytest.fixture(scope="module")
def reference():
    """Outputs and gradients of the core scan for full lengths and for LENGTHS (one compile)."""
    grads = _jit(jax.value_and_grad(_loss(_both_directions(_reference)), argnums=(0, 1, 2), has_aux=True))
    return {
        name: grads(*_inputs(), jnp.asarray(lens)) for name, lens in (("full", np.full(B, T)), ("lengths", LENGTHS))
    }


@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_values_and_grads_match_autodiff_of_scan_cell(memory, reference):
    # lengths, both directions, a non-zero initial state; hoist = chunk = 4 do not divide t = 9
    fused = partial(lstm_layer, memory=memory, hoist=4, chunk=4)
    (_, (final, ys)), g = _value_and_grads(_both_directions(fused, jnp.asarray(LENGTHS)), *_inputs())
    (_, (final_ref, ys_ref)), g_ref = reference["lengths"]
    chex.assert_trees_all_close((final, ys), (final_ref, ys_ref), atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(g, g_ref, atol=1e-5, rtol=1e-5)
    padded = np.arange(T)[:, None] >= LENGTHS[None, :]
    assert np.all(np.asarray(ys)[..., :H][padded] == 0.0)  # past the length: exactly zero
    assert np.all(np.asarray(ys)[..., H:][padded] == 0.0)


@pytest.mark.parametrize(
    "unroll, hoist, lengths", [(3, 0, "full"), (2, 4, "lengths"), (1, 100, "full")], ids=["unroll3", "chunk4", "whole"]
)
def test_every_forward_variant_gives_the_same_values_and_grads(unroll, hoist, lengths, reference):
    lens = None if lengths == "full" else jnp.asarray(LENGTHS)
    fused = partial(lstm_layer, unroll=unroll, hoist=hoist)
    (_, out), g = _value_and_grads(_both_directions(fused, lens), *_inputs())
    (_, out_ref), g_ref = reference[lengths]
    chex.assert_trees_all_close(out, out_ref, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_grads_match_central_finite_differences():
    # what jax.test_util.check_grads(modes=["rev"]) does, with our cheaper compiles: the
    # directional derivative along random directions, from the VJP and from f64 differences
    with jax.enable_x64(True):
        args = _inputs(jnp.float64, seed=2)
        layer = partial(lstm_layer, lengths=jnp.asarray(LENGTHS), reverse=True, hoist=2)
        loss = _jit(lambda *a: _loss(layer)(*a)[0])
        grads = _jit(jax.grad(lambda *a: _loss(layer)(*a)[0], argnums=(0, 1, 2)))(*args)
        leaves, treedef = jax.tree_util.tree_flatten(args)
        for seed in range(3):
            keys = jax.random.split(jax.random.key(seed), len(leaves))
            v = [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
            plus, minus = (
                jax.tree_util.tree_unflatten(treedef, [a + s * d for a, d in zip(leaves, v)]) for s in (1e-5, -1e-5)
            )
            numeric = (loss(*plus) - loss(*minus)) / 2e-5
            analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads), v))
            np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6, atol=1e-7)


def test_nan_junk_in_the_padding_reaches_neither_outputs_nor_gradients():
    p, carry, xs = _inputs(seed=5)
    padded = np.arange(T)[:, None] >= LENGTHS[None, :]
    junk = jnp.where(jnp.asarray(padded)[:, :, None], jnp.nan, xs)
    fused = _both_directions(partial(lstm_layer, memory="recompute", hoist=4), jnp.asarray(LENGTHS))
    (_, out), g = _value_and_grads(fused, p, carry, junk)
    (_, out_clean), g_clean = _value_and_grads(fused, p, carry, xs)
    chex.assert_tree_all_finite((out, g))
    chex.assert_trees_all_close((out, g[:2]), (out_clean, g_clean[:2]), atol=1e-6)
    assert np.all(np.asarray(g[2])[padded] == 0.0)  # no gradient for the padding itself


def test_batch_equals_one_example_at_a_time():
    p, carry, xs = _inputs(seed=3)
    lens = jnp.asarray(LENGTHS)
    final, ys = _run(lstm_layer, p, carry, xs, lens)
    one = _jit(lstm_layer)
    for i in range(B):
        f_i, y_i = one(p, LSTMCarry(carry.h[i : i + 1], carry.c[i : i + 1]), xs[:, i : i + 1], lens[i : i + 1])
        chex.assert_trees_all_close(y_i[:, 0], ys[:, i], atol=1e-6)
        chex.assert_trees_all_close((f_i.h[0], f_i.c[0]), (final.h[i], final.c[i]), atol=1e-6)


def test_lstm_impl_fused_matches_scan_for_a_deep_bidirectional_network_with_dropout():
    k = jax.random.split(jax.random.key(4), 5)
    params = lstm_jax.init_lstm(k[0], D, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(k[1], (B, T, D))
    state = LSTMCarry(jax.random.normal(k[2], (B, 2, 2, H)), jax.random.normal(k[3], (B, 2, 2, H)))
    kw = dict(lengths=jnp.asarray(LENGTHS), dropout=0.3, recurrent_dropout=0.25, dropout_key=k[4])
    weights = jnp.linspace(0.0, 1.0, 2 * H)[None, None, :]

    def run(impl):
        def f(params, xs, state):
            ys, fin = lstm_jax.lstm(params, xs, impl=impl, initial_state=state, **kw)
            return jnp.sum(jnp.tanh(ys) * weights) + jnp.sum(fin.h**2) + jnp.sum(fin.c), (ys, fin)

        return _run(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True), params, xs, state)

    (v_ref, out_ref), g_ref = run("scan")
    (v, out), g = run("fused")
    chex.assert_shape(out[0], (B, T, 2 * H))
    chex.assert_type(out[0], jnp.float32)
    chex.assert_trees_all_close(out, out_ref, atol=1e-6)  # same dropout masks, same state layout
    chex.assert_trees_all_close((v, g), (v_ref, g_ref), atol=1e-5, rtol=1e-5)


def test_auto_falls_back_and_fused_refuses_cells_it_does_not_support():
    k = jax.random.key(5)
    xs = jnp.ones((2, 4, 3))
    peep = lstm_jax.init_lstm(k, 3, 4, peephole=True)
    assert not is_fusable(peep.layers[0][0]) and is_fusable(lstm_jax.init_lstm(k, 3, 4).layers[0][0])
    assert not is_fusable(lstm_jax.init_lstm(k, 3, 4).layers[0][0], compute_dtype=jnp.bfloat16)
    # impl="auto" on a peephole LSTM traces exactly the vmapped scan
    auto = jax.make_jaxpr(partial(lstm_jax.lstm, impl="auto"))(peep, xs)
    assert str(auto) == str(jax.make_jaxpr(lstm_jax.lstm)(peep, xs))
    assert str(auto) != str(jax.make_jaxpr(partial(lstm_jax.lstm, impl="auto"))(lstm_jax.init_lstm(k, 3, 4), xs))
    with pytest.raises(ValueError, match="expected plain LSTM params"):
        lstm_jax.lstm(peep, xs, impl="fused")
    with pytest.raises(ValueError, match="expected plain LSTM params"):
        lstm_jax.gru(lstm_jax.init_gru(k, 3, 4), xs, impl="fused")
    with pytest.raises(ValueError, match="expected impl in"):
        lstm_jax.lstm(lstm_jax.init_lstm(k, 3, 4), xs, impl="no_such_backend")
    cell, carry = init_lstm_cell(k, 3, 4), LSTMCarry(jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="expected memory in"):
        lstm_layer(cell, carry, jnp.ones((4, 2, 3)), memory="none")
    with pytest.raises(ValueError, match=r"expected xs of shape \[t, b, 3\]"):
        lstm_layer(cell, carry, jnp.ones((4, 2, 5)))
    with pytest.raises(ValueError, match=r"expected carry h and c of shape \[2, 4\]"):
        lstm_layer(cell, LSTMCarry(jnp.zeros((3, 4)), jnp.zeros((3, 4))), jnp.ones((4, 2, 3)))


def _residual_bytes(memory: str, t: int, b: int, h: int) -> int:
    """Bytes the backward pass keeps beyond the layer's own inputs (weights, state, xs)."""
    p = init_lstm_cell(jax.random.key(6), 3, h)
    carry = LSTMCarry(jnp.zeros((b, h)), jnp.zeros((b, h)))
    xs = jnp.ones((t, b, 3))

    def vjp_fn(p, carry, xs):
        return jax.vjp(lambda *a: lstm_layer(*a, memory=memory), p, carry, xs)[1]

    leaves = jax.tree_util.tree_leaves(jax.eval_shape(vjp_fn, p, carry, xs))
    stored = sum(np.prod(a.shape) * a.dtype.itemsize for a in leaves)
    return stored - sum(a.nbytes for a in jax.tree_util.tree_leaves((p, carry, xs)))


def test_memory_modes_store_what_they_promise():
    t, b, h = 64, 2, 8
    hc_bytes = 2 * t * b * h * 4  # (h, c) of every step, float32
    assert _residual_bytes("recompute", t, b, h) <= 1.2 * hc_bytes
    assert _residual_bytes("checkpoint", t, b, h) <= 0.15 * hc_bytes  # (h, c) every sqrt(64) = 8 steps
    assert _residual_bytes("gates", t, b, h) >= 3 * hc_bytes  # the fast mode keeps the gate derivatives


def test_fused_stack_does_not_recompile():
    params = lstm_jax.init_lstm(jax.random.key(7), D, H)
    f = _jit(lambda p, x: fused_stack(p, x)[0])
    x = jnp.ones((B, T, D))
    f(params, x)
    f(params, x + 1.0)
    assert f._cache_size() == 1
