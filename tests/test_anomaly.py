"""lstm_jax.tasks.anomaly against loops, scikit-learn and the reference baseline AUC on KDD-TSAD 135;
experiments/anomaly.py --quick on a user CSV."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from lstm_jax.datasets import DatasetError
from lstm_jax.tasks import anomaly as A
from lstm_jax.tasks import cli, results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_compile():
    """Dominated by compiling small programs: skip XLA's optimisation passes."""
    with cli.fast_compile():
        yield


def test_persistence_z_reproduces_the_reference_auc_on_kdd_135():
    s = A.kdd_135()
    assert (len(s.values), int(s.labels.sum()), s.train_until) == (7501, 12, 1200)
    assert s.labels[:1200].sum() == 0
    z = A.persistence_z(s.values, s.train_until)
    d = np.diff(s.values)
    ref = d[: s.train_until - 1]
    mad = 1.4826 * np.median(np.abs(ref - np.median(ref)))
    np.testing.assert_allclose(z[1:], np.abs(d - np.median(ref)) / mad, rtol=1e-6)
    auc = skm.roc_auc_score(s.labels[1200:], z[1200:])
    assert abs(auc - 0.944) < 0.005  # /work/shared/DATASETS.md: persistence-residual robust z 0.944
    m = A.detection_metrics(z, s)
    np.testing.assert_allclose(m["roc_auc"], auc, rtol=1e-12)
    np.testing.assert_allclose(
        m["average_precision"], skm.average_precision_score(s.labels[1200:], z[1200:]), rtol=1e-12
    )


def test_nn_window_and_spread_match_loops():
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(300) / 5) + 0.1 * rng.normal(size=300)
    got = A.nn_window(x, 150, length=8, chunk=37)
    for c in (4, 100, 200, 295):
        i = min(max(c - 4, 0), 300 - 8)
        ref = min(np.linalg.norm(x[i : i + 8] - x[j : j + 8]) for j in range(150 - 8 + 1))
        np.testing.assert_allclose(got[c], ref, rtol=1e-6, atol=1e-9)
    w = rng.random(20)
    spread = A.spread_window_scores(w, 5, 24)
    for t in range(24):
        cover = [w[i] for i in range(20) if i <= t < i + 5]
        np.testing.assert_allclose(spread[t], np.mean(cover))


def test_injected_anomalies_are_seeded_and_labelled():
    x = np.sin(np.arange(4000) / 20)
    a, b = A.inject_anomalies(x, train_until=1000, seed=3), A.inject_anomalies(x, train_until=1000, seed=3)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, A.inject_anomalies(x, train_until=1000, seed=4).values)
    assert a.labels[:1000].sum() == 0 and a.labels.sum() == 5 + 10 * 48
    np.testing.assert_array_equal(a.values[a.labels == 0], x[a.labels == 0])  # untouched outside labels
    with pytest.raises(DatasetError, match="room"):
        A.inject_anomalies(x[:1200], train_until=1000, seed=0)


def test_autoencoder_reconstructs_windows_of_the_input_shape():
    params = A.init_autoencoder(jax.random.key(0), hidden=6, code=3)
    x = jax.random.normal(jax.random.key(1), (4, 10, 1))
    apply = jax.jit(A.apply_autoencoder)
    out = apply(params, x)
    assert out.shape == (4, 10, 1)
    # each example is reconstructed from its own code alone: permuting the batch permutes the output
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(apply(params, x[perm]), out[perm], rtol=1e-5, atol=1e-6)


def _csv(tmp_path, n=900):
    import pandas as pd

    rng = np.random.default_rng(0)
    v = np.sin(np.arange(n) / 6) + 0.05 * rng.normal(size=n)
    lab = np.zeros(n, int)
    v[700:710] += 2.0
    lab[700:710] = 1
    path = tmp_path / "s.csv"
    pd.DataFrame({"v": v, "is_anomaly": lab}).to_csv(path, index=False)
    return path


def test_anomaly_quick_on_a_user_csv(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("exp_anomaly", ROOT / "experiments" / "anomaly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    args = ["--quick", "--no-progress", "--csv", str(_csv(tmp_path)), "--value-col", "v", "--label-col", "is_anomaly"]
    module.main(args + ["--train-until", "500", "--window", "16", "--out", str(out)])
    data = results.load_metrics(out / "metrics.json")
    models = {r["model"] for r in data["results"]}
    assert models == {"persistence_z", "nn_window", "lstm_forecast", "lstm_autoencoder"}
    assert {r["metric"] for r in data["results"]} == {"roc_auc", "average_precision", "best_f1", "top1_hit"}
    nn = [r["value"] for r in data["results"] if r["model"] == "nn_window" and r["metric"] == "roc_auc"]
    assert nn[0] > 0.9  # a +2 bump on a clean sine is found by the nearest-window distance
    assert (out / "anomaly.png").stat().st_size > 1000 and any((out / "checkpoint").iterdir())
    assert cli.run_main(module.main, args[:-1] + ["nope", "--out", str(out)]) == 2
    assert "expected a column named 'nope'" in capsys.readouterr().err


def test_downsampled_autoencoder_equals_the_autoencoder_of_the_block_means():
    rng = np.random.default_rng(1)
    n, q = 601, 3  # a last partial block: its point takes the last block's score
    x = np.sin(np.arange(n) / 7) + 0.1 * rng.normal(size=n)
    series = A.Series("s", x, np.zeros(n, np.int64), 300)
    kw = dict(length=8, hidden=4, epochs=1, batch_size=16, progress=False, center=False)
    got, _ = A.autoencoder_scores(series, downsample=q, **kw)
    # by hand: the block means as a series of their own, the plain autoencoder, each score repeated
    means = np.array([x[i : i + q].mean() for i in range(0, n - q + 1, q)])
    blocks = A.Series("b", means, np.zeros(len(means), np.int64), 300 // q)
    ref, _ = A.autoencoder_scores(blocks, downsample=1, **kw)
    assert got.shape == (n,)
    np.testing.assert_allclose(got[: q * len(means)], np.repeat(ref, q), rtol=2e-4, atol=1e-6)
    assert got[-1] == got[-2]
    with pytest.raises(ValueError, match="downsample >= 1"):
        A.autoencoder_scores(series, downsample=0, **kw)
