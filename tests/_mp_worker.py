"""One process of a multi-process (``jax.distributed``) test job, started by ``tests/test_multiprocess.py``.

    python tests/_mp_worker.py OUT JOB [--ckpt DIR] [--kill-at STEP] [--kill-process P] [--restore DIR]
                                       [--wait-for FILE]

The job comes from ``LSTM_JAX_COORDINATOR`` / ``LSTM_JAX_NUM_PROCESSES`` / ``LSTM_JAX_PROCESS_ID``
(``benchmarks/launch_local.py`` sets them); each process writes ``OUT/<JOB>.<process>.json``.
The training run is ``tests/_train_script.py``'s (the same data, model, optimizer and seed as
the single-process tests).

Jobs:
  fit     the run (Python loop, checkpointing to ``--ckpt``, recording which rows of every
          global batch this process read), the run with compiled epochs, one epoch on data
          whose rows fed by the OTHER processes are NaN (must not matter), and a 4-member
          ``make_train`` ensemble under ``vmap`` with the members split over the processes.
  kill    the run checkpointing to ``--ckpt``; process ``--kill-process`` SIGKILLs itself
          right after step ``--kill-at``.
  resume  ``--restore DIR``: restore DIR's newest checkpoint (written by another number of
          processes) and report it; then the run with ``resume=True`` from ``--ckpt``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

from lstm_jax import distributed

# first, before anything touches a device; short timeouts: a test job whose peer died should
# fail in seconds rather than after JAX's default 100 s heartbeat timeout
distributed.initialize_from_env(initialization_timeout=60, heartbeat_timeout_seconds=20)

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import checkpoint as C
from lstm_jax import sharding as shd
from lstm_jax.train import TrainConfig, fit, init_train_state, loop, make_train

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("_train_script", HERE / "_train_script.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

ENSEMBLE = TrainConfig(epochs=2, batch_size=8, learning_rate=3e-2, monitor="val_loss")
MEMBERS = 4


def key_data(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree
    )


def state_leaves(state):
    """Every leaf of a TrainState (keys as key data) as nested lists: the bit-level summary."""
    return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(distributed.gather(key_data(state)))]


def run_fit(checkpoint_dir=None, *, resume=False, callback=None, compiled_epoch=False, train=None, epochs=None):
    clean, val = script.make_data()
    return fit(
        script.loss_fn,
        script.init_params(jax.random.key(0)),
        script.OPTIMIZER,
        clean if train is None else train,
        val_data=val,
        epochs=script.EPOCHS if epochs is None else epochs,
        batch_size=script.BATCH,
        seed=1,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=script.CHECKPOINT_EVERY,
        keep_checkpoints=100,  # nothing deleted while the test's reader polls
        resume=resume,
        progress=False,
        compiled_epoch=compiled_epoch,
        callback=callback,
        validate_data=train is None,
    )


def summary(result):
    history = [{k: v for k, v in e.items() if k != "time_s"} for e in result.history]
    return {"state": state_leaves(result.state), "history": history, "best_epoch": result.best_epoch}


def mark(out, what):
    out.setdefault("times", []).append([what, round(time.perf_counter() - T0, 2)])


def job_fit(args, out):
    mesh = shd.data_mesh()
    out["rows"] = list(shd.process_rows(mesh, script.BATCH))
    seen = []
    take = loop.take

    def recording_take(data, index):  # every row fit feeds from the host data goes through here
        seen.append(np.asarray(index).tolist())
        return take(data, index)

    loop.take = recording_take
    try:
        out["python"] = summary(run_fit(args.ckpt))
    finally:
        loop.take = take
    out["fed"] = seen
    mark(out, "python")
    out["compiled"] = summary(run_fit(compiled_epoch=True))
    mark(out, "compiled")

    # one epoch on data where every row that another process feeds in epoch 0 is NaN
    n, bs, count = script.N, script.BATCH, jax.process_count()
    data_key, _ = jax.random.split(jax.random.key(1))
    order = np.asarray(loop._jit_permutation(data_key, 0, n))
    lo, hi = out["rows"]
    mine = np.concatenate([order[j * bs + lo : j * bs + hi] for j in range(n // bs)])
    train, _ = script.make_data()
    poisoned = {k: np.full_like(v, np.nan) for k, v in train.items()}
    for k in poisoned:
        poisoned[k][mine] = train[k][mine]
    out["one_epoch_clean"] = summary(run_fit(epochs=1))
    out["one_epoch_poisoned"] = summary(run_fit(epochs=1, train=poisoned))
    assert count == 1 or np.isnan(poisoned["x"]).any()
    mark(out, "poisoned")

    # an ensemble: members split over the processes' devices, one vmapped program
    train, val = script.make_data()
    trainer = make_train(ENSEMBLE, script.loss_fn, script.init_params, train, val)
    keys = shd.shard_batch(jnp.stack([jax.random.key(i) for i in range(MEMBERS)]), mesh)
    res = jax.jit(jax.vmap(trainer))(keys)
    local = res.final_params["w"].addressable_shards
    out["ensemble_local_members"] = sorted({s.index[0].indices(MEMBERS)[0] for s in local})
    out["ensemble_local_rows"] = int(sum(s.data.shape[0] for s in local))
    gathered = distributed.gather({"params": res.params, "history": res.history, "best": res.best_metric})
    out["ensemble"] = jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), gathered)
    mark(out, "ensemble")


def job_kill(args, out):
    def callback(step, metrics):
        if step == args.kill_at and jax.process_index() == args.kill_process:
            os.kill(os.getpid(), signal.SIGKILL)

    out["finished"] = summary(run_fit(args.ckpt, callback=callback))


def job_resume(args, out):
    if args.restore:
        store = C.CheckpointStore(Path(args.restore) / "state", keep=None)
        fresh = init_train_state(script.init_params(jax.random.key(0)), script.OPTIMIZER, jax.random.key(1))
        step = store.latest_step()
        tree, meta = store.restore({"state": fresh, "best": fresh.params}, step=step)
        store.close()
        out["restored_step"] = step
        out["restored"] = state_leaves(tree["state"])
        out["restored_position"] = [meta["epoch"], meta["batch"]]
    out["resumed"] = summary(run_fit(args.ckpt, resume=True))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("job", choices=("fit", "kill", "resume"))
    parser.add_argument("--ckpt")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-process", type=int, default=1)
    parser.add_argument("--restore")
    parser.add_argument("--wait-for", help="start training once this file exists (at most 120 s)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + 120
    while args.wait_for and not os.path.exists(args.wait_for) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
    }
    mark(out, "init")
    {"fit": job_fit, "kill": job_kill, "resume": job_resume}[args.job](args, out)
    path = Path(args.out) / f"{args.job}.{jax.process_index()}.json"
    path.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
