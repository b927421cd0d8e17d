"""Sequence data: windowing, chronological splits, scaling, seeded minibatches, padding and
length bucketing, and chunks for truncated backpropagation through time.

Everything here runs on the host with NumPy (data preparation happens once, before any jit)
and raises ``ValueError`` with an "expected ..., got ..." message on bad input: NaN/Inf in
data, a window longer than the series, an empty split, a batch larger than the data, or
mismatched feature counts.

A batch is any pytree (usually a dict) of arrays sharing the leading axis ``N``:
``{"x": [N, t, d], "y": [N, k]}``.

>>> temp, rain = np.sin(np.arange(100.0) / 7) * 10 + 12, np.cos(np.arange(100.0))
>>> series = np.stack([temp, rain], axis=1)                     # [n, 2], chronological
>>> splits = prepare_windows(series, window=6, target_cols=[0])  # "last six days -> next day"
>>> splits.train["x"].shape[1:], splits.train["y"].shape[1:]     # [s, 6, 2], [s, 1], scaled
((6, 2), (1,))
>>> y_celsius = unscale(splits.scaler, splits.test["y"], columns=[0])   # back to degrees
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Optional, Union

import jax
import numpy as np

from lstm_jax.keys import as_key, is_key
from lstm_jax.typing import PRNGKey, PyTree

__all__ = [
    "check_finite",
    "data_size",
    "make_windows",
    "chronological_split",
    "StandardScaler",
    "fit_scaler",
    "scale",
    "unscale",
    "WindowedSplits",
    "prepare_windows",
    "epoch_permutation",
    "num_batches",
    "minibatches",
    "take",
    "pad_sequences",
    "bucket_by_length",
    "tbptt_chunks",
]

Columns = Optional[Sequence[int]]


# --------------------------------------------------------------------------- checks
def check_finite(data: PyTree, name: str = "data") -> None:
    """Raise ``ValueError`` naming the first leaf and index holding NaN or Inf."""
    leaves = jax.tree_util.tree_leaves_with_path(data)
    for path, leaf in leaves:
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
            bad = ~np.isfinite(a)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                label = name + jax.tree_util.keystr(path)
                raise ValueError(
                    f"expected finite values in {label}, got {int(bad.sum())} NaN/Inf entries "
                    f"(first at index {where}); clean or impute the data first"
                )


def data_size(data: PyTree, name: str = "data") -> int:
    """The common leading-axis size ``N`` of every leaf of ``data`` (raises if they differ)."""
    leaves = jax.tree_util.tree_leaves_with_path(data)
    if not leaves:
        raise ValueError(f"expected {name} to hold at least one array, got {type(data).__name__} with no leaves")
    sizes = {}
    for path, leaf in leaves:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"expected every leaf of {name} to have a leading example axis, got a scalar at "
                f"{name}{jax.tree_util.keystr(path)}"
            )
        sizes[name + jax.tree_util.keystr(path)] = shape[0]
    if len(set(sizes.values())) != 1:
        raise ValueError(f"expected all leaves of {name} to share the leading axis N, got sizes {sizes}")
    return next(iter(sizes.values()))


def _as_2d(series, name: str = "series") -> np.ndarray:
    a = np.asarray(series)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"expected {name} of shape [n, f] (or [n]), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"expected a numeric {name}, got dtype {a.dtype}")
    return a


def _columns(cols: Columns, f: int, name: str) -> np.ndarray:
    if cols is None:
        return np.arange(f)
    idx = np.asarray(list(cols) if not isinstance(cols, (int, np.integer)) else [cols])
    if idx.size == 0:
        raise ValueError(f"expected at least one column in {name}, got {list(idx)}")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < -f or idx.max() >= f:
        raise ValueError(f"expected {name} to be column indices in [0, {f}), got {list(idx)}")
    return idx % f


# --------------------------------------------------------------------------- windows
def make_windows(
    series,
    *,
    window: int,
    horizon: int = 1,
    stride: int = 1,
    feature_cols: Columns = None,
    target_cols: Columns = None,
    multi_step: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a multivariate series into supervised ``(inputs, target)`` samples.

    Sample ``i`` starts at row ``s = i * stride``: its inputs are rows ``s .. s+window-1``
    (the ``feature_cols``) and its target is row ``s + window + horizon - 1`` (the
    ``target_cols``), i.e. ``horizon`` steps after the last input row. With
    ``multi_step=True`` the target is every row ``s+window .. s+window+horizon-1``.

    Args:
      series: ``[n, f]`` (or ``[n]``), rows in time order.
      window: input steps per sample (``t``).
      horizon: how many steps ahead the target lies (1 = the next row).
      stride: rows between sample starts.
      feature_cols: input columns (default all ``f``).
      target_cols: target columns (default all ``f``).
      multi_step: return all ``horizon`` target rows instead of only the last.

    Returns:
      ``(X: [s, window, f_in], Y: [s, k])`` or ``Y: [s, horizon, k]`` with ``multi_step``;
      ``s = (n - window - horizon) // stride + 1``.
    """
    a = _as_2d(series)
    n, f = a.shape
    for name, v in (("window", window), ("horizon", horizon), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"expected {name} to be a positive int, got {v!r}")
    if window + horizon > n:
        raise ValueError(f"expected a series longer than window + horizon = {window} + {horizon}, got {n} rows")
    check_finite(a, "series")
    fcols = _columns(feature_cols, f, "feature_cols")
    tcols = _columns(target_cols, f, "target_cols")
    count = (n - window - horizon) // stride + 1
    starts = np.arange(count) * stride
    x = a[starts[:, None] + np.arange(window)[None, :]][:, :, fcols]
    if multi_step:
        y = a[starts[:, None] + window + np.arange(horizon)[None, :]][:, :, tcols]
    else:
        y = a[starts + window + horizon - 1][:, tcols]
    return x, y


def chronological_split(
    n: int,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    val_size: Optional[int] = None,
    test_size: Optional[int] = None,
) -> tuple[slice, slice, slice]:
    """Contiguous train / validation / test ranges of ``n`` time-ordered rows (no shuffling).

    Sizes come from ``val_size``/``test_size`` when given, else ``round(fraction * n)``;
    train gets the rest and comes first. A zero-size val or test split is allowed only when
    asked for explicitly (fraction or size 0); train may never be empty.

    Returns:
      ``(train, val, test)`` as ``slice`` objects: ``series[train]``.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"expected n to be a positive int, got {n!r}")
    sizes = []
    for name, frac, size in (("val", val_fraction, val_size), ("test", test_fraction, test_size)):
        if size is None:
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"expected {name}_fraction in [0, 1), got {frac}")
            size = int(round(frac * n))
            if frac > 0 and size == 0:
                raise ValueError(f"expected a non-empty {name} split, got {name}_fraction={frac} of n={n} -> 0 rows")
        elif not isinstance(size, (int, np.integer)) or size < 0:
            raise ValueError(f"expected {name}_size to be a non-negative int, got {size!r}")
        sizes.append(int(size))
    n_val, n_test = sizes
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"expected a non-empty train split, got n={n} rows with val={n_val}, test={n_test}")
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


# --------------------------------------------------------------------------- scaling
class StandardScaler(NamedTuple):
    """Per-column standardisation fitted on training data only."""

    mean: np.ndarray  # [f]
    scale: np.ndarray  # [f], standard deviation (ddof=0); 1 for constant columns


def fit_scaler(train) -> StandardScaler:
    """Column means and standard deviations of ``train: [..., f]`` (all leading axes pooled).

    Pass ONLY the training split: validation and test data must not leak into the scaler.
    """
    a = np.asarray(train, dtype=np.float64)
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"expected a non-empty array of shape [n, f], got shape {a.shape}")
    check_finite(a, "train")
    flat = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a[:, None]
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return StandardScaler(mean, std)


def _scaler_cols(scaler: StandardScaler, x: np.ndarray, columns: Columns, what: str):
    f = scaler.mean.shape[0]
    cols = _columns(columns, f, "columns")
    k = x.shape[-1] if x.ndim else None
    if k != cols.size:
        hint = "" if columns is not None else " (pass columns=... for a subset)"
        raise ValueError(f"expected {what} with {cols.size} features in the last axis{hint}, got shape {x.shape}")
    return scaler.mean[cols], scaler.scale[cols]


def scale(scaler: StandardScaler, x, *, columns: Columns = None) -> np.ndarray:
    """``(x - mean) / std`` over the last axis; ``columns`` selects the scaler's columns that
    ``x``'s features correspond to. Output dtype float32 (or ``x``'s float dtype)."""
    x = np.asarray(x)
    mean, std = _scaler_cols(scaler, x, columns, "x")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return ((x - mean) / std).astype(dtype)


def unscale(scaler: StandardScaler, x, *, columns: Columns = None) -> np.ndarray:
    """Inverse of ``scale``: ``x * std + mean`` (e.g. predictions back to original units)."""
    x = np.asarray(x)
    mean, std = _scaler_cols(scaler, x, columns, "x")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return (x * std + mean).astype(dtype)


class WindowedSplits(NamedTuple):
    """Result of ``prepare_windows``: each split is ``{"x": [s, window, f_in], "y": [s, k]}``."""

    train: dict
    val: dict
    test: dict
    scaler: Optional[StandardScaler]  # fitted on the training rows only (None if scale=False)
    feature_cols: np.ndarray
    target_cols: np.ndarray


def prepare_windows(
    series,
    *,
    window: int,
    horizon: int = 1,
    stride: int = 1,
    feature_cols: Columns = None,
    target_cols: Columns = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    scale_data: bool = True,
    dtype=np.float32,
) -> WindowedSplits:
    """Split a series chronologically, scale with train-only statistics, then window each split.

    The rows are split first (``chronological_split``), the scaler is fitted on the train
    rows only, and a sample belongs to the split holding its target row. Inputs of the first
    val/test samples may reach back into the preceding split's rows: those are past
    observations, known at prediction time, so no future information leaks.

    Returns:
      ``WindowedSplits(train, val, test, scaler, feature_cols, target_cols)``; targets are
      scaled too, invert them with ``unscale(scaler, y, columns=target_cols)``.
    """
    a = _as_2d(series)
    n, f = a.shape
    check_finite(a, "series")
    fcols = _columns(feature_cols, f, "feature_cols")
    tcols = _columns(target_cols, f, "target_cols")
    tr, va, te = chronological_split(n, val_fraction=val_fraction, test_fraction=test_fraction)
    if tr.stop < window + horizon:
        raise ValueError(
            f"expected a train split longer than window + horizon = {window + horizon} rows, got {tr.stop} rows"
        )
    scaler = fit_scaler(a[tr]) if scale_data else None
    z = scale(scaler, a).astype(dtype) if scale_data else a.astype(dtype)  # type: ignore[arg-type]
    x, y = make_windows(z, window=window, horizon=horizon, stride=stride, feature_cols=fcols, target_cols=tcols)  # type: ignore[arg-type]
    target_row = np.arange(x.shape[0]) * stride + window + horizon - 1

    def part(rows: slice) -> dict:
        keep = (target_row >= rows.start) & (target_row < rows.stop)
        return {"x": x[keep], "y": y[keep]}

    splits = part(tr), part(va), part(te)
    for name, s, rows in zip(("val", "test"), splits[1:], (va, te)):
        if rows.stop > rows.start and s["x"].shape[0] == 0:
            raise ValueError(f"expected at least one {name} window, got none (try a smaller stride)")
    return WindowedSplits(*splits, scaler, fcols, tcols)


# --------------------------------------------------------------------------- minibatches
def _key_of(seed_or_key, name: str = "seed") -> PRNGKey:
    """An int seed as ``jax.random.key(seed)``; a typed or legacy key as a typed key (same bits)."""
    if isinstance(seed_or_key, (int, np.integer)) and not isinstance(seed_or_key, bool):
        return jax.random.key(int(seed_or_key))
    if is_key(seed_or_key):
        return as_key(seed_or_key, name)
    raise TypeError(
        f"expected {name} to be an int seed or a PRNG key (jax.random.key or jax.random.PRNGKey), "
        f"got {type(seed_or_key).__name__}"
        + (f" of dtype {seed_or_key.dtype}" if hasattr(seed_or_key, "dtype") else f" {seed_or_key!r}")
    )


def epoch_permutation(key: PRNGKey, epoch, n: int):
    """The example order of ``epoch``: ``jax.random.permutation(fold_in(key, epoch), n)``.

    Traceable (used inside compiled epochs and vmapped ensembles) and identical on the host
    loop, which is what makes every training path see the same batches.
    """
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches per epoch; raises when ``batch_size`` is not in ``[1, n]``."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"expected batch_size to be a positive int, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"expected batch_size <= number of examples {n}, got batch_size={batch_size}")
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def take(data: PyTree, index) -> PyTree:
    """``data[index]`` for every leaf (host or device arrays)."""
    return jax.tree_util.tree_map(lambda a: a[index], data)


def minibatches(
    data: PyTree,
    batch_size: int,
    *,
    seed: Union[int, PRNGKey] = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    start: int = 0,
) -> Iterator[PyTree]:
    """Iterate over one epoch of minibatches of ``data`` (leaves ``[N, ...]``).

    The order is ``epoch_permutation(key(seed), epoch, N)`` when shuffling, so the same
    ``(seed, epoch)`` always yields the same batches; ``start`` skips the first batches
    (resume mid-epoch). Leaves are NumPy arrays. Example::

        for epoch in range(10):
            for batch in minibatches(train, 32, seed=0, epoch=epoch):
                state, metrics = step(state, batch)
    """
    n = data_size(data)
    nb = num_batches(n, batch_size, drop_last=drop_last)
    host = jax.tree_util.tree_map(np.asarray, data)
    order = np.asarray(epoch_permutation(_key_of(seed), epoch, n)) if shuffle else np.arange(n)
    for i in range(start, nb):
        yield take(host, order[i * batch_size : (i + 1) * batch_size])


# --------------------------------------------------------------------------- variable length
def pad_sequences(
    sequences: Sequence, *, max_len: Optional[int] = None, value: float = 0.0, dtype=None
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length sequences into one array.

    Args:
      sequences: list of ``[t_i, d]`` (or ``[t_i]`` for token ids) arrays, ``t_i >= 1``.
      max_len: padded length ``T`` (default ``max t_i``); longer sequences are an error.
      value: padding value.

    Returns:
      ``(padded: [n, T, d] or [n, T], lengths: [n] int32)`` — feed ``lengths`` to ``lstm``.
    """
    if len(sequences) == 0:
        raise ValueError("expected at least one sequence, got an empty list")
    arrays = [np.asarray(s) for s in sequences]
    tail = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[0] < 1:
            raise ValueError(f"expected sequence {i} of shape [t, ...] with t >= 1, got shape {a.shape}")
        if a.shape[1:] != tail:
            raise ValueError(f"expected every sequence to have feature shape {tail}, got {a.shape[1:]} at index {i}")
    check_finite(arrays, "sequences")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    T = int(lengths.max()) if max_len is None else int(max_len)
    if lengths.max() > T:
        raise ValueError(f"expected sequences of at most max_len={T} steps, got one of {lengths.max()} steps")
    dtype = dtype or np.result_type(*[a.dtype for a in arrays])
    out = np.full((len(arrays), T) + tail, value, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out, lengths


def bucket_by_length(
    lengths,
    batch_size: int,
    *,
    num_buckets: Optional[int] = None,
    seed: Union[int, PRNGKey] = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> list:
    """Group example indices into batches of similar length (less padding per batch).

    Examples are sorted by length (ties broken by a seeded shuffle), cut into consecutive
    batches of ``batch_size`` (the last may be smaller), and the batch order is shuffled
    per ``(seed, epoch)``. ``num_buckets`` (optional) first splits the sorted order into that
    many buckets and shuffles within each bucket, trading padding for randomness.

    Returns:
      list of int index arrays; pad each batch to its own ``max(lengths[idx])`` with
      ``pad_sequences([seqs[i] for i in idx])``.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"expected lengths of shape [n] with n >= 1, got shape {lengths.shape}")
    n = lengths.size
    num_batches(n, batch_size)
    key = jax.random.fold_in(_key_of(seed), epoch)
    k_tie, k_bucket, k_order = jax.random.split(key, 3)
    tie = np.asarray(jax.random.permutation(k_tie, n)) if shuffle else np.arange(n)
    order = tie[np.argsort(lengths[tie], kind="stable")]
    if num_buckets is not None and shuffle:
        if not isinstance(num_buckets, (int, np.integer)) or num_buckets < 1:
            raise ValueError(f"expected num_buckets to be a positive int, got {num_buckets!r}")
        parts = np.array_split(order, num_buckets)
        keys = jax.random.split(k_bucket, len(parts))
        order = np.concatenate([p[np.asarray(jax.random.permutation(k, p.size))] for p, k in zip(parts, keys)])
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle:
        perm = np.asarray(jax.random.permutation(k_order, len(batches)))
        batches = [batches[i] for i in perm]
    return batches


# --------------------------------------------------------------------------- TBPTT
def tbptt_chunks(xs, chunk: int):
    """Split the time axis into equal chunks for truncated BPTT.

    Args:
      xs: ``[b, T, ...]`` (NumPy or JAX), ``T`` a multiple of ``chunk``.
      chunk: steps per chunk.

    Returns:
      ``[T // chunk, b, chunk, ...]`` (chunk-major, ready for ``lax.scan``).
    """
    shape = tuple(np.shape(xs))
    if len(shape) < 2:
        raise ValueError(f"expected xs of shape [b, T, ...], got shape {shape}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"expected chunk to be a positive int, got {chunk!r}")
    b, T = shape[:2]
    if T % chunk:
        raise ValueError(
            f"expected the time axis ({T}) to be a multiple of chunk={chunk}; trim or pad the sequences first"
        )
    xs = xs.reshape((b, T // chunk, chunk) + shape[2:])
    axes = (1, 0, 2) + tuple(range(3, len(shape) + 1))
    return xs.transpose(axes)
