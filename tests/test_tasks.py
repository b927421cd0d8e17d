"""Every entry point of lstm_jax.tasks that takes a PRNG key accepts both kinds: a legacy
``jax.random.PRNGKey(s)`` gives exactly the numbers of ``jax.random.key(s)``, and anything
else (a float, None where a key is required) is a TypeError naming what was expected."""

from __future__ import annotations

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax.tasks
from lstm_jax import datasets, train
from lstm_jax.tasks import char_lm, classify, cli, forecast, loops, seqmodel


@pytest.fixture(autouse=True)
def _fast_compile():
    with cli.fast_compile():
        yield


def _model(cell="lstm", **kw):
    return seqmodel.init_seq_model(jax.random.key(0), cell, 3, 5, 2, **kw)


X = jax.random.normal(jax.random.key(9), (4, 6, 3))
BATCH = {"x": X, "y": jnp.array([0, 1, 1, 0]), "lengths": jnp.array([6, 5, 2, 1])}
REG = {"x": X, "y": jax.random.normal(jax.random.key(8), (4, 1))}
IDS = jax.random.randint(jax.random.key(7), (2, 7), 0, 6)


def _lm_model():
    return seqmodel.init_seq_model(jax.random.key(0), "lstm", 4, 8, 6, num_layers=2, vocab_size=6)


def _ensemble():
    return seqmodel.init_ensemble(lambda k: seqmodel.init_seq_model(k, "gru", 3, 4, 1), jax.random.key(0), 3)


def _train_generated(key):
    params = seqmodel.init_seq_model(jax.random.key(0), "gru", 2, 4, 1)

    def loss_fn(p, batch, rng):
        loss = jnp.mean((seqmodel.apply_seq_model(p, batch["x"]) - batch["y"]) ** 2)
        return loss, {"mse": loss}

    sample = partial(datasets.adding_problem, batch_size=4, length=6)
    return loops.train_generated(
        loss_fn, params, train.make_optimizer(1e-2), sample, steps=4, key=key, chunk=2, progress=False
    )


def _lm_sample(key):
    vocab = char_lm.CharVocab.of("abcde")
    return char_lm.lm_sample(_lm_model(), vocab, "ab", 5, 1.0, key)


ENTRY_POINTS = {
    "seqmodel.init_seq_model": lambda k: seqmodel.init_seq_model(k, "lstm", 3, 5, 2, vocab_size=7),
    "seqmodel.init_seq_model (jitted)": lambda k: jax.jit(
        partial(seqmodel.init_seq_model, cell="gru", input_size=3, hidden_size=4, output_size=2)
    )(k),
    "seqmodel.apply_seq_model dropout_key": lambda k: seqmodel.apply_seq_model(
        _model(num_layers=2), X, dropout=0.3, recurrent_dropout=0.3, dropout_key=k
    ),
    "seqmodel.init_ensemble": lambda k: seqmodel.init_ensemble(
        lambda kk: seqmodel.init_seq_model(kk, "rnn", 3, 4, 1), k, 2
    ),
    "seqmodel.ensemble_apply rng": lambda k: seqmodel.ensemble_apply(
        partial(forecast.forecast_member_apply, dropout=0.3), _ensemble(), X, rng=k
    ),
    "seqmodel.make_ensemble_regression_loss": lambda k: seqmodel.make_ensemble_regression_loss(
        partial(forecast.forecast_member_apply, dropout=0.3), bagging=True
    )(_ensemble(), REG, k),
    "forecast.forecast_member_apply": lambda k: forecast.forecast_member_apply(
        seqmodel.init_seq_model(jax.random.key(0), "lstm", 3, 4, 1), X, k, dropout=0.3, residual=True
    ),
    "classify.make_classifier_loss": lambda k: classify.make_classifier_loss(
        readout="mean", dropout=0.3, recurrent_dropout=0.3, label_smoothing=0.1
    )(_model(), BATCH, k),
    "char_lm.lm_chunk_loss": lambda k: char_lm.lm_chunk_loss(
        _lm_model(), char_lm.lm_zero_state(_lm_model(), 2), {"x": IDS[:, :-1], "y": IDS[:, 1:]}, k, dropout=0.4
    ),
    "char_lm.lm_sample": _lm_sample,
    "loops.train_generated": _train_generated,
}


def _leaves(out):
    if isinstance(out, str):
        return [np.frombuffer(out.encode(), np.uint8)]
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(out)]


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_legacy_and_typed_keys_give_identical_results(name):
    fn = ENTRY_POINTS[name]
    typed = [_leaves(fn(jax.random.key(s))) for s in (0, 3)]
    legacy = [_leaves(fn(jax.random.PRNGKey(s))) for s in (0, 3)]
    for got, want in zip(legacy, typed):
        chex.assert_trees_all_equal(got, want)
    # the key matters: another seed gives other numbers, so the equality above is not vacuous
    assert any(not np.array_equal(a, b) for a, b in zip(typed[0], typed[1])), name


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", [1.5, jnp.float32(1.0), jnp.zeros((2,), jnp.float32)], ids=["float", "f32", "f32[2]"])
def test_a_float_is_not_a_key(name, bad):
    with pytest.raises(TypeError, match="expected .*PRNG key"):
        ENTRY_POINTS[name](bad)


def test_the_package_reaches_every_module_as_an_attribute():
    for name in ("cli", "results", "compare", "seqmodel", "loops", "forecast", "classify", "text", "char_lm"):
        assert getattr(lstm_jax.tasks, name).__name__ == f"lstm_jax.tasks.{name}"
    with pytest.raises(ImportError):
        __import__("lstm_jax.experiment")


def test_every_experiment_flag_set_offers_every_backend_and_defaults_to_auto():
    from lstm_jax import backends

    parser = cli.make_parser("demo", "demo")
    assert parser.parse_args([]).impl == "auto"
    for name in backends.names():
        assert parser.parse_args(["--impl", name]).impl == name
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--impl", "nonesuch"])
    assert e.value.code == 2


def test_the_recipes_run_the_backend_auto_picks_and_match_scan():
    # apply_seq_model's default ("auto") must give what the scan backend gives, and pass impl through
    params = seqmodel.init_seq_model(jax.random.key(0), cell="lstm", input_size=3, hidden_size=8, output_size=2)
    xs = jax.random.normal(jax.random.key(1), (4, 6, 3))
    lengths = jnp.array([6, 1, 3, 5])
    auto = seqmodel.apply_seq_model(params, xs, lengths=lengths)
    scan = seqmodel.apply_seq_model(params, xs, lengths=lengths, impl="scan")
    chex.assert_trees_all_close(auto, scan, atol=1e-5)
    with pytest.raises(ValueError, match="expected impl in"):
        seqmodel.apply_seq_model(params, xs, impl="nonesuch")
