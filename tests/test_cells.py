"""Cells against the textbook equations written out in NumPy (float64), gradient checks
against finite differences, init properties, and dtypes under strict promotion."""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lstm_jax import cells
from lstm_jax.cells import (
    GRU_CELL,
    LSTM_CELL,
    RNN_CELL,
    LSTMCarry,
    gru_step,
    init_gru_cell,
    init_lstm_cell,
    init_rnn_cell,
    lstm_step,
    rnn_step,
)

D_IN, D_H, D_PROJ = 3, 5, 2

# name -> (init function of (key, dtype), step function)
VARIANTS = {
    "lstm": (lambda k, dt: init_lstm_cell(k, D_IN, D_H, dtype=dt), lstm_step),
    "lstm_peephole": (lambda k, dt: init_lstm_cell(k, D_IN, D_H, peephole=True, dtype=dt), lstm_step),
    "lstm_layer_norm": (lambda k, dt: init_lstm_cell(k, D_IN, D_H, layer_norm=True, dtype=dt), lstm_step),
    "lstm_proj": (lambda k, dt: init_lstm_cell(k, D_IN, D_H, proj_size=D_PROJ, dtype=dt), lstm_step),
    "lstm_all": (
        lambda k, dt: init_lstm_cell(k, D_IN, D_H, proj_size=D_PROJ, peephole=True, layer_norm=True, dtype=dt),
        lstm_step,
    ),
    "gru": (lambda k, dt: init_gru_cell(k, D_IN, D_H, dtype=dt), gru_step),
    "rnn": (lambda k, dt: init_rnn_cell(k, D_IN, D_H, dtype=dt), rnn_step),
}


def _fill(shapes, seed, scale):
    """Random values (NumPy RNG, so nothing is compiled) for a pytree of ShapeDtypeStructs."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype=s.dtype), shapes)


def random_params(name, dtype=jnp.float32, seed=0, scale=0.5):
    """Params of a variant with every leaf random, so zero peepholes / unit LN gains are not special."""
    init, _ = VARIANTS[name]
    return _fill(jax.eval_shape(lambda k: init(k, dtype), jax.random.key(0)), seed, scale)


def random_carry(params, seed=1):
    return _fill(jax.eval_shape(params_zero_carry, params), seed, 0.7)


def params_zero_carry(params):
    if isinstance(params, cells.LSTMParams):
        return cells.lstm_zero_carry(params)
    if isinstance(params, cells.GRUParams):
        return cells.gru_zero_carry(params)
    return cells.rnn_zero_carry(params)


# --------------------------------------------------------------------------- NumPy oracles
def _np(a):
    return None if a is None else np.asarray(a, np.float64)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_layer_norm(z, scale, bias=None, eps=1e-5):
    mu = z.mean()
    var = ((z - mu) ** 2).mean()
    out = (z - mu) / np.sqrt(var + eps) * scale
    return out if bias is None else out + bias


def np_lstm_step(p, h, c, x):
    """LSTM (i, f, g, o) with peepholes (i, f see c_{t-1}; o sees c_t), Ba et al. layer norm and
    torch's LSTMP projection h = (o * tanh(c)) W_hr."""
    w_x, w_h, b = _np(p.w_x), _np(p.w_h), _np(p.b)
    h, c, x = _np(h), _np(c), _np(x)
    zx, zh = x @ w_x, h @ w_h
    if p.ln is not None:
        zx = _np_layer_norm(zx, _np(p.ln.scale_x))
        zh = _np_layer_norm(zh, _np(p.ln.scale_h))
    z = zx + zh + b
    n = c.shape[0]
    i, f, g, o = z[:n], z[n : 2 * n], z[2 * n : 3 * n], z[3 * n :]
    if p.w_peep is not None:
        peep = _np(p.w_peep)
        i = i + peep[0] * c
        f = f + peep[1] * c
    c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    if p.w_peep is not None:
        o = o + peep[2] * c_new
    c_out = c_new if p.ln is None else _np_layer_norm(c_new, _np(p.ln.scale_c), _np(p.ln.bias_c))
    h_new = _sigmoid(o) * np.tanh(c_out)
    if p.w_proj is not None:
        h_new = h_new @ _np(p.w_proj)
    return (h_new, c_new), h_new


def np_gru_step(p, h, x):
    """torch.nn.GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."""
    h, x = _np(h), _np(x)
    gx = x @ _np(p.w_x) + _np(p.b_x)
    gh = h @ _np(p.w_h) + _np(p.b_h)
    n_h = h.shape[0]
    r = _sigmoid(gx[:n_h] + gh[:n_h])
    z = _sigmoid(gx[n_h : 2 * n_h] + gh[n_h : 2 * n_h])
    n = np.tanh(gx[2 * n_h :] + r * gh[2 * n_h :])
    h_new = (1.0 - z) * n + z * h
    return h_new, h_new


def np_rnn_step(p, h, x):
    h_new = np.tanh(_np(x) @ _np(p.w_x) + _np(h) @ _np(p.w_h) + _np(p.b))
    return h_new, h_new


def np_step(name, p, carry, x):
    if name.startswith("lstm"):
        (h, c), y = np_lstm_step(p, carry.h, carry.c, x)
        return LSTMCarry(h, c), y
    if name == "gru":
        return np_gru_step(p, carry, x)
    return np_rnn_step(p, carry, x)


# --------------------------------------------------------------------------- equations
CELL_OF = {"lstm": LSTM_CELL, "gru": GRU_CELL, "rnn": RNN_CELL}


@functools.cache
def _run_variant(name):
    """One jitted function per variant (shared by the tests below, so it compiles once):
    the step with float32 params, the same via ``CellDef.step``, and the step with bfloat16
    params (float32 and bfloat16 inputs)."""
    _, step = VARIANTS[name]
    cell = CELL_OF[name.split("_")[0]]

    @jax.jit
    def run(p32, carry, x):
        p16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), p32)
        return dict(
            f32=step(p32, carry, x),
            celldef=cell.step(p32, carry, x),
            bf16=step(p16, carry, x),
            bf16_x=step(p16, carry, x.astype(jnp.bfloat16)),
        )

    return run


def _inputs(name):
    params = random_params(name)
    carry = random_carry(params)
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((3, D_IN)), jnp.float32)
    return params, carry, xs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_step_matches_numpy_equations(name):
    params, carry, xs = _inputs(name)
    np_carry = carry
    with jax.numpy_dtype_promotion("strict"):
        for x in xs:  # three chained steps, so the carry path is exercised too
            out = _run_variant(name)(params, carry, x)
            carry, y = out["f32"]
            chex.assert_trees_all_equal(out["celldef"], out["f32"])
            np_carry, np_y = np_step(name, params, np_carry, x)
            chex.assert_trees_all_close(y, np_y.astype(np.float32), atol=2e-6, rtol=2e-5)
            chex.assert_trees_all_close(
                carry, jax.tree_util.tree_map(lambda a: a.astype(np.float32), np_carry), atol=2e-6, rtol=2e-5
            )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_float32_and_bfloat16_params_keep_float32_carry_and_outputs(name):
    params, carry, xs = _inputs(name)
    with jax.numpy_dtype_promotion("strict"):
        out = _run_variant(name)(params, carry, xs[0])
        p16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
        zero16 = jax.eval_shape(params_zero_carry, p16)
        from_zero = jax.eval_shape(lambda p: VARIANTS[name][1](p, params_zero_carry(p), xs[0]), p16)
    for leaf in jax.tree_util.tree_leaves((out, zero16, from_zero)):
        assert leaf.dtype == jnp.float32
    chex.assert_trees_all_close(out["bf16"], out["f32"], atol=5e-2)
    chex.assert_trees_all_close(out["bf16_x"], out["f32"], atol=5e-2)
    assert not np.array_equal(out["bf16"][1], out["f32"][1])  # the bfloat16 path really ran in bfloat16


@pytest.mark.parametrize("name", ["lstm_all", "gru", "rnn"])
def test_input_projection_of_many_steps_equals_per_step(name):
    """The hoisted projection ``[t, d_in] -> [t, n*d_h]`` is what each step computes."""
    init, _ = VARIANTS[name]
    cell = CELL_OF[name.split("_")[0]]
    params = random_params(name)
    xs = jnp.asarray(np.random.default_rng(2).standard_normal((4, D_IN)), jnp.float32)
    with jax.numpy_dtype_promotion("strict"):
        zx = jax.jit(cell.input_projection)(params, xs)
        per_step = jax.jit(jax.vmap(cell.input_projection, in_axes=(None, 0)))(params, xs)
    chex.assert_shape(zx, (4, per_step.shape[-1]))
    chex.assert_trees_all_close(zx, per_step, atol=1e-6)


def test_recurrent_mask_multiplies_h_where_it_enters_w_h():
    params = random_params("lstm")
    carry = random_carry(params)
    x = jnp.ones((D_IN,))
    mask = jnp.array([0.0, 2.0, 1.0, 0.0, 3.0])
    got = jax.jit(lstm_step)(params, carry, x, recurrent_mask=mask)
    (h, c), y = np_lstm_step(params, np.asarray(carry.h) * np.asarray(mask), carry.c, x)
    chex.assert_trees_all_close(got[1], y.astype(np.float32), atol=2e-6)
    chex.assert_trees_all_close(got[0].c, c.astype(np.float32), atol=2e-6)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_check_grads_every_cell(name):
    """Reverse-mode derivatives of each step against finite differences (float64)."""
    init, step = VARIANTS[name]
    with jax.enable_x64(True):
        params = random_params(name, jnp.float64)
        carry = random_carry(params)
        x = jnp.asarray(np.random.default_rng(2).standard_normal(D_IN), jnp.float64)
        chex.assert_type(jax.tree_util.tree_leaves((params, carry, x)), jnp.float64)
        check_grads(jax.jit(step), (params, carry, x), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- init
def _gate_blocks(w, n_gates):
    d_h = w.shape[-1] // n_gates
    return [np.asarray(w[:, k * d_h : (k + 1) * d_h], np.float64) for k in range(n_gates)]


# Eager init with the same sizes everywhere: primitives compile once per shape.
_FAN_IN, _HID = 64, 6


def test_lstm_init_properties():
    params = init_lstm_cell(jax.random.key(0), _FAN_IN, _HID, peephole=True, layer_norm=True)
    # recurrent matrix: an orthogonal [d_h, d_h] block per gate, not one block repeated
    blocks = _gate_blocks(params.w_h, 4)
    for w in blocks:
        np.testing.assert_allclose(w.T @ w, np.eye(_HID), atol=1e-5)
    assert not np.allclose(blocks[0], blocks[1])
    # +1 forget bias, visible in b; everything else zero
    np.testing.assert_array_equal(params.b, np.r_[np.zeros(_HID), np.ones(_HID), np.zeros(2 * _HID)])
    # peepholes start at zero, layer-norm gains at one
    np.testing.assert_array_equal(params.w_peep, np.zeros((3, _HID)))
    np.testing.assert_array_equal(params.ln.scale_x, np.ones(4 * _HID))
    np.testing.assert_array_equal(params.ln.scale_h, np.ones(4 * _HID))
    np.testing.assert_array_equal(params.ln.scale_c, np.ones(_HID))
    np.testing.assert_array_equal(params.ln.bias_c, np.zeros(_HID))
    assert params.w_proj is None
    # another forget bias
    b = np.asarray(init_lstm_cell(jax.random.key(0), _FAN_IN, _HID, forget_bias=2.5).b)
    np.testing.assert_array_equal(b[_HID : 2 * _HID], np.full(_HID, 2.5))
    assert np.count_nonzero(b) == _HID
    # pure and key-dependent
    same = init_lstm_cell(jax.random.key(0), _FAN_IN, _HID, peephole=True, layer_norm=True)
    chex.assert_trees_all_equal(params, same)
    assert not np.allclose(params.w_x, init_lstm_cell(jax.random.key(1), _FAN_IN, _HID).w_x)


@pytest.mark.parametrize("rows, cols", [(_HID, _HID), (3, _HID), (_HID, 3)])
def test_orthogonal_equals_jax_orthogonal_initializer(rows, cols):
    key = jax.random.key(7)
    ours = cells.orthogonal(key, rows, cols)
    theirs = jax.nn.initializers.orthogonal()(key, (rows, cols), jnp.float32)
    chex.assert_trees_all_close(ours, theirs, atol=1e-6)


def test_vmapped_init_uses_no_lapack_qr():
    # jax's batched CPU QR kernel can deadlock XLA's thread pool inside a vmapped program
    # (an ensemble initialising its members); init must not contain it at all.
    init = functools.partial(init_lstm_cell, input_size=3, hidden_size=_HID, proj_size=3)
    text = str(jax.make_jaxpr(jax.vmap(init))(jax.random.split(jax.random.key(0), 4)))  # nested jaxprs too
    assert not re.search(r"\b(qr|geqrf|orgqr|householder_product)\b", text)


def test_input_weights_are_lecun_normal():
    """Variance 1 / fan_in, pooled over the three cell kinds (3072 samples)."""
    w = np.concatenate(
        [
            np.asarray(init(jax.random.key(3), _FAN_IN, _HID).w_x).ravel()
            for init in (init_lstm_cell, init_gru_cell, init_rnn_cell)
        ]
    )
    assert abs(w.mean()) < 0.02
    np.testing.assert_allclose(w.var(), 1.0 / _FAN_IN, rtol=0.1)


def test_plain_lstm_has_no_optional_parts():
    shapes = jax.eval_shape(lambda k: init_lstm_cell(k, 2, 3), jax.random.key(0))
    assert shapes.w_peep is None and shapes.ln is None and shapes.w_proj is None
    assert shapes.w_x.shape == (2, 12) and shapes.w_h.shape == (3, 12) and shapes.b.shape == (12,)


def test_projected_lstm_recurrent_weights_have_orthonormal_rows():
    params = init_lstm_cell(jax.random.key(0), _FAN_IN, _HID, proj_size=3)
    chex.assert_shape(params.w_h, (3, 4 * _HID))
    chex.assert_shape(params.w_proj, (_HID, 3))
    for w in _gate_blocks(params.w_h, 4):
        np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-5)


@pytest.mark.parametrize("init,n_gates", [(init_gru_cell, 3), (init_rnn_cell, 1)])
def test_gru_rnn_init_properties(init, n_gates):
    params = init(jax.random.key(0), _FAN_IN, _HID)
    blocks = _gate_blocks(params.w_h, n_gates)
    for w in blocks:
        np.testing.assert_allclose(w.T @ w, np.eye(_HID), atol=1e-5)
    if n_gates > 1:
        assert not np.allclose(blocks[0], blocks[1])
    for name, value in params._asdict().items():
        if name.startswith("b"):
            np.testing.assert_array_equal(value, np.zeros(value.shape))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", ["lstm_all", "gru", "rnn"])
def test_init_dtype_option(name, dtype):
    init, _ = VARIANTS[name]
    shapes = jax.eval_shape(lambda k: init(k, dtype), jax.random.key(0))
    for leaf in jax.tree_util.tree_leaves(shapes):
        assert leaf.dtype == dtype


@pytest.mark.parametrize("proj", [5, 6])
def test_proj_size_not_smaller_than_hidden_raises(proj):
    with pytest.raises(ValueError, match=r"expected proj_size < hidden_size"):
        init_lstm_cell(jax.random.key(0), 3, 5, proj_size=proj)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_float64_params_give_float64_carry(name):
    _, step = VARIANTS[name]
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        params = jax.eval_shape(lambda: random_params(name, jnp.float64))
        carry, y = jax.eval_shape(lambda p: step(p, params_zero_carry(p), jnp.ones((D_IN,), jnp.float64)), params)
    for leaf in jax.tree_util.tree_leaves((carry, y)):
        assert leaf.dtype == jnp.float64
