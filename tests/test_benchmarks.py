"""The benchmark harness end to end: ``benchmarks/run.py --quick`` writes well-formed results.

This checks the harness (every peer that is installed, floors, sweeps, memory table, report
and plots), not the timings.
"""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from lstm_jax import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_well_formed_json_markdown_and_plots(tmp_path):
    # one test (not a module fixture): under pytest-xdist each worker would run the suite again
    out = tmp_path
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(out),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    _check_configs(results)
    _check_sweeps_and_memory(results)
    _check_markdown_and_plots(out, results, proc.stdout)


def _installed(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def _check_configs(results):
    assert results["settings"]["quick"] is True and results["peak_gflops"] > 0
    assert {e["kind"] for e in results["configs"]} == {"lstm", "gru"}
    expected = {"ours", "torch", "flax_linen", "flax_nnx"} | ({"equinox"} if _installed("equinox") else set())
    for e in results["configs"]:
        peers = set(e["results"])
        assert expected <= peers, (e["kind"], peers)
        assert ("ours_fused" in peers) == (e["kind"] == "lstm")
        for _peer, modes in e["results"].items():
            assert set(modes) == {"fwd", "train"}
            for m in modes.values():
                assert len(m["times_ms"]) == results["settings"]["reps"]
                assert m["min_ms"] <= m["median_ms"] and m["min_ms"] > 0
        assert set(e["floors"]) == {"chain_ms", "flop_ms"}
        assert e["floors"]["chain_ms"]["train"] == pytest.approx(2 * e["floors"]["chain_ms"]["fwd"])
        b, t, d, h = e["cfg"]
        gates = 4 if e["kind"] == "lstm" else 3
        flops = 2 * t * b * (d + h) * gates * h  # forward matmul FLOPs, by hand
        assert e["floors"]["flop_ms"]["fwd"] == pytest.approx(flops / (results["peak_gflops"] * 1e9) * 1e3)
    if not _installed("equinox"):
        assert any("equinox" in s for s in results["skipped"])


def _check_sweeps_and_memory(results):
    params = [s["param"] for s in results["sweeps"]]
    assert params == ["T", "B", "H", "unroll", "hoist"]
    for s in results["sweeps"]:
        for pt in s["points"]:
            assert "ours_fused" in pt["results"]
            assert ("ours" in pt["results"]) == (s["param"] in "TBH")  # --quick: knob sweeps time fused only
    impls = [r["impl"] for r in results["memory"]]
    assert impls == ["scan", "fused", "fused_recompute", "fused_checkpoint"]
    by_impl = {r["impl"]: r for r in results["memory"]}
    assert by_impl["fused_recompute"]["residual_bytes"] <= 1.2 * by_impl["fused_recompute"]["hc_bytes"]
    assert by_impl["fused_checkpoint"]["residual_bytes"] < by_impl["fused_recompute"]["residual_bytes"]
    assert all(r["peak_bytes"] > 0 and r["compile_s"] > 0 for r in results["memory"])


def _check_markdown_and_plots(out, results, stdout):
    text = (out / "results.md").read_text()
    assert text.startswith("# lstm_jax benchmark")
    for heading in (
        "## LSTM: milliseconds",
        "## GRU: milliseconds",
        "×torch",
        "×flax linen",
        "% chain floor",
        "Issue-5 targets",
        "## Sweeps",
        "## Train-step compile time and memory",
    ):
        assert heading in text, heading
    header = next(line for line in text.splitlines() if line.startswith("| config (B, T, D, H)"))
    rows = [line for line in text.splitlines() if line.startswith("| tiny (4, 16, 4, 8)")]
    assert len(rows) == 4 and all(r.count("|") == header.count("|") for r in rows[:2])
    assert results["plots"] and "wrote" in stdout
    for name in results["plots"]:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_ensemble_quick_run_reports_speedups_of_matching_members(tmp_path):
    out = tmp_path / "ensemble.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "ensemble.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and len(result["runs"]) == 2
    for run in result["runs"]:
        assert run["members"] == 4 and run["sequential_s"] > 0 and run["vmapped_s"] > 0
        assert run["speedup"] == pytest.approx(run["sequential_s"] / run["vmapped_s"], rel=1e-2)
        # the timed vmapped program reproduces the sequential runs
        assert run["max_best_val_diff_vmapped_vs_sequential"] < 1e-5


def test_ensemble_rejects_bad_sizes():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "ensemble.py"), "--sizes", "8x8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "batch:hidden" in proc.stderr


def test_cpu_speed_quick_run_tabulates_every_backend_against_its_peers(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "cpu_speed.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "cpu_speed.json").read_text())
    assert set(report["results"]) == {"tiny", "tiny_3l"}
    for res in report["results"].values():
        assert {
            "torch",
            "flax_linen",
            "ours_scan",
            "ours_fused",
            "ours_cpu_kernel",
            "ours_cpu_hybrid",
            "ours_auto",
            "ours_cpu_kernel_bf16",
        } <= set(res)
        contenders = [k for k in res if k not in ("cfg", "auto")]
        assert all(0 < res[k][f"{m}_min"] <= res[k][m] for k in contenders for m in ("fwd", "train"))
        assert res["auto"] in backends.names()
    table = (tmp_path / "cpu_speed.md").read_text()
    assert table.count("| tiny") == 4 and "cpu_kernel ms (x torch, x flax)" in table


def test_ensemble_runs_with_the_cpu_kernel(tmp_path):
    out = tmp_path / "ensemble.json"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "ensemble.py"),
            "--quick",
            "--impl",
            "cpu_kernel",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in json.loads(out.read_text())["runs"]:
        assert run["impl"] == "cpu_kernel" and run["max_best_val_diff_vmapped_vs_sequential"] < 1e-5
