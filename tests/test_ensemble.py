"""vmapped ensembles: member i of ``jax.vmap(make_train(...))`` equals a standalone ``fit`` run
(Python loop, per-step jit, host-side batches and early stopping) with the same key and
learning rate."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax
from lstm_jax import losses as L
from lstm_jax import train as T

N, TT, F, H = 36, 5, 2, 6
CONFIG = T.TrainConfig(
    epochs=4, batch_size=12, learning_rate=2e-2, warmup_steps=2, cosine_decay=True, patience=1, eval_batch_size=10
)
LRS = np.array([2e-2, 2e-2, 0.5], np.float32)  # the last member is pushed to overshoot and stop early


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, TT, F)).astype(np.float32)
    return {"x": x, "y": (x.sum(axis=1)[:, :1] * 0.4).astype(np.float32)}


TRAIN, VAL = _data(0), {k: v[:20] for k, v in _data(1).items()}


def init_fn(key):
    k1, k2 = jax.random.split(key)
    return {"rnn": lstm_jax.init_lstm(k1, F, H), "w": 0.3 * jax.random.normal(k2, (H, 1)), "b": jnp.zeros((1,))}


def loss_fn(params, batch, rng):
    ys, _ = lstm_jax.lstm(params["rnn"], batch["x"])
    pred = ys[:, -1] @ params["w"] + params["b"][None, :]
    return L.last_step_mse(pred, batch["y"]), {"mae": L.mae(pred, batch["y"])}


def _standalone(i):
    init_key, fit_key = T.split_run_key(jax.random.key(i))
    steps_per_epoch = N // CONFIG.batch_size
    return T.fit(
        loss_fn,
        init_fn(init_key),
        CONFIG.make_optimizer(steps_per_epoch, float(LRS[i])),
        TRAIN,
        val_data=VAL,
        epochs=CONFIG.epochs,
        batch_size=CONFIG.batch_size,
        seed=fit_key,
        monitor=CONFIG.monitor,
        mode=CONFIG.mode,
        patience=CONFIG.patience,
        eval_batch_size=CONFIG.eval_batch_size,
        on_nonfinite="skip",
        progress=False,
    )


def test_vmapped_members_equal_standalone_runs():
    """One test on purpose (a module fixture would be recomputed in every pytest-xdist worker)."""
    train = T.make_train(CONFIG, loss_fn, init_fn, TRAIN, VAL)
    keys = jnp.stack([jax.random.key(i) for i in range(len(LRS))])
    ensemble = jax.device_get(jax.jit(jax.vmap(train))(keys, jnp.asarray(LRS)))

    for i in (1, 2):  # member 1: seed 1; member 2: seed 2 with a 25x learning rate that stops early
        solo = _standalone(i)
        member = jax.tree_util.tree_map(lambda a: a[i], ensemble)
        chex.assert_trees_all_close(member.params, jax.device_get(solo.params), atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(member.final_params, jax.device_get(solo.state.params), atol=1e-5, rtol=1e-5)
        ran = int(member.history["active"].sum())
        assert ran == len(solo.history)
        for name in ("train_loss", "train_mae", "val_loss", "val_mae"):
            np.testing.assert_allclose(
                member.history[name][:ran],
                [e[name] for e in solo.history],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"member {i} {name}",
            )
        assert int(member.best_epoch) == solo.best_epoch
        np.testing.assert_allclose(member.best_metric, solo.best_metric, rtol=1e-5)
        if i == 2:  # the overshooting member stopped early in both implementations
            assert solo.stopped_early and ran < CONFIG.epochs

    val = ensemble.history["val_loss"]
    assert not np.allclose(val[0], val[1])  # different seeds -> different runs
    assert (ensemble.best_metric[:2] < 0.85 * val[:2, 0]).all()  # the sane members learned
