"""Flax NNX and linen modules against the pure functions on the same params; pure params
out and back; a jitted NNX training step; dropout switched by ``deterministic``."""

from __future__ import annotations

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lstm_jax import GRUParams, LSTMParams, StackParams, gru, init_gru, init_lstm, init_rnn, lstm, rnn
from lstm_jax.nn import (
    GRU,
    LSTM,
    RNN,
    GRULinen,
    LSTMLinen,
    RNNLinen,
    from_linen_variables,
    stack_config,
    to_linen_variables,
)

B, T, D_IN, D_H = 2, 4, 3, 4
LENGTHS = jnp.array([4, 2], jnp.int32)


def inputs(seed=0, b=B, t=T):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((b, t, D_IN)), jnp.float32)


def random_state(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _is_param(x):
    return isinstance(x, nnx.Variable)


# module kind -> (NNX class, linen class, pure function, init function, shape options)
# (small networks: every option is exercised, but compile time stays low)
KINDS = {
    "lstm": (LSTM, LSTMLinen, lstm, init_lstm, dict(bidirectional=True, proj_size=2, peephole=True, layer_norm=True)),
    "gru": (GRU, GRULinen, gru, init_gru, dict(bidirectional=True)),
    "rnn": (RNN, RNNLinen, rnn, init_rnn, dict(num_layers=2)),
}


@nnx.jit
def _module_and_pure(model, params, xs, lengths, state):
    """The module's forward and the pure function on separately extracted params, in one program."""
    fn = {LSTM: lstm, GRU: gru, RNN: rnn}[type(model)]
    return (
        model(xs, lengths=lengths, initial_state=state, deterministic=True),
        fn(params, xs, lengths=lengths, initial_state=state),
    )


def _state_like(fn, params, xs):
    return random_state(jax.eval_shape(lambda p, x: fn(p, x)[1], params, xs))


# --------------------------------------------------------------------------- NNX == pure
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nnx_module_equals_pure_function(kind):
    cls, _, fn, init, options = KINDS[kind]
    model = cls(D_IN, D_H, **options, rngs=nnx.Rngs(0))
    params = model.pure_params()
    # the module holds exactly the StackParams pytree of the init function, as nnx.Param leaves
    expected = jax.eval_shape(lambda k: init(k, D_IN, D_H, **options), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, expected)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    param_leaves = jax.tree_util.tree_leaves(model.params, is_leaf=_is_param)
    assert all(isinstance(p, nnx.Param) for p in param_leaves)
    for p, a in zip(param_leaves, jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(p[...], a)
    xs = inputs()
    got, want = _module_and_pure(model, params, xs, LENGTHS, _state_like(fn, params, xs))
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)


def test_nnx_modules_pass_every_option_to_init():
    """Abstract construction only (no compile): the module's params have init_*'s structure."""
    options = dict(
        num_layers=3,
        bidirectional=True,
        proj_size=2,
        peephole=True,
        layer_norm=True,
        forget_bias=0.5,
        dtype=jnp.bfloat16,
    )

    def build(key):
        return LSTM(D_IN, D_H, **options, rngs=nnx.Rngs(key)).pure_params()

    got = jax.eval_shape(build, jax.random.key(0))
    want = jax.eval_shape(lambda k: init_lstm(k, D_IN, D_H, **options), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(got, want)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    model = LSTM(D_IN, D_H, forget_bias=0.5, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(model.pure_params().layers[0][0].b[D_H : 2 * D_H], 0.5)


# --------------------------------------------------------------------------- linen == pure
# (unidirectional here: the option plumbing of bigger networks is checked abstractly below,
# and the RNN module is compared with the pure function in the linen dropout test)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_linen_module_equals_pure_function(kind):
    _, lcls, fn, init, options = KINDS[kind]
    options = {k: v for k, v in options.items() if k != "bidirectional"}
    module = lcls(D_H, **options)
    xs = inputs()
    state = _state_like(fn, jax.eval_shape(lambda k: init(k, D_IN, D_H, **options), jax.random.key(0)), xs)

    @jax.jit
    def run(key, xs, lengths, state):
        variables = module.init(key, xs)
        params = from_linen_variables(variables)
        return (
            variables,
            module.apply(variables, xs, lengths=lengths, initial_state=state),
            fn(params, xs, lengths=lengths, initial_state=state),
        )

    variables, got, want = run(jax.random.key(0), xs, LENGTHS, state)
    assert set(variables) == {"params"} and set(variables["params"]) == {"stack"}
    params = from_linen_variables(variables)
    assert isinstance(params, StackParams)
    expected = jax.eval_shape(lambda k: init(k, D_IN, D_H, **options), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, expected)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)


def test_linen_modules_pass_every_option_to_init():
    options = dict(num_layers=3, bidirectional=True, proj_size=2, peephole=True, layer_norm=True, dtype=jnp.bfloat16)
    variables = jax.eval_shape(LSTMLinen(D_H, **options).init, jax.random.key(0), inputs())
    want = jax.eval_shape(lambda k: init_lstm(k, D_IN, D_H, **options), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(from_linen_variables(variables), want)


# --------------------------------------------------------------------------- params out and back
def test_nnx_pure_params_round_trip():
    cls, _, fn, init, options = KINDS["lstm"]
    model = cls(D_IN, D_H, **options, rngs=nnx.Rngs(0))
    params = model.pure_params()
    assert isinstance(params, StackParams) and isinstance(params.layers[0][0], LSTMParams)
    # from_params: sizes and options are read off the pytree
    again = LSTM.from_params(params)
    chex.assert_trees_all_equal(again.pure_params(), params)
    assert stack_config(params) == dict(
        input_size=D_IN,
        hidden_size=D_H,
        num_layers=1,
        bidirectional=True,
        dtype=jnp.float32,
        proj_size=2,
        peephole=True,
        layer_norm=True,
    )
    # load_params overwrites values in place, and the module then computes with them
    other = jax.tree_util.tree_map(lambda a: a + 0.25, init(jax.random.key(5), D_IN, D_H, **options))
    model.load_params(other)
    chex.assert_trees_all_equal(model.pure_params(), other)
    xs = inputs()
    state = _state_like(fn, other, xs)
    got, want = _module_and_pure(model, other, xs, LENGTHS, state)  # same program as above: no compile
    chex.assert_trees_all_close(got, want, atol=1e-6)
    before, _ = _module_and_pure(again, params, xs, LENGTHS, state)
    assert not np.allclose(before[0], got[0])
    # nnx.split / merge keeps the StackParams
    graphdef, nnx_state = nnx.split(model)
    chex.assert_trees_all_equal(nnx.merge(graphdef, nnx_state).pure_params(), other)


def test_nnx_load_params_and_from_params_reject_wrong_params():
    model = LSTM(D_IN, D_H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected params with leaf shapes/dtypes"):
        model.load_params(jax.eval_shape(lambda k: init_lstm(k, D_IN, D_H + 1), jax.random.key(0)))
    with pytest.raises(TypeError, match=r"expected params with structure"):
        model.load_params(jax.eval_shape(lambda k: init_lstm(k, D_IN, D_H, peephole=True), jax.random.key(0)))
    with pytest.raises(TypeError, match=r"expected LSTM params, got GRU params"):
        LSTM.from_params(init_gru(jax.random.key(0), D_IN, D_H))
    with pytest.raises(ValueError, match=r"expected rngs"):
        LSTM(D_IN, D_H)
    with pytest.raises(ValueError, match=r"expected rngs .* when dropout > 0"):
        GRU.from_params(init_gru(jax.random.key(0), D_IN, D_H), dropout=0.5)
    with pytest.raises(ValueError, match=r"expected dropout in \[0, 1\), got 1.0"):
        GRU(D_IN, D_H, dropout=1.0, rngs=nnx.Rngs(0))


def test_linen_variables_round_trip_and_cross_to_nnx():
    _, lcls, _, _, options = KINDS["gru"]
    module = lcls(D_H, **options)
    xs = inputs()
    variables = module.init(jax.random.key(0), xs)
    params = from_linen_variables(variables)
    assert isinstance(params.layers[0][1], GRUParams)
    chex.assert_trees_all_equal(to_linen_variables(params), variables)
    # the same params in an NNX module give the same outputs as the pure function (and so as linen)
    model = GRU.from_params(params)
    state = _state_like(gru, params, xs)
    got, want = _module_and_pure(model, params, xs, LENGTHS, state)  # compiled in the NNX test above
    chex.assert_trees_all_close(got, want, atol=1e-6)
    with pytest.raises(TypeError, match=r"expected a variables dict"):
        from_linen_variables({"params": {"kernel": 1}})


# --------------------------------------------------------------------------- training
class _Regressor(nnx.Module):
    def __init__(self, rngs):
        self.rnn = LSTM(1, 8, recurrent_dropout=0.1, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, xs):
        ys, _ = self.rnn(xs)
        return self.head(ys)


def test_jitted_nnx_train_step_decreases_loss():
    """Learn the running mean of a sequence (needs memory), with recurrent dropout on."""
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal((16, 6, 1)), jnp.float32)
    targets = jnp.cumsum(xs, axis=1) / jnp.arange(1, 7, dtype=jnp.float32)[None, :, None]
    model = _Regressor(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    before = model.rnn.pure_params()

    @nnx.jit
    def train_step(model, optimizer, xs, targets):
        def loss_fn(model):
            return jnp.mean((model(xs) - targets) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, xs, targets)) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0], losses
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), before, model.rnn.pure_params())
    assert all(jax.tree_util.tree_leaves(changed))


# --------------------------------------------------------------------------- dropout
_call = nnx.jit(lambda m, x: m(x)[0])
_call_deterministic = nnx.jit(lambda m, x: m(x, deterministic=True)[0])


def _dropout_rnn(seed=0):
    return RNN(D_IN, D_H, num_layers=2, dropout=0.5, recurrent_dropout=0.3, rngs=nnx.Rngs(params=0, dropout=seed))


def test_nnx_dropout_only_when_not_deterministic():
    model = _dropout_rnn()
    xs = inputs()
    off = _call_deterministic(model, xs)
    # default is training mode (as nnx.Dropout): masks on, and fresh ones on every call
    train_1, train_2 = _call(model, xs), _call(model, xs)
    assert not np.allclose(train_1, off) and not np.allclose(train_1, train_2)
    model.eval()
    np.testing.assert_array_equal(_call(model, xs), off)
    model.train()
    assert not np.allclose(_call(model, xs), off)
    np.testing.assert_array_equal(_call(nnx.view(model, deterministic=True), xs), off)
    # dropout masks follow the seed of the dropout stream
    a, b, c = (_call(_dropout_rnn(seed), xs) for seed in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_linen_dropout_only_when_not_deterministic():
    xs = inputs()
    options = dict(recurrent_dropout=0.5)
    module = RNNLinen(D_H, **options)
    training = RNNLinen(D_H, **options, deterministic=False)

    @jax.jit
    def run(key, xs):
        variables = module.init(key, xs)  # deterministic by default: no dropout rng needed
        rngs = lambda k: {"dropout": jax.random.key(k)}  # noqa: E731
        return dict(
            pure=rnn(from_linen_variables(variables), xs)[0],
            default=module.apply(variables, xs)[0],
            k1=module.apply(variables, xs, deterministic=False, rngs=rngs(1))[0],
            k2=module.apply(variables, xs, deterministic=False, rngs=rngs(2))[0],
            attr_k1=training.apply(variables, xs, rngs=rngs(1))[0],
            attr_off=training.apply(variables, xs, deterministic=True)[0],
        )

    out = run(jax.random.key(0), xs)
    for name in ("default", "attr_off"):
        np.testing.assert_array_equal(out[name], out["pure"])
    np.testing.assert_array_equal(out["attr_k1"], out["k1"])  # same key, same masks
    assert not np.allclose(out["k1"], out["pure"]) and not np.allclose(out["k1"], out["k2"])


def test_linen_module_inside_a_bigger_linen_model():
    class Model(linen.Module):
        @linen.compact
        def __call__(self, xs):
            ys, state = RNNLinen(D_H, name="encoder")(xs)
            return linen.Dense(1)(ys), state

    @jax.jit
    def run(key, xs):
        variables = Model().init(key, xs)
        out, state = Model().apply(variables, xs)
        params = from_linen_variables({"params": variables["params"]["encoder"]})
        return out, state, rnn(params, xs)[1]

    out, state, pure_state = run(jax.random.key(0), inputs())
    chex.assert_shape(out, (B, T, 1))
    chex.assert_shape(state, (B, 1, 1, D_H))
    chex.assert_trees_all_close(state, pure_state, atol=1e-6)
