"""Multi-process (multi-host) training for real: two processes on this machine form one
``jax.distributed`` job (CPU collectives over gloo, loopback only, a free port chosen at run
time), started by ``benchmarks/launch_local.py``'s helpers and bounded in time.

* ``fit`` in 2 processes x 1 device equals the 1-process 2-device run and the 1-device run
  (params and history to 1e-5); each process feeds only its own rows of every global batch;
  an ensemble (``make_train`` under ``vmap``) with members split over the processes;
* a process SIGKILLed mid-run, then both restarted with ``resume=True``, finish bit-identical
  to an uninterrupted 2-process run; a reader polling the checkpoint directory during a run
  never sees a partial step; a 2-process checkpoint restores (and resumes) in 1 process and a
  1-process checkpoint in 2.

The workers are ``tests/_mp_worker.py`` (one process of a job) and ``tests/_mp_reader.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lstm_jax import checkpoint as C
from lstm_jax.train import TrainConfig, init_train_state, make_train

HERE = Path(__file__).parent
ROOT = HERE.parent
WORKER = HERE / "_mp_worker.py"
READER = HERE / "_mp_reader.py"
TIMEOUT = 240  # seconds per job (a quiet 2-core machine needs ~10-20)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGKILL")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launch = _load("launch_local", ROOT / "benchmarks" / "launch_local.py")
script = _load("_train_script", HERE / "_train_script.py")
ENSEMBLE = TrainConfig(epochs=2, batch_size=8, learning_rate=3e-2, monitor="val_loss")  # as in _mp_worker.py


def _env(devices=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _start_job(tmp, name, *args):
    """Two processes of ``_mp_worker.py OUT <args>``, logs in ``tmp/<name>-logs``."""
    return launch.start(
        [sys.executable, str(WORKER), str(tmp), *args], 2, base_env=_env(), logs=tmp / f"{name}-logs", cwd=tmp
    )


def _logs(tmp, name):
    text = ""
    for f in sorted((tmp / f"{name}-logs").glob("*.log")):
        text += f"--- {f.name}\n{f.read_text()[-3000:]}\n"
    return text


def _finish(procs, tmp, name, job):
    codes = launch.wait(procs, TIMEOUT)
    assert codes == [0, 0], f"{name}: exit codes {codes}\n{_logs(tmp, name)}"
    outs = [json.loads((tmp / f"{job}.{p}.json").read_text()) for p in (0, 1)]
    assert [(o["process"], o["processes"], o["devices"], o["local_devices"]) for o in outs] == [
        (0, 2, 2, 1),
        (1, 2, 2, 1),
    ]
    return outs


def _max_diff(a, b) -> float:
    """Max |a - b| over matching nested lists/dicts of numbers (params leaves, histories)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([_max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list) and any(isinstance(x, (list, dict)) for x in a):
        assert len(a) == len(b)
        return max([_max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert x.shape == y.shape
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def _params(summary_state):
    """The params leaves of a worker's state summary (TrainState leaves: params first)."""
    n = len(jax.tree_util.tree_leaves(script.init_params(jax.random.key(0))))
    return summary_state[:n]


def _leaves(tree):
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x).tolist()
        for x in jax.tree_util.tree_leaves(jax.device_get(tree))
    ]


def _lists(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a).tolist(), jax.device_get(tree))


def _no_time(history):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history]


def _like():
    fresh = init_train_state(script.init_params(jax.random.key(0)), script.OPTIMIZER, jax.random.key(1))
    return {"state": fresh, "best": fresh.params}


def _report(tmp, name, values):
    """The measured errors, printed (pytest -s) and kept next to the run's files."""
    print(f"\n{name}: " + json.dumps(values))
    (tmp / f"{name}.json").write_text(json.dumps(values, indent=1))


def test_two_processes_match_one_process_and_feed_only_their_rows(tmp_path):
    ckpt = tmp_path / "ckpt"
    stop = tmp_path / "reader.stop"
    reader = subprocess.Popen(
        [sys.executable, str(READER), str(ckpt / "state"), str(stop), str(tmp_path / "reader.json")],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    two_devices = subprocess.Popen(
        [sys.executable, str(HERE / "_train_script.py"), str(tmp_path / "two_devices.json"), "--sharded"],
        env=_env(devices=2),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    procs = []
    try:
        # the job starts training once the reader polls (--wait-for), so the reader sees every save
        procs = _start_job(tmp_path, "fit", "fit", "--ckpt", str(ckpt), "--wait-for", str(tmp_path / "reader.ready"))
        # meanwhile, in this process: the 1-device references
        reference = script.summarize(script.run())
        train, val = script.make_data()
        trainer = make_train(ENSEMBLE, script.loss_fn, script.init_params, train, val)
        keys = jax.numpy.stack([jax.random.key(i) for i in range(4)])
        ens_ref = jax.device_get(jax.jit(jax.vmap(trainer))(keys))
        outs = _finish(procs, tmp_path, "fit", "fit")
        stop.write_text("stop")
        reader_out, _ = reader.communicate(timeout=TIMEOUT)
        two_out, _ = two_devices.communicate(timeout=TIMEOUT)
    finally:
        launch.stop(procs + [reader, two_devices])
    assert reader.returncode == 0, reader_out[-3000:]
    assert two_devices.returncode == 0, two_out[-3000:]
    p0, p1 = outs
    two = json.loads((tmp_path / "two_devices.json").read_text())
    assert two["devices"] == 2

    # both processes hold the same replicated result; it matches 1 process x 2 devices and 1 device
    for k in ("python", "compiled", "one_epoch_clean", "ensemble"):
        assert p0[k] == p1[k], k
    got = p0["python"]
    errors = {
        "params_vs_1proc_2dev": _max_diff(_params(got["state"]), two["python"]["params"]),
        "history_vs_1proc_2dev": _max_diff(_no_time(got["history"]), two["python"]["history"]),
        "params_vs_1dev": _max_diff(_params(got["state"]), reference["params"]),
        "history_vs_1dev": _max_diff(_no_time(got["history"]), reference["history"]),
        "compiled_params_vs_1proc_2dev": _max_diff(_params(p0["compiled"]["state"]), two["compiled"]["params"]),
        "compiled_history_vs_1proc_2dev": _max_diff(_no_time(p0["compiled"]["history"]), two["compiled"]["history"]),
        "compiled_params_vs_1dev": _max_diff(_params(p0["compiled"]["state"]), reference["params"]),
        "python_vs_compiled_params_2proc": _max_diff(_params(got["state"]), _params(p0["compiled"]["state"])),
        "ensemble_params_vs_1dev": _max_diff(p0["ensemble"]["params"], _lists(ens_ref.params)),
        "ensemble_history_vs_1dev": _max_diff(p0["ensemble"]["history"], _lists(ens_ref.history)),
        "ensemble_best_vs_1dev": _max_diff(p0["ensemble"]["best"], _lists(ens_ref.best_metric)),
    }
    errors["params_bit_identical_to_1proc_2dev"] = _params(got["state"]) == two["python"]["params"]
    _report(tmp_path, "equality", errors)
    for name, err in errors.items():
        if not isinstance(err, bool):
            assert err <= 1e-5, (name, err)

    # each process fed exactly its own contiguous half of every global batch, and nothing else
    assert (p0["rows"], p1["rows"]) == ([0, 4], [4, 8])
    data_key, _ = jax.random.split(jax.random.key(1))
    nb, bs = script.N // script.BATCH, script.BATCH
    for epoch in range(script.EPOCHS):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), script.N))
        for j in range(nb):
            batch = order[j * bs : (j + 1) * bs].tolist()
            assert p0["fed"][epoch * nb + j] == batch[:4] and p1["fed"][epoch * nb + j] == batch[4:]
    assert len(p0["fed"]) == len(p1["fed"]) == script.EPOCHS * nb
    # rows fed only by the other process are NaN on this one: the run does not change at all
    assert p0["one_epoch_poisoned"] == p0["one_epoch_clean"] and p1["one_epoch_poisoned"] == p1["one_epoch_clean"]

    # the ensemble's 4 members: 2 on each process, gathered equal to the 1-device vmap
    assert p0["ensemble_local_rows"] == p1["ensemble_local_rows"] == 2
    assert (p0["ensemble_local_members"], p1["ensemble_local_members"]) == ([0], [2])

    # orbax wrote one consistent checkpoint per step; the reader never saw a partial one
    store = C.CheckpointStore(ckpt / "state", keep=None)
    try:
        assert store.all_steps() == [3, 4, 6, 8] and store.pending_steps() == []
        tree, meta = store.restore(_like())  # a 2-process checkpoint, restored in 1 process
    finally:
        store.close()
    assert _leaves(tree["state"]) == got["state"] and meta["epoch"] == script.EPOCHS
    seen = json.loads((tmp_path / "reader.json").read_text())
    assert seen["steps"] and all(s["ok"] for s in seen["steps"].values()), seen
    assert set(seen["steps"]) == {"3", "4", "6", "8"}


def test_sigkill_one_process_then_both_resume_bit_identical(tmp_path):
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    one = tmp_path / "one_process"
    (tmp_path / "ref").mkdir()
    (tmp_path / "kill").mkdir()
    ref_job = _start_job(tmp_path / "ref", "ref", "kill", "--ckpt", str(uninterrupted))
    kill_job = _start_job(
        tmp_path / "kill", "kill", "kill", "--ckpt", str(killed), "--kill-at", "7", "--kill-process", "0"
    )
    jobs = ref_job + kill_job
    try:
        # meanwhile: the 1-device run, checkpointing (for the 1 -> 2 process restore below)
        reference = script.run(one)
        # process 0 (the coordinator, orbax's primary host) SIGKILLs itself after step 7; its
        # peer then waits in a collective (or fails): stop it like a scheduler would
        codes = launch.wait(kill_job, TIMEOUT, grace=5)
        assert codes[0] == -signal.SIGKILL, f"{codes}\n{_logs(tmp_path / 'kill', 'kill')}"
        ref = _finish(ref_job, tmp_path / "ref", "ref", "kill")
    finally:
        launch.stop(jobs)
    assert not (tmp_path / "kill" / "kill.0.json").exists() and not (tmp_path / "kill" / "kill.1.json").exists()
    steps = C.all_steps(killed / "state")
    assert steps == [3, 4, 6], steps  # mid-epoch at 3 and 6, epoch end at 4; killed at 7 of 8
    damaged = tmp_path / "for_one_process"
    shutil.copytree(killed, damaged)

    # both processes restarted with resume=True (a fresh port); they also restore the
    # 1-process run's last checkpoint
    (tmp_path / "resume").mkdir()
    procs = _start_job(tmp_path / "resume", "resume", "resume", "--ckpt", str(killed), "--restore", str(one))
    try:
        outs = _finish(procs, tmp_path / "resume", "resume", "resume")
    finally:
        launch.stop(procs)
    want = ref[0]["finished"]
    assert ref[0]["finished"] == ref[1]["finished"]
    for out in outs:
        assert out["resumed"]["state"] == want["state"]  # bit-identical: every leaf, rng included
        assert out["resumed"]["history"] == want["history"] and out["resumed"]["best_epoch"] == want["best_epoch"]
        # a 1-process checkpoint restores bit-exactly in 2 processes
        assert out["restored_step"] == 8 and out["restored"] == _leaves(reference.state)

    # the 2-process checkpoints, in 1 process: restore bit-exactly, resume to the same result
    tree, _ = C.restore(uninterrupted / "state", _like())
    assert _leaves(tree["state"]) == want["state"]
    resumed = script.run(damaged, resume=True)
    errors = {
        "resume_2proc_bit_identical": all(out["resumed"]["state"] == want["state"] for out in outs),
        "resumed_in_1proc_params_vs_1dev": _max_diff(_leaves(resumed.state.params), _leaves(reference.state.params)),
        "resumed_in_1proc_history_vs_1dev": _max_diff(_no_time(resumed.history), _no_time(reference.history)),
        "uninterrupted_2proc_params_vs_1dev": _max_diff(_params(want["state"]), _leaves(reference.state.params)),
    }
    _report(tmp_path, "kill_resume", errors)
    assert errors["resumed_in_1proc_params_vs_1dev"] <= 1e-5 and errors["resumed_in_1proc_history_vs_1dev"] <= 1e-5


def test_distributed_env_reads_the_variables():
    from lstm_jax import distributed as D

    assert D.distributed_env({}) is None
    env = {D.ENV_COORDINATOR: "10.0.0.1:1234", D.ENV_NUM_PROCESSES: "4", D.ENV_PROCESS_ID: "3"}
    assert D.distributed_env(env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert D.distributed_env({**env, D.ENV_MODE: "off"}) is None
    assert D.distributed_env({D.ENV_MODE: "auto"}) == {}  # JAX's own cluster detection
    slurm = {"SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": "2"}
    assert D.distributed_env(slurm) == {} and D.distributed_env({**slurm, "SLURM_NTASKS": "1"}) is None
    for bad, match in [
        ({D.ENV_COORDINATOR: "10.0.0.1:1234"}, "LSTM_JAX_NUM_PROCESSES"),
        ({**env, D.ENV_PROCESS_ID: "4"}, "0 <= LSTM_JAX_PROCESS_ID"),
        ({**env, D.ENV_NUM_PROCESSES: "two"}, "integers"),
        ({**env, D.ENV_COORDINATOR: "10.0.0.1"}, "host:port"),
        ({D.ENV_MODE: "sometimes"}, "auto, on or off"),
    ]:
        with pytest.raises(ValueError, match=match):
            D.distributed_env(bad)
    assert D.initialize_from_env({}) is False and D.is_main_process() and D.process_count() == 1


def test_launcher_sets_each_process_environment_and_propagates_failure(tmp_path):
    show = "import os; print(os.environ['LSTM_JAX_PROCESS_ID'], os.environ['LSTM_JAX_NUM_PROCESSES'], os.environ['LSTM_JAX_COORDINATOR'])"
    assert launch.main(["-n", "3", "--logs", str(tmp_path), "--", sys.executable, "-c", show]) == 0
    lines = [(tmp_path / f"process_{i}.log").read_text().split() for i in range(3)]
    assert [line[:2] for line in lines] == [["0", "3"], ["1", "3"], ["2", "3"]]
    assert len({line[2] for line in lines}) == 1 and lines[0][2].startswith("127.0.0.1:")
    # process 1 fails: the job fails with its exit code and the others are stopped (not waited for)
    fail = "import os, sys, time; p = int(os.environ['LSTM_JAX_PROCESS_ID']); time.sleep(60) if p != 1 else sys.exit(3)"
    procs = launch.start([sys.executable, "-c", fail], 2, logs=tmp_path / "fail")
    codes = launch.wait(procs, timeout=60, grace=0.5)
    assert codes[1] == 3 and codes[0] is None and all(p.poll() is not None for p in procs)
