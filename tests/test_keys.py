"""Every entry point that takes a PRNG key accepts new-style ``jax.random.key`` keys and legacy
``jax.random.PRNGKey`` (``uint32[2]``) keys, with the same numbers for the same seed, and rejects
non-keys with a TypeError; ``import lstm_jax`` exposes its public submodules lazily."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lstm_jax
from lstm_jax import datasets, keys, train
from lstm_jax.cells import init_gru_cell, init_lstm_cell, init_rnn_cell
from lstm_jax.layers import init_gru, init_lstm, init_rnn, run_stack

NEW, OLD = jax.random.key, jax.random.PRNGKey
BAD = [jnp.zeros((2,), jnp.float32), 0.5, None, np.zeros((3,), np.uint32)]


def same(a, b):
    """Pytrees equal leaf by leaf (typed keys compared by their data)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_as_key_matches_jax_bits():
    for seed in (0, 7, 2**31 - 1):
        k = keys.as_key(OLD(seed))
        assert jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
        same(jax.random.normal(k, (5,)), jax.random.normal(NEW(seed), (5,)))
        # and the same numbers JAX itself draws from the legacy key
        same(jax.random.normal(OLD(seed), (5,)), jax.random.normal(k, (5,)))
    batch = jnp.stack([OLD(0), OLD(1)])
    assert keys.as_key(batch).shape == (2,)


@pytest.mark.parametrize("bad", BAD, ids=["float-array", "float", "none", "uint32[3]"])
def test_as_key_rejects_non_keys(bad):
    with pytest.raises(TypeError, match="expected key to be a PRNG key"):
        keys.as_key(bad)


INITS = [
    ("init_lstm", lambda k: init_lstm(k, 3, 5, num_layers=2, bidirectional=True)),
    ("init_lstm_proj", lambda k: init_lstm(k, 3, 5, proj_size=2, peephole=True, layer_norm=True)),
    ("init_gru", lambda k: init_gru(k, 3, 5, num_layers=2, bidirectional=True)),
    ("init_rnn", lambda k: init_rnn(k, 3, 5, num_layers=3)),
    ("init_lstm_cell", lambda k: init_lstm_cell(k, 3, 5)),
    ("init_gru_cell", lambda k: init_gru_cell(k, 3, 5)),
    ("init_rnn_cell", lambda k: init_rnn_cell(k, 3, 5)),
    ("adding_problem", lambda k: datasets.adding_problem(k, 4, 10)),
    ("temporal_order", lambda k: datasets.temporal_order(k, 4, 20)),
    ("split_run_key", lambda k: train.split_run_key(k)),
]


@pytest.mark.parametrize("name,fn", INITS, ids=[n for n, _ in INITS])
def test_key_taking_functions_accept_both_kinds(name, fn):
    same(fn(OLD(3)), fn(NEW(3)))
    with pytest.raises(TypeError, match="PRNG key"):
        fn(jnp.ones((2,)))


@pytest.mark.parametrize("kind,impl", [("lstm", "scan"), ("lstm", "fused"), ("gru", "scan"), ("rnn", "scan")])
def test_dropout_key_both_kinds(kind, impl):
    init, fn = {"lstm": (init_lstm, lstm_jax.lstm), "gru": (init_gru, lstm_jax.gru), "rnn": (init_rnn, lstm_jax.rnn)}[
        kind
    ]
    params = init(NEW(0), 3, 6, num_layers=2)
    xs = jax.random.normal(NEW(1), (4, 7, 3))
    opts = dict(dropout=0.3, recurrent_dropout=0.2, impl=impl)
    ys_old, _ = fn(params, xs, dropout_key=OLD(5), **opts)
    ys_new, _ = fn(params, xs, dropout_key=NEW(5), **opts)
    same(ys_old, ys_new)
    assert not np.allclose(ys_new, fn(params, xs)[0])  # dropout really applied
    jitted = jax.jit(lambda k: fn(params, xs, dropout_key=k, **opts)[0])
    same(jitted(OLD(5)), jitted(NEW(5)))  # under jit too (eager and jit may round differently)
    with pytest.raises(TypeError, match="expected dropout_key to be a PRNG key"):
        fn(params, xs, dropout_key=jnp.ones((2,)), **opts)


def test_run_stack_dropout_key_both_kinds():
    params = init_lstm(NEW(0), 3, 6, num_layers=2)
    xs = jnp.ones((7, 3))
    a, _ = run_stack(params, xs, dropout=0.5, dropout_key=OLD(2))
    b, _ = run_stack(params, xs, dropout=0.5, dropout_key=NEW(2))
    same(a, b)
    with pytest.raises(TypeError, match="expected dropout_key"):
        run_stack(params, xs, dropout=0.5, dropout_key=1.5)


def _problem():
    params = {"rnn": init_lstm(NEW(0), 2, 4), "w": jnp.zeros((4, 1))}
    data = {"x": np.asarray(jax.random.normal(NEW(1), (16, 5, 2))), "y": np.asarray(jax.random.normal(NEW(2), (16, 1)))}

    def loss_fn(p, batch, rng):
        ys, _ = lstm_jax.lstm(p["rnn"], batch["x"], dropout=0.0, recurrent_dropout=0.2, dropout_key=rng)
        return jnp.mean((ys[:, -1] @ p["w"] - batch["y"]) ** 2)

    return params, data, loss_fn


def test_fit_seed_both_kinds_and_int():
    params, data, loss_fn = _problem()
    opt = optax.adam(1e-2)
    runs = [
        train.fit(loss_fn, params, opt, data, epochs=2, batch_size=4, seed=s, progress=False)
        for s in (OLD(4), NEW(4), 4)
    ]
    same(runs[0].state.params, runs[1].state.params)
    same(runs[1].state.params, runs[2].state.params)  # an int seed means key(seed)
    with pytest.raises(TypeError, match="expected seed to be an int seed or a PRNG key"):
        train.fit(loss_fn, params, opt, data, epochs=1, batch_size=4, seed=0.5, progress=False)


def test_init_train_state_both_kinds():
    params, _, _ = _problem()
    opt = optax.adam(1e-2)
    same(train.init_train_state(params, opt, OLD(9)), train.init_train_state(params, opt, NEW(9)))
    with pytest.raises(TypeError, match="expected key to be an int seed or a PRNG key"):
        train.init_train_state(params, opt, jnp.ones((2,)))


def test_make_train_vmapped_legacy_keys():
    _, data, loss_fn = _problem()
    config = train.TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2)
    run = train.make_train(config, loss_fn, lambda k: {"rnn": init_lstm(k, 2, 4), "w": jnp.zeros((4, 1))}, data)
    old = jax.vmap(run)(jnp.stack([OLD(0), OLD(1)]))
    new = jax.vmap(run)(jnp.stack([NEW(0), NEW(1)]))
    same(old.final_params, new.final_params)


def test_nnx_and_linen_modules_both_kinds():
    a = lstm_jax.nn.LSTM(3, 5, num_layers=2, bidirectional=True, dropout=0.2, rngs=nnx.Rngs(OLD(0)))
    b = lstm_jax.nn.LSTM(3, 5, num_layers=2, bidirectional=True, dropout=0.2, rngs=nnx.Rngs(NEW(0)))
    same(a.pure_params(), b.pure_params())
    xs = jnp.ones((2, 4, 3))
    same(a(xs)[0], b(xs)[0])  # dropout streams forked from the same key
    module = lstm_jax.nn.GRULinen(5, num_layers=2, dropout=0.3)
    v_old = module.init(OLD(1), xs)
    v_new = module.init(NEW(1), xs)
    same(v_old, v_new)
    y_old = module.apply(v_old, xs, deterministic=False, rngs={"dropout": OLD(2)})[0]
    y_new = module.apply(v_new, xs, deterministic=False, rngs={"dropout": NEW(2)})[0]
    same(y_old, y_new)


def test_submodules_are_lazy_attributes_in_a_fresh_interpreter():
    code = (
        "import sys, time\n"
        "t = time.perf_counter(); import lstm_jax; dt = time.perf_counter() - t\n"
        "heavy = ('torch', 'keras', 'matplotlib')\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "import jax.numpy as jnp\n"
        "m = lstm_jax.nn.LSTM(3, 4, rngs=__import__('flax').nnx.Rngs(0))\n"
        "assert m(jnp.ones((1, 2, 3)))[0].shape == (1, 2, 4)\n"
        "for name in lstm_jax.SUBMODULES:\n"
        "    assert getattr(lstm_jax, name).__name__ == 'lstm_jax.' + name, name\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "print(f'import {dt:.2f} s')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "import" in out.stdout
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lstm_jax.nope  # noqa: B018
