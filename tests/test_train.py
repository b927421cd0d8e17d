"""Training loop: loss falls for every cell, compiled epoch == Python loop, determinism, early
stopping, JSON-lines history, the non-finite guard, schedules, TBPTT gradients, bad inputs."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstm_jax
from lstm_jax import checkpoint as C
from lstm_jax import data as D
from lstm_jax import losses as L
from lstm_jax import train as T

N, TT, F, H = 48, 6, 2, 8
BATCH = 12  # 4 steps per epoch


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, TT, F)).astype(np.float32)
    y = (x[:, :, :1].mean(axis=1) * 2.0 - 0.5 * x[:, -1, 1:]).astype(np.float32)
    return {"x": x, "y": y}


TRAIN, VAL = _data(0), {k: v[:20] for k, v in _data(1).items()}

_INIT = {"lstm": lstm_jax.init_lstm, "gru": lstm_jax.init_gru, "rnn": lstm_jax.init_rnn}
_RUN = {"lstm": lstm_jax.lstm, "gru": lstm_jax.gru, "rnn": lstm_jax.rnn}


def init_fn(cell, key):
    k1, k2 = jax.random.split(key)
    return {"rnn": _INIT[cell](k1, F, H), "w": 0.1 * jax.random.normal(k2, (H, 1)), "b": jnp.zeros((1,))}


def _make_loss(cell):
    def loss_fn(params, batch, rng):
        ys, _ = _RUN[cell](params["rnn"], batch["x"])
        pred = ys[:, -1] @ params["w"] + params["b"][None, :]
        return L.last_step_mse(pred, batch["y"]), {"mae": L.mae(pred, batch["y"])}

    return loss_fn


LOSS = {cell: _make_loss(cell) for cell in _INIT}
OPT = T.make_optimizer(2e-2, clip_norm=1.0, warmup_steps=2)


def _fit(cell="lstm", **kw):
    kw = {"epochs": 4, "batch_size": BATCH, "seed": 3, "progress": False, **kw}
    params = kw.pop("params", None) or init_fn(cell, jax.random.key(0))
    train = kw.pop("train", TRAIN)
    return T.fit(LOSS[cell], params, OPT, train, **kw)


def _no_time(history):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history]


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_loss_falls_for_every_cell(cell):
    result = _fit(cell, epochs=6)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < 0.6 * first, (first, last)


def _nan_train(index):
    train = {k: v.copy() for k, v in TRAIN.items()}
    train["x"][index, 2, 0] = np.nan
    return train


def test_lstm_fit_end_to_end(tmp_path):
    """One test on purpose: every part reuses the same compiled LSTM programs (pytest-xdist
    would recompile them in each worker if they were separate tests)."""
    # -- a whole epoch in one lax.scan == the Python loop over jitted steps
    python = _fit(val_data=VAL)
    compiled = _fit(val_data=VAL, compiled_epoch=True)
    chex.assert_trees_all_close(compiled.state.params, python.state.params, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(compiled.params, python.params, atol=1e-6, rtol=1e-6)
    for a, b in zip(_no_time(compiled.history), _no_time(python.history)):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=1e-6, atol=1e-6)
    assert python.history[-1]["val_loss"] < 0.6 * python.history[0]["val_loss"]  # the LSTM learns

    # -- determinism: same seed, same metrics and bits; another seed differs
    again = _fit(val_data=VAL)
    assert _no_time(again.history) == _no_time(python.history)
    chex.assert_trees_all_equal(again.state.params, python.state.params)
    other = _fit(val_data=VAL, seed=4)
    assert _no_time(other.history) != _no_time(python.history)

    # -- early stopping returns the best params: val_loss falls every epoch, so with mode="max"
    #    epoch 1 is the best and patience=1 stops after epoch 2
    stopped = _fit(val_data=VAL, mode="max", patience=1, history_path=tmp_path / "h.jsonl")
    assert stopped.stopped_early and stopped.best_epoch == 1 and len(stopped.history) == 2
    chex.assert_trees_all_equal(stopped.params, _fit(val_data=VAL, epochs=1).state.params)
    assert stopped.best_metric == stopped.history[0]["val_loss"]
    lines = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert lines == stopped.history

    # -- NaN in the data is rejected up front, naming the entry
    with pytest.raises(ValueError, match=r"finite values in train_data\['x'\].*index \(5, 2, 0\)"):
        _fit(train=_nan_train(5))

    # -- non-finite guard: put a NaN example into the third batch of epoch 1 (fit's data_key is
    #    split(key(seed=3))[0]); the error names step and batch, nothing bad is saved
    order = np.asarray(D.epoch_permutation(jax.random.split(jax.random.key(3))[0], 0, N))
    bad_example = int(order[2 * BATCH + 1])
    ckpt = tmp_path / "nan"
    with pytest.raises(T.NonFiniteError, match=r"non-finite loss or gradient at step 2 \(epoch 1, batch 2 of 4") as err:
        _fit(train=_nan_train(bad_example), validate_data=False, checkpoint_dir=ckpt, checkpoint_every=1)
    assert C.all_steps(ckpt / "state") == [1, 2]
    assert "the last checkpoint (step 2) is intact" in str(err.value)
    like = {
        "state": T.init_train_state(init_fn("lstm", jax.random.key(0)), OPT, 0),
        "best": init_fn("lstm", jax.random.key(0)),
    }
    restored, meta = C.restore(ckpt / "state", like)
    assert int(restored["state"].step) == 2 and (meta["epoch"], meta["batch"]) == (0, 2)
    # ... and it equals the state after two steps of the clean run: the bad update never reached it
    clean = _fit(epochs=1, checkpoint_dir=tmp_path / "clean", checkpoint_every=1)
    clean_2, _ = C.restore(tmp_path / "clean" / "state", like, step=2)
    chex.assert_trees_all_equal(restored["state"], clean_2["state"])

    # -- on_nonfinite="skip": exactly the bad updates are skipped (one batch per epoch holds it)
    skipped = _fit(train=_nan_train(bad_example), validate_data=False, on_nonfinite="skip", epochs=2)
    assert [e["nonfinite_steps"] for e in skipped.history] == [1, 1]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(skipped.params))
    assert np.isfinite(skipped.history[-1]["train_loss"])
    assert not np.allclose(skipped.history[0]["train_loss"], clean.history[0]["train_loss"])


def test_evaluate_weights_batches_by_size():
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(20, 3)).astype(np.float32), "y": rng.normal(size=(20, 1)).astype(np.float32)}
    w = jnp.asarray(rng.normal(size=(3, 1)).astype(np.float32))

    def linear_loss(params, batch, rng):
        err = batch["x"] @ params - batch["y"]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}

    got = T.evaluate(linear_loss, w, data, batch_size=7)  # batches of 7, 7, 6
    err = data["x"] @ np.asarray(w) - data["y"]
    np.testing.assert_allclose(got["loss"], np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(got["mae"], np.mean(np.abs(err)), rtol=1e-5)


# --------------------------------------------------------------------------- optimizer
@pytest.mark.parametrize("warmup, total", [(0, None), (3, None), (3, 20), (0, 20)])
def test_schedule_matches_optax(warmup, total):
    ours = T.make_schedule(0.1, warmup_steps=warmup, total_steps=total)
    if total is not None:
        ref = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup, total)
    elif warmup:
        ref = optax.join_schedules([optax.linear_schedule(0.0, 0.1, warmup), optax.constant_schedule(0.1)], [warmup])
    else:
        ref = optax.constant_schedule(0.1)
    steps = np.arange(25)
    np.testing.assert_allclose([float(ours(s)) for s in steps], [float(ref(s)) for s in steps], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- TBPTT
def _tbptt_fns(run):
    def chunk_loss(p, carry, piece, rng):
        ys, carry = run(p["rnn"], piece["x"], initial_state=carry)
        return L.mse(ys @ p["w"], piece["y"]), (carry, {})

    def zero_carry(p, b):
        zero = lstm_jax.zero_state(p["rnn"])
        return jax.tree_util.tree_map(lambda s: jnp.zeros((b["x"].shape[0],) + s.shape, s.dtype), zero)

    def full_loss(p, b, rng=None):
        ys, _ = run(p["rnn"], b["x"])
        return L.mse(ys @ p["w"], b["y"])

    return chunk_loss, zero_carry, full_loss


def _tbptt_all(lstm_params, rnn_params, batch):
    """Every TBPTT quantity the tests compare, in ONE program (one compilation). Gradients use
    an LSTM (a pytree carry), the train steps a cheaper-to-compile tanh RNN."""
    out = {}
    chunk_loss, zero_carry, full_loss = _tbptt_fns(lstm_jax.lstm)
    params = lstm_params
    carry0 = zero_carry(params, batch)
    (out["untruncated_loss"], _, _), out["untruncated"] = T.tbptt_value_and_grad(
        chunk_loss, params, carry0, batch, 4, truncate=False
    )
    out["full_loss"], out["full"] = jax.value_and_grad(full_loss)(params, batch)
    (_, out["final"], _), out["truncated"] = T.tbptt_value_and_grad(chunk_loss, params, carry0, batch, 4)
    # oracle for truncation: chunk k starts from the (constant) state the full forward pass reaches at 4k
    _, state_at_4 = lstm_jax.lstm(params["rnn"], batch["x"][:, :4])
    first = {k: v[:, :4] for k, v in batch.items()}
    second = {k: v[:, 4:] for k, v in batch.items()}
    g0 = jax.grad(lambda p: chunk_loss(p, carry0, first, None)[0])(params)
    g1 = jax.grad(lambda p: chunk_loss(p, state_at_4, second, None)[0])(params)
    out["oracle"] = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, g0, g1)
    _, out["full_state"] = lstm_jax.lstm(params["rnn"], batch["x"])
    # train steps: TBPTT without truncation, one update per batch == the plain full-sequence step
    chunk_loss, zero_carry, full_loss = _tbptt_fns(lstm_jax.rnn)
    state = T.init_train_state(rnn_params, OPT, 0)
    tbptt = T.make_tbptt_train_step(
        chunk_loss, OPT, chunk=4, init_carry=zero_carry, truncate=False, update_every_chunk=False
    )
    out["tbptt_step"] = tbptt(state, batch)
    out["plain_step"] = T.make_train_step(full_loss, OPT)(state, batch)
    out["per_chunk_step"] = T.make_tbptt_train_step(chunk_loss, OPT, chunk=4, init_carry=zero_carry)(state, batch)
    # oracle for per-chunk updates: update on chunk 1 from zero; then on chunk 2 from the carry that
    # chunk 1's forward pass (with the params before the update) produced
    carry_1 = chunk_loss(rnn_params, zero_carry(rnn_params, batch), first, None)[1][0]
    step_1 = T.make_train_step(lambda p, b, r: chunk_loss(p, zero_carry(p, b), b, r)[0], OPT)
    step_2 = T.make_train_step(lambda p, b, r: chunk_loss(p, carry_1, b, r)[0], OPT)
    state_1, _ = step_1(state, first)
    out["per_chunk_oracle"] = step_2(state_1, second)
    return out


def test_tbptt_gradients_and_train_steps():
    rng = np.random.default_rng(2)
    batch = {"x": rng.normal(size=(3, 8, F)).astype(np.float32), "y": rng.normal(size=(3, 8, 1)).astype(np.float32)}
    got = jax.device_get(
        jax.jit(_tbptt_all)(init_fn("lstm", jax.random.key(1)), init_fn("rnn", jax.random.key(2)), batch)
    )
    # without truncation the chunked gradient is the full-sequence gradient
    np.testing.assert_allclose(got["untruncated_loss"], got["full_loss"], rtol=1e-6)
    chex.assert_trees_all_close(got["untruncated"], got["full"], atol=1e-6, rtol=1e-5)
    # truncated: each chunk's gradient starts from the constant carry of the previous chunks
    chex.assert_trees_all_close(got["truncated"], got["oracle"], atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(got["final"], got["full_state"], atol=1e-6)
    assert not np.allclose(got["truncated"]["rnn"].layers[0][0].w_h, got["full"]["rnn"].layers[0][0].w_h, atol=1e-6)
    # TBPTT step without truncation, one update per batch == the plain full-sequence step
    (s1, m1), (s2, m2) = got["tbptt_step"], got["plain_step"]
    chex.assert_trees_all_close(s1.params, s2.params, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    # classic TBPTT: one update per chunk, the carry handed on
    s3, m3 = got["per_chunk_step"]
    s4, m4 = got["per_chunk_oracle"]
    assert int(s3.step) == 2 and bool(m3["finite"])
    chex.assert_trees_all_close((s3.params, s3.opt_state, s3.step), (s4.params, s4.opt_state, s4.step), atol=1e-6)


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"batch_size": N + 1}, ValueError, rf"batch_size <= number of examples {N}, got batch_size={N + 1}"),
        (
            {"val_data": {"x": np.zeros((4, TT, F + 1), np.float32), "y": np.zeros((4, 1), np.float32)}},
            ValueError,
            r"expected val_data\['x'\] with the feature shape",
        ),
        ({"train": {"x": TRAIN["x"], "y": TRAIN["y"][:10]}}, ValueError, "share the leading axis"),
        ({"mode": "best"}, ValueError, "expected mode 'min' or 'max'"),
        ({"resume": True}, ValueError, "expected checkpoint_dir when resume=True"),
        ({"on_nonfinite": "ignore"}, ValueError, "expected on_nonfinite 'raise' or 'skip'"),
        (
            {"epochs": 1, "val_data": VAL, "monitor": "val_accuracy"},
            ValueError,
            "expected monitor to name a history key",
        ),
    ],
)
def test_fit_bad_inputs_raise_clear_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        _fit(**kwargs)


def test_train_steps_ema_is_the_debiased_average_and_monitor_picks_from_both():
    """``ema``: the averaged params evaluated at each step equal a NumPy EMA of the params
    trajectory (zero start, divided by 1 - d^t), and ``monitor`` returns the best of both kinds."""
    import optax

    from lstm_jax.tasks import loops

    target = np.array([1.0, -2.0, 0.5], np.float32)
    loss_fn = lambda p, b, rng: (jnp.sum((p["w"] - b) ** 2), {})  # noqa: E731
    seen = []

    def eval_fn(p):
        w = np.asarray(p["w"], np.float64)
        seen.append(w)
        return {"dist": float(np.sum((w - target) ** 2))}

    decay = 0.8
    out = loops.train_steps(
        loss_fn, {"w": jnp.zeros(3)}, optax.sgd(0.1), lambda s: jnp.asarray(target), steps=6, eval_every=1,
        eval_fn=eval_fn, monitor="dist", progress=False, ema=decay,
    )  # fmt: skip
    raw, avg = seen[0::2], seen[1::2]  # per step: the params, then their average
    want, acc = [], np.zeros(3)
    for t, w in enumerate(raw, start=1):
        acc = decay * acc + (1 - decay) * w
        want.append(acc / (1 - decay**t))
    np.testing.assert_allclose(np.stack(avg), np.stack(want), rtol=1e-5)
    assert out.history[-1]["dist_ema"] > out.history[-1]["dist"]  # descending: the average lags
    assert out.selected == {"step": 6, "averaged": False}
    np.testing.assert_allclose(np.asarray(out.params["w"]), raw[-1], rtol=1e-6)
    with pytest.raises(ValueError, match="expected ema None or a float in"):
        loops.train_steps(loss_fn, {"w": jnp.zeros(3)}, optax.sgd(0.1), lambda s: target, steps=1, ema=1.0)


def test_train_steps_monitor_returns_the_average_when_it_is_better():
    import optax

    from lstm_jax.tasks import loops

    target = np.array([1.0, -2.0, 0.5], np.float32)
    loss_fn = lambda p, b, rng: (jnp.sum((p["w"] - b) ** 2), {})  # noqa: E731
    # lr 0.5 jumps the params onto each batch: target +1, -1, +1, ... (distance 3 every step)
    sample = lambda s: jnp.asarray(target + (1.0 if s % 2 == 0 else -1.0))  # noqa: E731
    dist = lambda p: {"dist": float(jnp.sum((p["w"] - target) ** 2))}  # noqa: E731
    out = loops.train_steps(
        loss_fn, {"w": jnp.asarray(target)}, optax.sgd(0.5), sample, steps=8, eval_every=1,
        eval_fn=dist, monitor="dist", progress=False, ema=0.5,
    )  # fmt: skip
    assert all(abs(r["dist"] - 3.0) < 1e-4 for r in out.history)
    assert out.selected["averaged"] and min(r["dist_ema"] for r in out.history) < 3.0
    assert dist(out.params)["dist"] == pytest.approx(min(r["dist_ema"] for r in out.history))
