"""A tiny deterministic training run, importable by tests and runnable as a subprocess.

    python tests/_train_script.py CKPT_DIR [--kill-at STEP] [--resume]

With ``--kill-at`` the process SIGKILLs itself right after training step STEP (a real
SIGKILL: no cleanup, no final checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax
from lstm_jax import losses
from lstm_jax.train import fit, make_optimizer

N, T, F, H = 32, 5, 2, 4
BATCH = 8  # 4 steps per epoch
EPOCHS = 2
CHECKPOINT_EVERY = 3


def make_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, F)).astype(np.float32)
    y = (x[:, :, :1].mean(axis=1) + 0.5 * x[:, -1, 1:]).astype(np.float32)
    return {"x": x, "y": y}, {"x": x[:8], "y": y[:8]}


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"rnn": lstm_jax.init_lstm(k1, F, H), "w": 0.1 * jax.random.normal(k2, (H, 1)), "b": jnp.zeros((1,))}


def loss_fn(params, batch, rng):
    # recurrent dropout makes the run depend on the per-step rng (restored on resume)
    ys, _ = lstm_jax.lstm(params["rnn"], batch["x"], recurrent_dropout=0.2 if rng is not None else 0.0, dropout_key=rng)
    pred = ys[:, -1] @ params["w"] + params["b"][None, :]
    return losses.last_step_mse(pred, batch["y"]), {"mae": losses.mae(pred, batch["y"])}


OPTIMIZER = make_optimizer(3e-2, clip_norm=1.0, warmup_steps=2, total_steps=EPOCHS * N // BATCH)


def run(checkpoint_dir=None, *, resume=False, callback=None, compiled_epoch=False, history_path=None, devices=None):
    train, val = make_data()
    return fit(
        loss_fn,
        init_params(jax.random.key(0)),
        OPTIMIZER,
        train,
        val_data=val,
        epochs=EPOCHS,
        batch_size=BATCH,
        seed=1,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=CHECKPOINT_EVERY,
        resume=resume,
        progress=False,
        compiled_epoch=compiled_epoch,
        history_path=history_path,
        callback=callback,
        devices=devices,
    )


def summarize(result):
    """params leaves + history as JSON (for comparing runs across processes)."""
    leaves = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(jax.device_get(result.state.params))]
    history = [{k: v for k, v in e.items() if k != "time_s"} for e in result.history]
    return {"params": leaves, "history": history}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sharded", action="store_true", help="write data-parallel runs to CHECKPOINT_DIR (a .json)")
    args = parser.parse_args(argv)
    if args.sharded:
        import json

        out = {"devices": len(jax.devices())}
        for compiled in (False, True):
            result = run(compiled_epoch=compiled)
            out["compiled" if compiled else "python"] = summarize(result)
            leaf = jax.tree_util.tree_leaves(result.state.params)[0]
            out["param_devices"] = len(leaf.sharding.device_set)
        with open(args.checkpoint_dir, "w") as fh:
            json.dump(out, fh)
        return 0

    def callback(step, metrics):
        if args.kill_at is not None and step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = run(args.checkpoint_dir, resume=args.resume, callback=callback)
    print("finished", int(result.state.step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
