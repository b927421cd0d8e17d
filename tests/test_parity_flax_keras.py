"""Parity with flax (linen and NNX ``LSTMCell`` / ``OptimizedLSTMCell`` / ``GRUCell``, through
``interop.from_flax``) and Keras 3 (``LSTM`` / ``GRU`` / ``SimpleRNN`` on the JAX backend,
through ``interop.from_keras``).

Flax's carry is ``(c, h)`` with ``[b, d_h]`` leaves; ours is ``LSTMCarry(h, c)`` with
``[b, L, D, d_h]`` leaves. Keras returns ``[h, c]``. Where a peer is given sequence lengths
(flax ``seq_lengths``, Keras ``mask``) its outputs past the length are not zeros (flax keeps
computing, Keras repeats the last output), so only the valid prefix of the outputs is
compared there; the final states must match exactly. Run with ``-s`` to print the largest
errors measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import linen, nnx  # noqa: E402

import lstm_jax  # noqa: E402
from lstm_jax import interop  # noqa: E402

B, T, D_IN, D_H = 4, 7, 5, 6
LENGTHS = np.array([1, T, 3, 5])
TOL = 1e-5

MAX_ERR: dict[str, float] = {}

_RUN = {"lstm": jax.jit(lstm_jax.lstm), "gru": jax.jit(lstm_jax.gru), "rnn": jax.jit(lstm_jax.rnn)}


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    print("\nlargest |ours - peer| per quantity:")
    for name, err in sorted(MAX_ERR.items()):
        print(f"  {name:28s} {err:.2e}")


def _close(what: str, got, want, tol: float = TOL) -> None:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    chex.assert_equal_shape([got, want])
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    MAX_ERR[what] = max(MAX_ERR.get(what, 0.0), err)
    chex.assert_trees_all_close(got, want, atol=tol, rtol=0.0)


def _close_valid(what: str, got, want, lengths) -> None:
    """Compare ``[b, t, ...]`` outputs on each example's valid prefix only."""
    for i, n in enumerate(lengths):
        _close(what, np.asarray(got)[i, :n], np.asarray(want)[i, :n])


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(B, T, D_IN)).astype(np.float32)
    h0 = rng.normal(size=(B, D_H)).astype(np.float32)
    c0 = rng.normal(size=(B, D_H)).astype(np.float32)
    return xs, h0, c0


def _ours_state(a: np.ndarray) -> jax.Array:
    """``[b, d]`` -> ``[b, L=1, D=1, d]``."""
    return jnp.asarray(a)[:, None, None, :]


def _random_like(tree, seed: int):
    """Numpy random values (scale 0.5) for every leaf of an abstract pytree: kernels and
    biases all nonzero, so a lost, doubled or misplaced weight shows. Skips the peers'
    initialisers, which would cost a compile per op."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(scale=0.5, size=s.shape).astype(np.float32), tree)


def _stack(cell) -> lstm_jax.StackParams:
    return lstm_jax.StackParams(((cell,),))


# --------------------------------------------------------------------------- flax linen
LINEN_CELLS = {
    "LSTMCell": (linen.LSTMCell, "lstm"),
    "OptimizedLSTMCell": (linen.OptimizedLSTMCell, "lstm"),
    "GRUCell": (linen.GRUCell, "gru"),
}


@pytest.mark.parametrize("name", list(LINEN_CELLS))
def test_linen_cells_match_flax_rnn(name):
    """Flax ``nn.RNN`` with ``seq_lengths`` and an initial carry vs ``lstm``/``gru`` with lengths."""
    cls, kind = LINEN_CELLS[name]
    rnn = linen.RNN(cls(D_H), return_carry=True)
    xs, h0, c0 = _data()
    variables = _random_like(jax.eval_shape(rnn.init, jax.random.key(0), xs), seed=10)
    carry0 = (c0, h0) if kind == "lstm" else h0
    apply = jax.jit(lambda v, x, c0, n: rnn.apply(v, x, initial_carry=c0, seq_lengths=n))
    carry, ys_flax = apply(variables, xs, carry0, LENGTHS)

    params = interop.from_flax(variables["params"]["cell"])
    chex.assert_trees_all_equal(interop.from_flax(rnn.bind(variables).cell), params)  # a bound module works too
    init = lstm_jax.LSTMCarry(_ours_state(h0), _ours_state(c0)) if kind == "lstm" else _ours_state(h0)
    ys, final = _RUN[kind](_stack(params), jnp.asarray(xs), lengths=jnp.asarray(LENGTHS), initial_state=init)

    _close_valid("flax linen outputs", ys, ys_flax, LENGTHS)
    if kind == "lstm":
        _close("flax linen final h", final.h[:, 0, 0], carry[1])
        _close("flax linen final c", final.c[:, 0, 0], carry[0])
    else:
        _close("flax linen final h", final[:, 0, 0], carry)


def test_linen_bidirectional_matches_ours():
    """Flax ``nn.Bidirectional`` (backward RNN over the valid prefix) vs our bidirectional layer."""
    bi = linen.Bidirectional(
        linen.RNN(linen.OptimizedLSTMCell(D_H)), linen.RNN(linen.OptimizedLSTMCell(D_H)), return_carry=True
    )
    xs, _, _ = _data(1)
    variables = _random_like(jax.eval_shape(bi.init, jax.random.key(1), xs), seed=11)
    (carry_f, carry_b), ys_flax = jax.jit(lambda v, x, n: bi.apply(v, x, seq_lengths=n))(variables, xs, LENGTHS)

    p = variables["params"]
    params = lstm_jax.StackParams(
        ((interop.from_flax(p["forward_rnn"]["cell"]), interop.from_flax(p["backward_rnn"]["cell"])),)
    )
    ys, final = _RUN["lstm"](params, jnp.asarray(xs), lengths=jnp.asarray(LENGTHS))
    _close_valid("flax linen bidir outputs", ys, ys_flax, LENGTHS)
    _close("flax linen final h", final.h[:, 0, 0], carry_f[1])
    _close("flax linen final c", final.c[:, 0, 0], carry_f[0])
    _close("flax linen final h", final.h[:, 0, 1], carry_b[1])
    _close("flax linen final c", final.c[:, 0, 1], carry_b[0])


# --------------------------------------------------------------------------- flax NNX
NNX_CELLS = {
    "LSTMCell": (nnx.LSTMCell, "lstm"),
    "OptimizedLSTMCell": (nnx.OptimizedLSTMCell, "lstm"),
    "GRUCell": (nnx.GRUCell, "gru"),
}


@pytest.mark.parametrize("name", list(NNX_CELLS))
def test_nnx_cells_match_python_loop(name):
    """A Python loop over the NNX cell vs ``lstm``/``gru`` on the same sequence and initial state."""
    cls, kind = NNX_CELLS[name]
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(D_IN, D_H, rngs=nnx.Rngs(3))))
    state = _random_like(state, seed=12)
    cell = nnx.merge(graphdef, state)
    xs, h0, c0 = _data(2)

    @jax.jit
    def python_loop(state, xs, carry):
        module = nnx.merge(graphdef, state)
        ys = []
        for s in range(T):
            carry, y = module(carry, xs[:, s])
            ys.append(y)
        return carry, jnp.stack(ys, axis=1)

    carry0 = (jnp.asarray(c0), jnp.asarray(h0)) if kind == "lstm" else jnp.asarray(h0)
    carry, ys_nnx = python_loop(state, jnp.asarray(xs), carry0)

    for source in (cell, nnx.state(cell, nnx.Param)):  # the module, and its params State
        params = interop.from_flax(source, kind=kind)
        init = lstm_jax.LSTMCarry(_ours_state(h0), _ours_state(c0)) if kind == "lstm" else _ours_state(h0)
        ys, final = _RUN[kind](_stack(params), jnp.asarray(xs), initial_state=init)
        _close("flax nnx outputs", ys, ys_nnx)
        if kind == "lstm":
            _close("flax nnx final h", final.h[:, 0, 0], carry[1])
            _close("flax nnx final c", final.c[:, 0, 0], carry[0])
        else:
            _close("flax nnx final h", final[:, 0, 0], carry)


# --------------------------------------------------------------------------- keras
def _keras_layer(keras, name: str, xs: np.ndarray, seed: int, **kw):
    """A built Keras layer with random weights (zeros initialisers, then ``set_weights``: keras'
    orthogonal initialiser would cost a compile)."""
    cls = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "SimpleRNN": keras.layers.SimpleRNN}[name]
    zeros = dict(kernel_initializer="zeros", recurrent_initializer="zeros", bias_initializer="zeros")
    layer = cls(D_H, return_sequences=True, return_state=True, **zeros, **kw)
    layer.build(xs.shape)
    layer.set_weights(_random_like([np.asarray(w) for w in layer.get_weights()], seed))
    return layer


@pytest.mark.parametrize("name, kind", [("LSTM", "lstm"), ("GRU", "gru"), ("SimpleRNN", "rnn")])
def test_keras_layers_match(name, kind):
    """Keras with ``mask`` (lengths) and ``initial_state`` vs ours with lengths and initial state."""
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "jax"
    xs, h0, c0 = _data(3)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    layer = _keras_layer(keras, name, xs, seed=13)
    init_k = [h0, c0] if kind == "lstm" else [h0]
    with jax.numpy_rank_promotion("allow"):  # keras' own jax code broadcasts implicitly
        ys_k, *state_k = layer(xs, mask=mask, initial_state=init_k)

    params = interop.from_keras(layer)
    init = lstm_jax.LSTMCarry(_ours_state(h0), _ours_state(c0)) if kind == "lstm" else _ours_state(h0)
    ys, final = _RUN[kind](params, jnp.asarray(xs), lengths=jnp.asarray(LENGTHS), initial_state=init)
    _close_valid("keras outputs", ys, ys_k, LENGTHS)
    if kind == "lstm":
        _close("keras final h", final.h[:, 0, 0], state_k[0])
        _close("keras final c", final.c[:, 0, 0], state_k[1])
    else:
        _close("keras final h", final[:, 0, 0], state_k[0])


def test_keras_lstm_without_bias_full_length():
    """``use_bias=False`` and no mask: every output position is compared."""
    keras = pytest.importorskip("keras")
    xs, _, _ = _data(4)
    layer = _keras_layer(keras, "LSTM", xs, seed=14, use_bias=False)
    with jax.numpy_rank_promotion("allow"):  # keras' own jax code broadcasts implicitly
        ys_k, h_k, c_k = layer(xs)
    params = interop.from_keras(layer)
    chex.assert_trees_all_equal(params.layers[0][0].b, jnp.zeros((4 * D_H,), jnp.float32))
    ys, final = _RUN["lstm"](params, jnp.asarray(xs))
    _close("keras outputs", ys, ys_k)
    _close("keras final h", final.h[:, 0, 0], h_k)
    _close("keras final c", final.c[:, 0, 0], c_k)
