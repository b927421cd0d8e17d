"""Data parallelism: the same fit on 4 (forced host) devices matches one device to 1e-5."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lstm_jax import sharding as shd

SCRIPT = Path(__file__).parent / "_train_script.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("_train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_four_device_data_parallel_matches_single_device(tmp_path):
    out = tmp_path / "sharded.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    # the 4-device run (Python loop and compiled epochs) runs in a subprocess while this process
    # computes the single-device reference
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), "--sharded"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        script = _load_script()
        assert len(jax.devices()) == 1
        reference = script.summarize(script.run())
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    sharded = json.loads(out.read_text())
    assert sharded["devices"] == 4 and sharded["param_devices"] == 4  # params replicated on all 4
    for mode in ("python", "compiled"):
        got = sharded[mode]
        for a, b in zip(got["params"], reference["params"]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
        assert len(got["history"]) == len(reference["history"])
        for ea, eb in zip(got["history"], reference["history"]):
            assert ea.keys() == eb.keys()
            for k in ea:
                np.testing.assert_allclose(ea[k], eb[k], atol=1e-5, rtol=1e-5, err_msg=f"{mode} {k}")


def test_batch_must_divide_over_devices():
    mesh = shd.data_mesh()
    shd.check_batch_divisible(5, mesh)  # one device: anything divides
    fake = type("FakeMesh", (), {"devices": np.zeros(4)})()
    with pytest.raises(ValueError, match=r"multiple of the number of devices \(4\).*got 6"):
        shd.check_batch_divisible(6, fake)
