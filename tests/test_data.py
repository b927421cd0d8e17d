"""Sequence data utilities against naive Python loops and scikit-learn."""

import chex
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler as SkScaler

from lstm_jax import data as D


def _series(n=40, f=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, f)).cumsum(0)


def _naive_windows(a, window, horizon, stride, fcols, tcols, multi_step=False):
    xs, ys = [], []
    s = 0
    while s + window + horizon <= len(a):
        xs.append([[a[s + i, c] for c in fcols] for i in range(window)])
        if multi_step:
            ys.append([[a[s + window + h, c] for c in tcols] for h in range(horizon)])
        else:
            ys.append([a[s + window + horizon - 1, c] for c in tcols])
        s += stride
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize(
    "window, horizon, stride, fcols, tcols, multi",
    [
        (6, 1, 1, None, [0], False),
        (5, 3, 2, [0, 2], [1, 2], False),
        (4, 2, 3, [1], None, True),
        (39, 1, 1, None, [2], False),
    ],
)
def test_make_windows_equals_naive_loop(window, horizon, stride, fcols, tcols, multi):
    a = _series()
    x, y = D.make_windows(
        a, window=window, horizon=horizon, stride=stride, feature_cols=fcols, target_cols=tcols, multi_step=multi
    )
    fc = range(a.shape[1]) if fcols is None else fcols
    tc = range(a.shape[1]) if tcols is None else tcols
    wx, wy = _naive_windows(a, window, horizon, stride, list(fc), list(tc), multi)
    chex.assert_trees_all_equal((x, y), (wx, wy))


def test_chronological_split_is_contiguous_and_ordered():
    tr, va, te = D.chronological_split(100, val_fraction=0.2, test_fraction=0.1)
    idx = np.arange(100)
    chex.assert_trees_all_equal((idx[tr], idx[va], idx[te]), (np.arange(0, 70), np.arange(70, 90), np.arange(90, 100)))
    tr, va, te = D.chronological_split(10, val_size=3, test_size=0)
    assert (tr, va, te) == (slice(0, 7), slice(7, 10), slice(10, 10))


def test_scaler_matches_sklearn_and_inverts():
    a = _series()
    sc = D.fit_scaler(a[:30])
    sk = SkScaler().fit(a[:30])
    np.testing.assert_allclose(D.scale(sc, a), sk.transform(a).astype(np.float32), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(D.unscale(sc, D.scale(sc, a)), a, rtol=1e-5, atol=1e-5)
    # per-column inverse of a 1-column prediction (column 2 of the scaler)
    y = D.scale(sc, a[:, 2:3], columns=[2])
    np.testing.assert_allclose(D.unscale(sc, y, columns=[2]), a[:, 2:3], rtol=1e-5, atol=1e-5)
    const = D.fit_scaler(np.ones((5, 2)))
    np.testing.assert_array_equal(const.scale, [1.0, 1.0])


def test_scaler_never_sees_validation_or_test_rows():
    a = _series(n=60)
    base = D.prepare_windows(a, window=6, target_cols=[0], val_fraction=0.2, test_fraction=0.2)
    poisoned = a.copy()
    poisoned[36:] = poisoned[36:] * 1000.0 + 5000.0  # rows 36.. are val (36..47) and test (48..59)
    other = D.prepare_windows(poisoned, window=6, target_cols=[0], val_fraction=0.2, test_fraction=0.2)
    chex.assert_trees_all_equal(base.scaler, other.scaler)
    chex.assert_trees_all_equal(base.train, other.train)
    sk = SkScaler().fit(a[:36])
    np.testing.assert_allclose(base.scaler.mean, sk.mean_)
    np.testing.assert_allclose(base.scaler.scale, sk.scale_)
    # each split's targets are that split's rows (scaled with train statistics)
    z = D.scale(base.scaler, a)
    np.testing.assert_allclose(base.val["y"][:, 0], z[36:48, 0], rtol=1e-6)
    np.testing.assert_allclose(base.test["y"][:, 0], z[48:, 0], rtol=1e-6)
    assert base.train["x"].shape == (30, 6, 3) and base.train["x"].dtype == np.float32


def test_minibatches_are_seeded_and_cover_each_example_once():
    data = {"x": np.arange(10)[:, None] * np.ones((1, 2)), "i": np.arange(10)}
    a = [b["i"] for b in D.minibatches(data, 3, seed=1, epoch=0)]
    b = [b["i"] for b in D.minibatches(data, 3, seed=1, epoch=0)]
    c = [b["i"] for b in D.minibatches(data, 3, seed=1, epoch=1)]
    chex.assert_trees_all_equal(a, b)
    assert [len(x) for x in a] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.sort(np.concatenate(a)), np.arange(10))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))
    tail = [b["i"] for b in D.minibatches(data, 3, seed=1, epoch=0, start=2)]
    chex.assert_trees_all_equal(tail, a[2:])
    assert len(list(D.minibatches(data, 3, drop_last=True))) == 3
    np.testing.assert_array_equal(next(D.minibatches(data, 4, shuffle=False))["i"], [0, 1, 2, 3])


def test_pad_sequences_and_bucketing():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=20)
    seqs = [rng.normal(size=(n, 2)) for n in lengths]
    padded, got_len = D.pad_sequences(seqs)
    assert padded.shape == (20, lengths.max(), 2)
    np.testing.assert_array_equal(got_len, lengths)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(padded[i, : len(s)], s)
        np.testing.assert_array_equal(padded[i, len(s) :], 0.0)
    batches = D.bucket_by_length(lengths, 4, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(20))
    padding = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    naive = [np.arange(20)[i : i + 4] for i in range(0, 20, 4)]
    naive_padding = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in naive)
    assert padding < naive_padding
    chex.assert_trees_all_equal(batches, D.bucket_by_length(lengths, 4, seed=0))


def test_tbptt_chunks_equal_slicing_loop():
    xs = np.random.default_rng(0).normal(size=(2, 12, 3))
    got = D.tbptt_chunks(xs, 4)
    want = np.stack([xs[:, k * 4 : (k + 1) * 4] for k in range(3)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: D.make_windows(np.zeros((5, 2)), window=5), r"longer than window \+ horizon = 5 \+ 1, got 5 rows"),
        (
            lambda: D.make_windows(np.array([[0.0], [np.nan], [1.0], [2.0]]), window=2),
            r"finite values in series.*index \(1, 0\)",
        ),
        (lambda: D.fit_scaler(np.array([[1.0], [np.inf]])), "finite values in train"),
        (lambda: D.chronological_split(10, val_fraction=0.01), "non-empty val split"),
        (lambda: D.chronological_split(3, val_size=2, test_size=1), "non-empty train split"),
        (
            lambda: list(D.minibatches({"x": np.zeros((5, 2))}, 6)),
            r"batch_size <= number of examples 5, got batch_size=6",
        ),
        (
            lambda: D.scale(D.fit_scaler(np.zeros((4, 3))), np.zeros((4, 2))),
            r"3 features in the last axis.*got shape \(4, 2\)",
        ),
        (
            lambda: D.make_windows(np.zeros((9, 2)), window=3, target_cols=[2]),
            r"target_cols to be column indices in \[0, 2\)",
        ),
        (lambda: D.data_size({"x": np.zeros((4, 2)), "y": np.zeros((5,))}), "share the leading axis"),
        (lambda: D.tbptt_chunks(np.zeros((2, 10, 1)), 4), "multiple of chunk=4"),
        (lambda: D.pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))]), r"feature shape \(3,\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
