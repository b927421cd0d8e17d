"""Every bad input raises ValueError/TypeError at trace time with an "expected ..., got ..." message."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import LSTMCarry, gru, init_gru, init_lstm, init_lstm_cell, init_rnn, lstm, rnn

B, T, D_IN, D_H = 2, 5, 3, 4


@pytest.fixture(scope="module")
def lstm_params():
    # shapes only matter here: nothing below gets far enough to run the network
    return jax.eval_shape(lambda k: init_lstm(k, D_IN, D_H, num_layers=2), jax.random.key(0))


@pytest.fixture(scope="module")
def gru_params():
    return jax.eval_shape(lambda k: init_gru(k, D_IN, D_H), jax.random.key(0))


def call_lstm(params, xs, **kwargs):
    """Trace (not run) the call: checks happen at trace time, so this is all they need."""
    return jax.eval_shape(lambda p, x: lstm(p, x, **kwargs), params, xs)


XS = jnp.zeros((B, T, D_IN), jnp.float32)


# --------------------------------------------------------------------------- xs
@pytest.mark.parametrize("shape", [(T, D_IN), (1, B, T, D_IN), (D_IN,)])
def test_wrong_rank(lstm_params, shape):
    with pytest.raises(ValueError, match=r"expected xs of shape \[b, t, 3\] \(rank 3\), got shape"):
        call_lstm(lstm_params, jnp.zeros(shape))


def test_feature_size_mismatch(lstm_params):
    with pytest.raises(ValueError, match=r"expected xs of shape \[b, t, 3\] \(input_size 3\), got shape \(2, 5, 4\)"):
        call_lstm(lstm_params, jnp.zeros((B, T, 4)))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_xs(lstm_params, dtype):
    with pytest.raises(TypeError, match=r"expected xs with a floating dtype, got"):
        call_lstm(lstm_params, jnp.zeros((B, T, D_IN), dtype))


def test_xs_not_an_array(lstm_params):
    with pytest.raises(TypeError, match=r"expected xs to be an array of shape \[b, t, 3\], got list"):
        lstm(jax.tree_util.tree_map(jnp.zeros_like, lstm_params), [[[0.0] * D_IN]])


def test_empty_time_axis(lstm_params):
    with pytest.raises(ValueError, match=r"expected xs with at least one example and one time step"):
        call_lstm(lstm_params, jnp.zeros((B, 0, D_IN)))


# --------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("lengths", [np.array([1, 2, 3]), np.array([[1, 2]]), np.array(2)])
def test_lengths_wrong_shape(lstm_params, lengths):
    with pytest.raises(ValueError, match=r"expected lengths of shape \[2\] \(one per example\), got shape"):
        call_lstm(lstm_params, XS, lengths=jnp.asarray(lengths, jnp.int32))


def test_lengths_float_dtype(lstm_params):
    with pytest.raises(TypeError, match=r"expected lengths with an integer dtype, got float32"):
        call_lstm(lstm_params, XS, lengths=jnp.array([1.0, 2.0]))


def test_lengths_not_an_array(lstm_params):
    with pytest.raises(TypeError, match=r"expected lengths to be an int array of shape \[2\], got list"):
        lstm(jax.tree_util.tree_map(jnp.zeros_like, lstm_params), XS, lengths=[1, 2])


@pytest.mark.parametrize("bad", [[0, 2], [2, 6], [-1, 3]])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_lengths_out_of_range_when_concrete(lstm_params, bad, as_numpy):
    lengths = np.array(bad, np.int32) if as_numpy else jnp.array(bad, jnp.int32)
    params = jax.tree_util.tree_map(jnp.zeros_like, lstm_params)
    with pytest.raises(ValueError, match=r"expected lengths in \[1, 5\] \(t = xs.shape\[1\]\), got values in"):
        lstm(params, XS, lengths=lengths)


# --------------------------------------------------------------------------- initial_state
def test_initial_state_wrong_shape(lstm_params):
    bad = LSTMCarry(jnp.zeros((B, 1, 1, D_H)), jnp.zeros((B, 1, 1, D_H)))
    with pytest.raises(
        ValueError,
        match=r"expected initial_state leaves of shapes \[\(2, 2, 1, 4\), \(2, 2, 1, 4\)\] \(\[b, L, D, d\]\), got",
    ):
        call_lstm(lstm_params, XS, initial_state=bad)


def test_initial_state_missing_batch_axis(lstm_params):
    bad = LSTMCarry(jnp.zeros((2, 1, D_H)), jnp.zeros((2, 1, D_H)))
    with pytest.raises(ValueError, match=r"expected initial_state leaves of shapes"):
        call_lstm(lstm_params, XS, initial_state=bad)


@pytest.mark.parametrize("bad", [jnp.zeros((B, 2, 1, D_H)), (jnp.zeros((B, 2, 1, D_H)), jnp.zeros((B, 2, 1, D_H)))])
def test_initial_state_wrong_type_for_lstm(lstm_params, bad):
    with pytest.raises(TypeError, match=r"expected initial_state to be LSTMCarry\(h, c\), got"):
        call_lstm(lstm_params, XS, initial_state=bad)


def test_initial_state_wrong_type_and_shape_for_gru(gru_params):
    carry = LSTMCarry(jnp.zeros((B, 1, 1, D_H)), jnp.zeros((B, 1, 1, D_H)))
    with pytest.raises(TypeError, match=r"expected initial_state to be an array h, got LSTMCarry"):
        jax.eval_shape(lambda p: gru(p, XS, initial_state=carry), gru_params)
    with pytest.raises(ValueError, match=r"expected initial_state leaves of shapes \[\(2, 1, 1, 4\)\]"):
        jax.eval_shape(lambda p: gru(p, XS, initial_state=jnp.zeros((B, 1, 1, 5))), gru_params)


# --------------------------------------------------------------------------- init
@pytest.mark.parametrize("proj_size", [4, 5, -1])
def test_proj_size_not_below_hidden_size(proj_size):
    with pytest.raises(ValueError, match=r"expected 0 <= proj_size < hidden_size, got proj_size="):
        init_lstm(jax.random.key(0), D_IN, D_H, proj_size=proj_size)


def test_proj_size_cell_level():
    with pytest.raises(ValueError, match=r"expected proj_size < hidden_size .*got proj_size=4, hidden_size=4"):
        init_lstm_cell(jax.random.key(0), D_IN, D_H, proj_size=4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(hidden_size=0), r"expected hidden_size to be a positive int, got 0"),
        (dict(input_size=2.5), r"expected input_size to be a positive int, got 2.5"),
        (dict(num_layers=0), r"expected num_layers to be a positive int, got 0"),
    ],
)
def test_bad_sizes(kwargs, message):
    args = dict(input_size=D_IN, hidden_size=D_H)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        init_rnn(jax.random.key(0), args.pop("input_size"), args.pop("hidden_size"), **args)


# --------------------------------------------------------------------------- params
def test_non_stack_params(lstm_params):
    with pytest.raises(TypeError, match=r"expected StackParams with at least one layer, got LSTMParams"):
        call_lstm(lstm_params.layers[0][0], XS)
    with pytest.raises(TypeError, match=r"expected StackParams with at least one layer, got dict"):
        lstm({"w_x": jnp.zeros((D_IN, 4 * D_H))}, XS)


def test_gru_params_to_lstm(gru_params, lstm_params):
    with pytest.raises(TypeError, match=r"expected LSTM params for lstm\(\), got GRU params"):
        call_lstm(gru_params, XS)
    with pytest.raises(TypeError, match=r"expected GRU params for gru\(\), got LSTM params"):
        jax.eval_shape(lambda p: gru(p, XS), lstm_params)
    with pytest.raises(TypeError, match=r"expected RNN params for rnn\(\), got GRU params"):
        jax.eval_shape(lambda p: rnn(p, XS), gru_params)


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("name,rate", [("dropout", 1.0), ("dropout", -0.1), ("recurrent_dropout", 1.5)])
def test_dropout_rate_out_of_range(lstm_params, name, rate):
    with pytest.raises(ValueError, match=rf"expected {name} in \[0, 1\), got {rate}"):
        call_lstm(lstm_params, XS, **{name: rate})


@pytest.mark.parametrize("impl", ["auto", "scan", "fused", "cpu_kernel"])
def test_negative_hoist_and_zero_unroll_fail_on_every_backend(lstm_params, impl):
    """The kernel backends ignore ``hoist`` and ``unroll``; a bad value must still fail."""
    from lstm_jax.backends import cpu_build

    if impl == "cpu_kernel" and not cpu_build.status().ok:
        pytest.skip(f"the C++ kernel is not built here: {cpu_build.status().reason}")
    with pytest.raises(ValueError, match=r"expected hoist >= 0, got -1"):
        call_lstm(lstm_params, XS, hoist=-1, impl=impl)
    with pytest.raises(ValueError, match=r"expected unroll >= 1, got 0"):
        call_lstm(lstm_params, XS, unroll=0, impl=impl)


def test_errors_raise_under_jit_at_trace_time(lstm_params):
    """Shape checks happen while tracing, so a jitted caller sees them before any compile."""
    params = jax.tree_util.tree_map(jnp.zeros_like, lstm_params)
    f = jax.jit(lambda p, x: lstm(p, x))
    with pytest.raises(ValueError, match=r"expected xs of shape \[b, t, 3\] \(input_size 3\)"):
        f(params, jnp.zeros((B, T, 7)))
