"""benchmarks/gpu.py --dry-run end to end on CPU: JSON and markdown written with every expected row."""

import json
import os
import subprocess
import sys

import pytest

from lstm_jax import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu  # noqa: E402


def test_gpu_script_dry_run(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OUT", None)
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu.py"),
            "--dry-run",
            "--reps",
            "1",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    md = (tmp_path / "gpu.md").read_text()
    assert data["meta"]["dry_run"] and data["meta"]["torch_device"] == "cpu"
    rows = data["rows"]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    got = {(r["config"], r["who"], r["variant"], r["kind"]) for r in rows}
    for cname in gpu.DRY_CONFIGS:
        for who in ("flax_linen", "torch_cpu", "scan", "fused"):
            for kind in ("fwd", "train"):
                assert (cname, who, "base", kind) in got, (cname, who, kind)
        for name in backends.names():  # every registered backend: timed, or a row saying why not
            assert {(cname, name, "base", k) for k in ("fwd", "train")} <= got or (cname, name, "base", None) in got
    skipped = [r for r in rows if r["who"] == "cudnn"]
    assert skipped and all(r["skipped"].startswith("cuDNN needs a CUDA/ROCm GPU") for r in skipped)
    want_variants = {
        "scan": ("unroll=4", "unroll=8", "hoist=T", "bf16 compute"),
        "fused": ("unroll=4", "unroll=8", "hoist=T"),
    }
    for who, variants in want_variants.items():
        for v in variants:
            for kind in ("fwd", "train"):
                row = next(
                    r for r in rows if (r["config"], r["who"], r["variant"], r["kind"]) == ("small", who, v, kind)
                )
                assert row["ms"] > 0 and row["vs_base"] > 0 and row["vs_torch"] > 0 and row["vs_flax"] > 0
    assert not any(r["variant"] == "cmdbuf all" for r in rows)  # GPU only
    for r in rows:
        if r["kind"] == "fwd" and "max_err_vs_scan" in r:
            assert r["max_err_vs_scan"] < 1e-4, r
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row
