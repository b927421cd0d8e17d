"""Checkpoints: exact round trip, damaged checkpoints detected, SIGKILL + resume bit-identical,
Ctrl-C saves and resumes bit-identically."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import checkpoint as C
from lstm_jax.train import TrainState

HERE = Path(__file__).parent
SCRIPT = HERE / "_train_script.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _load_script()


def _tree():
    return TrainState(
        params={"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,), jnp.bfloat16)},
        opt_state=(jnp.zeros((2, 3)), jnp.array(7, jnp.int32)),
        step=jnp.array(11, jnp.int32),
        rng=jax.random.key(42),
    )


def _assert_bitwise_equal(a, b):
    leaves_a = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, a
        )
    )
    leaves_b = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(
            lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, b
        )
    )
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _no_time(history):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in history]


def test_round_trip_is_exact_including_keys(tmp_path):
    tree = _tree()
    C.save(tmp_path, 11, tree, meta={"epoch": 3})
    restored, meta = C.restore(tmp_path, tree)
    _assert_bitwise_equal(restored, tree)
    assert meta == {"epoch": 3}
    assert jax.random.key_impl(restored.rng) == jax.random.key_impl(tree.rng)
    chex.assert_trees_all_equal(jax.random.normal(restored.rng, (3,)), jax.random.normal(tree.rng, (3,)))
    assert C.latest_step(tmp_path) == 11


def _data_files(step_dir: Path):
    return sorted(
        p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.stat().st_size > 0 and p.parent.name == "d"
    )


@pytest.mark.parametrize("damage", ["garble_data", "delete_data", "truncate_meta", "drop_arrays_item"])
def test_damaged_checkpoint_is_detected_not_loaded(tmp_path, damage):
    tree = _tree()
    C.save(tmp_path, 1, tree)
    step_dir = tmp_path / "1"
    if damage == "garble_data":
        for f in _data_files(step_dir):
            raw = bytearray(f.read_bytes())
            for i in range(len(raw) // 2, len(raw)):
                raw[i] ^= 0x5A
            f.write_bytes(bytes(raw))
    elif damage == "delete_data":
        files = _data_files(step_dir)
        assert files, "expected orbax data files to damage"
        for f in files:
            f.unlink()
    elif damage == "truncate_meta":
        meta = step_dir / "meta" / "metadata"
        meta.write_text(meta.read_text()[:20])
    else:
        shutil.rmtree(step_dir / "arrays")
    with pytest.raises(C.CheckpointError, match="step 1"):
        C.restore(tmp_path, tree)


def test_partial_save_is_invisible_and_wrong_tree_rejected(tmp_path):
    tree = _tree()
    C.save(tmp_path, 1, tree)
    # what a process killed mid-save leaves behind: orbax's temporary directory
    shutil.copytree(tmp_path / "1", tmp_path / "2.orbax-checkpoint-tmp-123")
    assert C.latest_step(tmp_path) == 1
    other = tree._replace(params={"w": jnp.zeros((3, 3)), "b": tree.params["b"]})
    with pytest.raises(C.CheckpointMismatchError, match="match the given tree"):
        C.restore(tmp_path, other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CheckpointError, match="found none"):
        C.restore(tmp_path / "empty", tree)


def test_sigkill_or_ctrl_c_then_resume_is_bit_identical(tmp_path):
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # the run to be killed goes in a subprocess while this process computes the uninterrupted reference
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(ckpt), "--kill-at", "7"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reference = script.run()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    assert "finished" not in stdout
    assert C.all_steps(ckpt / "state") == [3, 4, 6]  # mid-epoch at 3 and 6, epoch end at 4; killed at 7 of 8

    # a copy whose newest checkpoint is damaged: resume must fall back to step 4, not load it
    damaged = tmp_path / "damaged"
    shutil.copytree(ckpt, damaged)
    for f in _data_files(damaged / "state" / "6"):  # truncated data files (a torn write)
        f.write_bytes(f.read_bytes()[:-7])

    resumed = script.run(ckpt, resume=True, history_path=tmp_path / "resumed.jsonl")
    _assert_bitwise_equal(resumed.state, reference.state)
    _assert_bitwise_equal(resumed.params, reference.params)
    assert _no_time(resumed.history) == _no_time(reference.history)
    assert resumed.best_epoch == reference.best_epoch and resumed.best_metric == reference.best_metric
    lines = [json.loads(line) for line in (tmp_path / "resumed.jsonl").read_text().splitlines()]
    assert _no_time(lines) == _no_time(reference.history)  # the JSON-lines history has no duplicates

    fallback = script.run(damaged, resume=True)
    _assert_bitwise_equal(fallback.state, reference.state)
    assert [p.name.split("-")[0] for p in (damaged / "state" / "corrupt").iterdir()] == ["6"]

    # Ctrl-C (a real SIGINT) in the same process (reusing the compiled programs): fit finishes
    # the step, saves, returns; resuming is again bit-identical
    ckpt = tmp_path / "ctrl_c"

    def press_ctrl_c(step, metrics):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    interrupted = script.run(ckpt, callback=press_ctrl_c)
    assert signal.getsignal(signal.SIGINT) is handler  # fit restored the previous handler
    assert interrupted.interrupted and int(interrupted.state.step) == 5
    assert C.latest_step(ckpt / "state") == 5
    resumed = script.run(ckpt, resume=True)
    _assert_bitwise_equal(resumed.state, reference.state)
    assert _no_time(resumed.history) == _no_time(reference.history)
