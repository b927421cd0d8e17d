"""Shared plumbing of the ``experiments/`` scripts: the common command line, a recurrent
sequence model with a linear head, a step-budgeted training loop with a progress bar,
batched jitted prediction, ``metrics.json`` results, checkpoints and figures.

Every script follows the same line: parse flags -> load data (``lstm_jax.datasets``) ->
baselines (``lstm_jax.baselines``) -> ``init_seq_model`` -> ``fit``/``train_steps`` ->
``Results.add`` rows -> ``Results.write`` (``metrics.json``) + a PNG + a checkpoint.

``metrics.json`` shape (the same for every script, so code can tabulate results)::

    {"task": ..., "command": "python experiments/...", "config": {...}, "wall_time_s": ...,
     "results": [{"task", "dataset", "model", "metric", "split", "value", ...extra}, ...]}

Bad user input (unknown data set, missing CSV column, non-numeric target, a bad flag) is
reported by ``run_main`` as ONE line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import GRUParams, LSTMCarry, LSTMParams, RNNParams
from lstm_jax.datasets import DatasetError
from lstm_jax.layers import StackParams, gru, init_gru, init_lstm, init_rnn, lstm, rnn
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = [
    "CELLS",
    "UsageError",
    "ArgumentParser",
    "make_parser",
    "run_main",
    "fast_compile",
    "SeqModel",
    "init_seq_model",
    "apply_seq_model",
    "count_params",
    "train_steps",
    "train_generated",
    "predict_batched",
    "progress_bar",
    "init_ensemble",
    "ensemble_apply",
    "make_ensemble_regression_loss",
    "ForecastData",
    "day_of_year_features",
    "forecast_data",
    "forecast_baselines",
    "forecast_member_apply",
    "ForecastEnsemble",
    "train_forecast_ensemble",
    "predict_forecast_ensemble",
    "stratified_split",
    "make_classifier_loss",
    "train_classifier",
    "best_history_value",
    "predict_classes",
    "confusion_matrix",
    "tokenize",
    "WordVocab",
    "build_vocab",
    "encode_texts",
    "ppmi_svd_vectors",
    "CharVocab",
    "lm_zero_state",
    "lm_chunk_loss",
    "make_lm_train_step",
    "lm_random_windows",
    "lm_bits_per_char",
    "lm_sample",
    "Results",
    "Timer",
    "load_metrics",
    "results_markdown",
    "PRIMARY_METRIC",
    "summarize_runs",
    "cells_markdown",
    "save_checkpoint",
    "pyplot",
    "save_figure",
]

CELLS = ("lstm", "gru", "rnn")
_INIT = {"lstm": init_lstm, "gru": init_gru, "rnn": init_rnn}
_FORWARD = {LSTMParams: lstm, GRUParams: gru, RNNParams: rnn}


# --------------------------------------------------------------------------- command line
class UsageError(ValueError):
    """Bad command-line input that is not a data problem (e.g. conflicting flags)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports errors as one line (``prog: error: ...``) and exits with 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser(name: str, description: str, *, default_cell: str = "lstm") -> ArgumentParser:
    """The flags every experiment takes: ``--quick --cell --seed --out --no-progress``.

    ``--out`` defaults to ``results/<name>``; scripts add their own flags on top.
    """
    parser = ArgumentParser(prog=f"{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="tiny run (< 60 s) for smoke tests")
    parser.add_argument("--cell", choices=CELLS, default=default_cell, help="recurrent cell (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default=os.path.join("results", name), help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_main(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a ``DatasetError``/``UsageError`` becomes one stderr line and exit code 2.

    Use as ``sys.exit(run_main(main))`` in a script. Other exceptions (bugs) keep their traceback.
    """
    try:
        main(argv)
    except (DatasetError, UsageError) as e:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "experiment"
        message = " ".join(str(e).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def fast_compile(enabled: bool = True):
    """Within the block XLA skips most optimisation passes (``jax_disable_most_optimizations``):
    about half the compile time, slower programs. For ``--quick`` runs, whose cost is compiling."""
    if not enabled:
        yield
        return
    old = bool(jax.config.values.get("jax_disable_most_optimizations", False))
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


# --------------------------------------------------------------------------- model
class SeqModel(NamedTuple):
    """A recurrent network with a linear read-out, optionally reading token ids through an embedding."""

    rnn: StackParams  # any cell kind
    w_out: Array  # [D*d_out, k]
    b_out: Array  # [k]
    embed: Optional[Array] = None  # [V, d_in] when the inputs are token ids


def init_seq_model(
    key: PRNGKey,
    cell: str,
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    vocab_size: Optional[int] = None,
    out_scale: float = 1.0,
) -> SeqModel:
    """Initialise ``SeqModel``.

    Args:
      cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
      input_size: features per step (the embedding width when ``vocab_size`` is given).
      hidden_size, num_layers, bidirectional: of the recurrent stack.
      output_size: ``k`` outputs of the linear head.
      vocab_size: if given, inputs are int token ids embedded by a learned ``[V, input_size]`` table.
      out_scale: multiplies the (Glorot-uniform) head init.
    """
    if cell not in _INIT:
        raise ValueError(f"expected cell in {CELLS}, got {cell!r}")
    k_rnn, k_out, k_emb = jax.random.split(key, 3)
    rnn_params = _INIT[cell](k_rnn, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional)
    d = (2 if bidirectional else 1) * hidden_size
    limit = out_scale * math.sqrt(6.0 / (d + output_size))
    w_out = jax.random.uniform(k_out, (d, output_size), jnp.float32, -limit, limit)
    embed = None
    if vocab_size is not None:
        embed = jax.random.normal(k_emb, (vocab_size, input_size), jnp.float32) * (1.0 / math.sqrt(input_size))
    return SeqModel(rnn_params, w_out, jnp.zeros((output_size,), jnp.float32), embed)


def _final_h(state) -> Array:
    """Last layer's final hidden state, directions concatenated: ``[b, D*d]``."""
    h = state.h if isinstance(state, LSTMCarry) else state
    last = h[:, -1]  # [b, D, d]
    return last.reshape(last.shape[0], -1)


def apply_seq_model(
    params: SeqModel,
    xs: Array,
    *,
    lengths: Optional[Array] = None,
    readout: str = "final",
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    dropout_key: Optional[PRNGKey] = None,
    initial_state: Optional[PyTree] = None,
    return_state: bool = False,
    unroll: int = 1,
    hoist: int = 0,
    impl: str = "scan",
):
    """Run the network on a batch and apply the head.

    Args:
      xs: ``[b, t, d_in]`` floats, or ``[b, t]`` int token ids when the model has an embedding.
      lengths: optional ``[b]`` valid lengths (masking; see ``lstm_jax.lstm``).
      readout: ``"final"`` (final state of the last layer, both directions: ``[b, k]``),
        ``"sequence"`` (every step: ``[b, t, k]``), ``"mean"`` / ``"max"`` (pooled over the
        valid steps: ``[b, k]``).
      dropout: inter-layer dropout and dropout on the head's input; ``recurrent_dropout``
        variational dropout on ``h``; both only when ``dropout_key`` is given.
      initial_state / return_state: carry a state across calls (truncated BPTT, sampling).
      unroll, hoist, impl: passed to the layer (scan unroll factor, input projection chunking,
        ``"scan"`` or the fused LSTM layer; ``"auto"`` fuses plain LSTMs, scans other cells).

    Returns:
      outputs (and the final state when ``return_state``).
    """
    if readout not in ("final", "sequence", "mean", "max"):
        raise ValueError(f"expected readout in ('final', 'sequence', 'mean', 'max'), got {readout!r}")
    if params.embed is not None:
        if not jnp.issubdtype(jnp.asarray(xs).dtype, jnp.integer):
            raise TypeError(f"expected int token ids [b, t] for a model with an embedding, got {jnp.asarray(xs).dtype}")
        xs = jnp.take(params.embed, xs, axis=0)
    forward = _FORWARD[type(params.rnn.layers[0][0])]
    use_dropout = dropout_key is not None
    if use_dropout:
        dropout_key, head_key = jax.random.split(dropout_key)
    ys, state = forward(
        params.rnn, xs, lengths=lengths, initial_state=initial_state,
        dropout=dropout if use_dropout else 0.0,
        recurrent_dropout=recurrent_dropout if use_dropout else 0.0,
        dropout_key=dropout_key, unroll=unroll, hoist=hoist, impl=impl,
    )
    if readout == "final":
        feats = _final_h(state)
    elif readout == "sequence":
        feats = ys
    else:
        t = ys.shape[1]
        valid = jnp.ones(ys.shape[:2], bool) if lengths is None else jnp.arange(t)[None, :] < lengths[:, None]
        if readout == "mean":
            feats = (ys * valid[..., None]).sum(1) / valid.sum(1, keepdims=True).astype(ys.dtype)
        else:
            feats = jnp.where(valid[..., None], ys, -jnp.inf).max(1)
    if use_dropout and dropout > 0.0:
        keep = jax.random.bernoulli(head_key, 1.0 - dropout, feats.shape)
        feats = jnp.where(keep, feats / (1.0 - dropout), 0.0)
    out = feats @ params.w_out
    out = out + params.b_out.reshape((1,) * (out.ndim - 1) + (-1,))
    return (out, state) if return_state else out


def count_params(tree: PyTree) -> int:
    """Number of scalars in a pytree of arrays."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


# --------------------------------------------------------------------------- training
def train_steps(
    loss_fn: Callable,
    params: PyTree,
    optimizer,
    sample_batch: Callable[[int], PyTree],
    *,
    steps: int,
    seed: int = 0,
    max_seconds: Optional[float] = None,
    eval_fn: Optional[Callable[[PyTree], dict]] = None,
    eval_every: int = 0,
    monitor: Optional[str] = None,
    mode: str = "min",
    until: Optional[Callable[[dict], bool]] = None,
    progress: bool = True,
    desc: str = "train",
    bar=None,
    train_step: Optional[Callable] = None,
) -> tuple:
    """Step-budgeted training with a batch sampler (for data that is not a fixed epoch).

    Built on ``lstm_jax.train.make_train_step`` (jitted here, at the outermost level).

    Args:
      loss_fn: ``loss_fn(params, batch, rng) -> (loss, metrics)`` as for ``lstm_jax.train``.
      sample_batch: ``step -> batch`` (host-side; e.g. random crops of a long text).
      steps: number of optimiser steps; ``max_seconds`` stops earlier on a wall-clock budget
        (counted from the end of the first step, so compilation is not part of it).
      eval_fn: ``params -> dict of metrics`` run every ``eval_every`` steps and at the end;
        with ``monitor`` (a key of that dict) the best params seen are returned.
      until: ``record -> bool`` checked after each evaluation; True stops training (e.g.
        "task solved"), so a fixed step budget is a maximum.
      bar: an existing tqdm bar to advance (one bar across several runs); else a new one.
      train_step: a custom ``(state, batch) -> (state, metrics)`` (e.g. ``lstm_jax.train.
        make_tbptt_train_step``) instead of ``make_train_step(loss_fn, optimizer)``; a "step"
        is then one call of it.
    Returns:
      ``(params, history)``: history is a list of dicts with ``step``, ``train_loss`` and
      the eval metrics; ``params`` the best by ``monitor`` or the last.
    """
    from lstm_jax import train as train_lib  # lazy: keeps datasets/baselines usable alone

    tqdm = _tqdm()
    state = train_lib.init_train_state(params, optimizer, jax.random.key(seed))
    step_fn = jax.jit(train_step or train_lib.make_train_step(loss_fn, optimizer))
    history, best, best_params = [], None, params
    losses = []
    start = time.perf_counter()
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    else:
        bar.set_description(desc, refresh=False)

    def evaluate(step):
        nonlocal best, best_params
        record = {"step": step, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        losses.clear()
        if eval_fn is not None:
            record.update({k: float(v) for k, v in eval_fn(state.params).items()})
        history.append(record)
        if monitor is not None:
            value = record[monitor]
            better = best is None or (value < best if mode == "min" else value > best)
            if better and math.isfinite(value):
                best, best_params = value, state.params
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=False)
        return until is not None and until(record)

    done = 0
    for step in range(steps):
        state, metrics = step_fn(state, sample_batch(step))
        done = step + 1
        if step == 0:  # the wall-clock budget starts after the first (compiling) step
            jax.block_until_ready(state)
            start = time.perf_counter()
        if done % 10 == 0 or done == steps:
            loss = float(metrics["loss"]) if "loss" in metrics else float("nan")
            if not math.isfinite(loss):
                if own_bar:
                    bar.close()
                raise FloatingPointError(f"expected a finite training loss, got {loss} at step {done}")
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)
        if eval_every and done % eval_every == 0 and done < steps:
            if evaluate(done):
                break
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    if not history or history[-1]["step"] != done:
        evaluate(done)
    if own_bar:
        bar.close()
    else:
        bar.update(steps - done)  # a shared bar counts the skipped budget as done
    return (best_params if monitor is not None else state.params), history


def train_generated(
    loss_fn: Callable,
    params: PyTree,
    optimizer,
    sample_fn: Callable[[PRNGKey], PyTree],
    *,
    steps: int,
    key: PRNGKey,
    chunk: int = 100,
    eval_fn: Optional[Callable[[PyTree], dict]] = None,
    until: Optional[Callable[[dict], bool]] = None,
    progress: bool = True,
    desc: str = "train",
    bar=None,
) -> tuple:
    """Training on data generated on the fly: ``chunk`` steps at a time in one jitted ``lax.scan``.

    ``sample_fn(key) -> batch`` must be traceable (e.g. ``partial(datasets.adding_problem,
    batch_size=64, length=100)``); step ``s`` uses ``fold_in(key, s)``, so results do not
    depend on ``chunk``. After every chunk ``eval_fn(params)`` runs (jit it yourself) and
    ``until(record)`` may stop training (e.g. "solved").

    Returns:
      ``(params, history)`` with history records ``{"step", "train_loss", **eval}``.
    """
    from lstm_jax import train as train_lib

    if steps < 1 or chunk < 1:
        raise ValueError(f"expected steps >= 1 and chunk >= 1, got steps={steps}, chunk={chunk}")
    step_fn = train_lib.make_train_step(loss_fn, optimizer)
    data_key, rng_key = jax.random.split(key)

    @partial(jax.jit, static_argnums=2)
    def run_chunk(state, start, n):
        def body(state, s):
            return step_fn(state, sample_fn(jax.random.fold_in(data_key, s)))

        state, metrics = jax.lax.scan(body, state, start + jnp.arange(n))
        return state, jnp.mean(metrics["loss"])

    state = train_lib.init_train_state(params, optimizer, rng_key)
    own_bar = bar is None
    if own_bar:
        bar = _tqdm()(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    else:
        bar.set_description(desc, refresh=False)
    history, done = [], 0
    while done < steps:
        n = min(chunk, steps - done)
        state, loss = run_chunk(state, done, n)
        done += n
        loss = float(loss)
        if not math.isfinite(loss):
            raise FloatingPointError(f"expected a finite training loss, got {loss} before step {done}")
        record = {"step": done, "train_loss": loss}
        if eval_fn is not None:
            record.update({k: float(v) for k, v in eval_fn(state.params).items()})
        history.append(record)
        bar.update(n)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=False)
        if until is not None and until(record):
            break
    if own_bar:
        bar.close()
    else:
        bar.update(steps - done)
    return state.params, history


def predict_batched(fn: Callable, params: PyTree, data: PyTree, *, batch_size: int = 256) -> np.ndarray:
    """Apply ``fn(params, batch) -> [b, ...]`` to ``data`` (pytree, leading axis N) in batches.

    Every batch, the last one and a data set smaller than ``batch_size`` included, is padded to
    ``batch_size`` rows (by repeating the last row), so a jitted ``fn`` compiles once for all
    data sets. Returns a numpy array ``[N, ...]``.
    """
    leaves = jax.tree_util.tree_leaves(data)
    n = len(leaves[0])
    outs = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        idx = np.minimum(idx, n - 1)
        batch = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], data)
        outs.append(np.asarray(fn(params, batch))[: min(batch_size, n - start)])
    return np.concatenate(outs, axis=0)


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm


def progress_bar(iterable=None, *, total: Optional[int] = None, desc: str = "", disable: bool = False):
    """A tqdm progress bar (``tqdm.auto``) on stderr; pass it as ``bar=`` to share one bar across runs."""
    return _tqdm()(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True)


# --------------------------------------------------------------------------- results
class Timer:
    """Wall-clock seconds since construction: ``Timer()()``."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


class Results:
    """Collects result rows of one run and writes ``metrics.json``.

    >>> res = Results("weather_forecast", {"cell": "lstm"})
    >>> res.add("seattle", "lstm", "rmse", "test", 2.6)
    >>> res.add("seattle", "persistence", "rmse", "test", 2.9)
    >>> path = res.write("results/weather_forecast")
    """

    def __init__(self, task: str, config: dict, *, command: Optional[str] = None):
        self.task = task
        self.config = dict(config)
        self.command = command or " ".join(["python", f"experiments/{task}.py"] + sys.argv[1:])
        self.rows: list = []
        self.timer = Timer()
        self.extra: dict = {}

    def add(self, dataset: str, model: str, metric: str, split: str, value: float, **extra) -> None:
        """One row: ``model`` is a cell name or a baseline's name; ``split`` ``val`` or ``test``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"expected split 'train', 'val' or 'test', got {split!r}")
        row = {"task": self.task, "dataset": dataset, "model": model, "metric": metric, "split": split,
               "value": float(value)}
        row.update(extra)
        self.rows.append(row)

    def value(self, model: str, metric: str, split: str = "test", **match) -> float:
        """The value of the first row matching ``model``, ``metric``, ``split`` (and extra fields)."""
        for row in self.rows:
            if (row["model"], row["metric"], row["split"]) == (model, metric, split) and all(
                row.get(k) == v for k, v in match.items()
            ):
                return row["value"]
        raise KeyError(f"no row for model={model!r} metric={metric!r} split={split!r} {match}")

    def as_dict(self) -> dict:
        return _jsonable({"task": self.task, "command": self.command, "config": self.config,
                          "wall_time_s": round(self.timer(), 2), "results": self.rows, **self.extra})

    def write(self, out_dir) -> Path:
        """Write ``<out_dir>/metrics.json`` and return its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.json"
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path

    def table(self, split: str = "test") -> str:
        """A short text table of the rows of ``split`` (model x metric per dataset)."""
        rows = [r for r in self.rows if r["split"] == split]
        if not rows:
            return "(no results)"
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        keys = list(dict.fromkeys((r["dataset"], r["model"], r.get("seq_len")) for r in rows))
        header = ["dataset", "model"] + (["T"] if any(k[2] is not None for k in keys) else []) + metrics
        lines = [header]
        for ds, model, t in keys:
            cells = [ds, model] + ([str(t)] if len(header) > 2 + len(metrics) else [])
            for m in metrics:
                vals = [r["value"] for r in rows if (r["dataset"], r["model"], r.get("seq_len"), r["metric"]) == (ds, model, t, m)]
                cells.append(f"{vals[0]:.4g}" if vals else "-")
            lines.append(cells)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        fmt = lambda line: "  ".join(str(c).ljust(w) for c, w in zip(line, widths))  # noqa: E731
        return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines[1:]])


def load_metrics(path) -> dict:
    """Read a ``metrics.json`` and check its shape (``results`` rows with the shared keys)."""
    data = json.loads(Path(path).read_text())
    for key in ("config", "wall_time_s", "results"):
        if key not in data:
            raise ValueError(f"expected key {key!r} in {path}, got keys {sorted(data)}")
    for row in data["results"]:
        missing = {"task", "dataset", "model", "metric", "split", "value"} - set(row)
        if missing:
            raise ValueError(f"expected result rows with task/dataset/model/metric/split/value in {path}, got one missing {sorted(missing)}")
    return data


def results_markdown(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """A markdown table of dict rows with the given columns (missing values shown as ``-``)."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files
def save_checkpoint(out_dir, params: PyTree, *, step: int = 0, meta: Optional[dict] = None) -> Path:
    """Save ``params`` with ``lstm_jax.checkpoint`` under ``<out_dir>/checkpoint`` (replacing a
    checkpoint of an earlier run there) and return that folder; ``checkpoint.restore(folder,
    like)`` reads it back."""
    import shutil

    from lstm_jax import checkpoint

    folder = Path(out_dir).resolve() / "checkpoint"
    if folder.exists():
        shutil.rmtree(folder)
    checkpoint.save(folder, step, params, meta=_jsonable(meta or {}), keep=1)
    return folder


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (scripts run headless)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Save a figure as PNG (tight layout, 120 dpi) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


# --------------------------------------------------------------------------- ensembles
def init_ensemble(init_fn: Callable[[PRNGKey], PyTree], key: PRNGKey, size: int) -> PyTree:
    """``size`` independently initialised members stacked on a leading axis (``jax.vmap`` of ``init_fn``)."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"expected a positive ensemble size, got {size!r}")
    return jax.jit(jax.vmap(init_fn))(jax.random.split(key, size))


def ensemble_apply(apply_fn: Callable, params: PyTree, *args, rng: Optional[PRNGKey] = None) -> Array:
    """Run every member: ``apply_fn(member_params, *args, rng) -> [b, ...]`` -> ``[E, b, ...]``.

    Members get independent dropout keys (``rng=None``: deterministic for all).
    """
    size = jax.tree_util.tree_leaves(params)[0].shape[0]
    if rng is None:
        return jax.vmap(lambda p: apply_fn(p, *args, None))(params)
    return jax.vmap(lambda p, k: apply_fn(p, *args, k))(params, jax.random.split(rng, size))


def make_ensemble_regression_loss(apply_fn: Callable, *, bagging: bool = False) -> Callable:
    """``loss_fn(params [E, ...], batch {"x", "y": [b, k]}, rng)`` for ``lstm_jax.train.fit``.

    The loss is the mean of the members' MSEs, so every member gets its own gradient (Adam
    is per-parameter, so the members train as if alone, on the same batches). With
    ``bagging`` each member weights each training example by its own Poisson(1) draw (online
    bagging, Oza & Russell 2001), so members see different resamples of the data. Metrics:
    ``ens_mse`` (MSE of the members' mean prediction) and ``member_mse``.
    """

    def loss_fn(params, batch, rng):
        if rng is not None:
            rng, bag_key = jax.random.split(rng)
        preds = ensemble_apply(apply_fn, params, batch["x"], rng=rng)  # [E, b, k]
        sq = jnp.square(preds - batch["y"][None])
        sq = sq.reshape(sq.shape[0], sq.shape[1], -1).mean(-1)  # [E, b]
        if bagging and rng is not None:
            w = jax.random.poisson(bag_key, 1.0, sq.shape).astype(sq.dtype)
            member = jnp.sum(w * sq, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
        else:
            member = sq.mean(1)
        ens = jnp.mean(jnp.square(preds.mean(0) - batch["y"]))
        return member.mean(), {"ens_mse": ens, "member_mse": sq.mean()}

    return loss_fn


# --------------------------------------------------------------------------- daily forecasting
class ForecastData(NamedTuple):
    """Windows of a ``DailyTable`` for next-day forecasting, split chronologically.

    ``train``/``val``/``test`` are ``{"x": [s, w, f] scaled, "y": [s, 1] scaled}``; ``raw_*``
    the same windows in original units (for baselines), ``dates_*`` the target days.
    """

    train: dict
    val: dict
    test: dict
    raw: dict  # split -> {"x": [s, w, f] original units, "y": [s]}
    dates: dict  # split -> [s] datetime64[D] of the target day
    feature_names: tuple
    y_mean: float
    y_std: float


def day_of_year_features(dates: np.ndarray) -> np.ndarray:
    """``[n]`` days -> ``[n, 2]`` (sin, cos) of the annual cycle."""
    from lstm_jax.baselines import day_of_year

    angle = 2.0 * np.pi * day_of_year(dates) / 365.25
    return np.stack([np.sin(angle), np.cos(angle)], axis=1)


def forecast_data(table, *, window: int, test_days: int, val_days: int, season_features: bool = True) -> ForecastData:
    """Chronological next-day windows of a ``lstm_jax.datasets.DailyTable``.

    The last ``test_days`` target days are the test split, the ``val_days`` before them the
    validation split, the rest training. Features: every column of the table (target first)
    plus (sin, cos) of the day of year; scaled with training-rows statistics only. Windows
    touching a day that was missing in the source (``table.observed`` False) are dropped.
    """
    from lstm_jax import data as data_lib

    values = np.asarray(table.values, np.float64)
    names = tuple(table.columns)
    if season_features:
        values = np.concatenate([values, day_of_year_features(table.dates)], axis=1)
        names = names + ("doy_sin", "doy_cos")
    n = len(values)
    t_idx = table.target_index
    if window < 1 or window + 1 + 2 > n:
        raise DatasetError(f"expected 1 <= window < {n - 2} rows of data, got window={window}")
    train_end = n - test_days - val_days
    if test_days < 1 or val_days < 1 or train_end < window + 30:
        raise DatasetError(
            f"expected at least {window + 30} training days before {val_days} val + {test_days} test days, got {n} days"
        )
    scaler = data_lib.fit_scaler(values[:train_end])
    z = data_lib.scale(scaler, values)
    x, y = data_lib.make_windows(z, window=window, target_cols=[t_idx])
    x_raw, y_raw = data_lib.make_windows(values, window=window, target_cols=[t_idx])
    target_row = np.arange(len(x)) + window
    obs = np.asarray(table.observed, bool)
    run = np.convolve((~obs).astype(np.int64), np.ones(window + 1, np.int64), mode="full")[: n]
    ok = run[target_row] == 0  # no unobserved day among rows target-window .. target
    bounds = {"train": (0, train_end), "val": (train_end, n - test_days), "test": (n - test_days, n)}
    splits, raw, dates = {}, {}, {}
    for name, (lo, hi) in bounds.items():
        keep = ok & (target_row >= lo) & (target_row < hi)
        if not keep.any():
            raise DatasetError(f"expected at least one fully observed {name} window, got none")
        splits[name] = {"x": x[keep].astype(np.float32), "y": y[keep].astype(np.float32)}
        raw[name] = {"x": x_raw[keep], "y": y_raw[keep, 0]}
        dates[name] = np.asarray(table.dates)[target_row[keep]]
    return ForecastData(splits["train"], splits["val"], splits["test"], raw, dates, names,
                        float(scaler.mean[t_idx]), float(scaler.scale[t_idx]))


# --------------------------------------------------------------------------- classification
def stratified_split(labels: np.ndarray, fraction: float, *, seed: int = 0) -> tuple:
    """Split indices ``0..n-1`` into ``(keep, held_out)`` with ~``fraction`` of every class held out.

    Every class with at least two examples keeps at least one and holds out at least one.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"expected 0 < fraction < 1, got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.append(idx[:k])
    held = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held


def make_classifier_loss(
    *, readout: str = "final", dropout: float = 0.0, recurrent_dropout: float = 0.0, label_smoothing: float = 0.0
) -> Callable:
    """``loss_fn(params: SeqModel, batch, rng)`` for sequence classification with ``lstm_jax.train.fit``.

    ``batch``: ``{"x": [b, t, d] or [b, t] ids, "y": [b] int, "lengths": [b] (optional)}``.
    Loss: softmax cross-entropy (optionally label-smoothed); metric ``accuracy``. Dropout only
    when ``rng`` is given (training).
    """
    from lstm_jax import losses

    def loss_fn(params, batch, rng):
        logits = apply_seq_model(
            params, batch["x"], lengths=batch.get("lengths"), readout=readout,
            dropout=dropout, recurrent_dropout=recurrent_dropout, dropout_key=rng,
        )
        if label_smoothing and rng is not None:
            k = logits.shape[-1]
            target = jax.nn.one_hot(batch["y"], k) * (1.0 - label_smoothing) + label_smoothing / k
            loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
        else:
            loss = losses.classification_loss(logits, batch["y"])
        return loss, {"accuracy": losses.accuracy(logits, batch["y"])}

    return loss_fn


def predict_classes(params: SeqModel, data: dict, *, readout: str = "final", batch_size: int = 256) -> np.ndarray:
    """Arg-max class of every example of ``data`` (``{"x", "lengths"?}``) -> ``[N]`` ints (jitted, batched)."""
    fn = _predict_fn(readout)
    inputs = {k: v for k, v in data.items() if k in ("x", "lengths")}
    return predict_batched(fn, params, inputs, batch_size=batch_size)


_PREDICT_CACHE: dict = {}


def _predict_fn(readout: str) -> Callable:
    if readout not in _PREDICT_CACHE:
        _PREDICT_CACHE[readout] = jax.jit(
            lambda p, b: jnp.argmax(apply_seq_model(p, b["x"], lengths=b.get("lengths"), readout=readout), axis=-1)
        )
    return _PREDICT_CACHE[readout]


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(preds)), 1)
    return cm


# --------------------------------------------------------------------------- text
_TOKEN = None


def tokenize(text: str) -> list:
    """Lower-cased word tokens (letters, digits, apostrophes) and ``! ?`` as tokens; HTML tags dropped."""
    import re

    global _TOKEN
    if _TOKEN is None:
        _TOKEN = (re.compile(r"<[^>]+>"), re.compile(r"[a-z0-9']+|[!?]"))
    tags, words = _TOKEN
    return words.findall(tags.sub(" ", text.lower()))


class WordVocab(NamedTuple):
    """Word -> id table; id 0 is padding, id 1 unknown words."""

    words: tuple

    @property
    def index(self) -> dict:
        return {w: i for i, w in enumerate(self.words)}


def build_vocab(token_lists: Iterable[list], *, min_count: int = 2, max_size: Optional[int] = None) -> WordVocab:
    """Vocabulary of the words seen at least ``min_count`` times (most frequent first)."""
    from collections import Counter

    counts = Counter(tok for toks in token_lists for tok in toks)
    words = [w for w, c in counts.most_common(max_size) if c >= min_count]
    return WordVocab(("<pad>", "<unk>") + tuple(words))


def encode_texts(token_lists: Sequence[list], vocab: WordVocab, *, max_len: int) -> tuple:
    """Token lists -> ``(ids [n, max_len] int32, lengths [n] int32)``; longer texts keep their
    first ``max_len`` tokens, empty texts become one unknown token."""
    index = vocab.index
    ids = np.zeros((len(token_lists), max_len), np.int32)
    lengths = np.zeros(len(token_lists), np.int32)
    for i, toks in enumerate(token_lists):
        row = [index.get(t, 1) for t in toks[:max_len]] or [1]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


# --------------------------------------------------------------------------- cross-run tables
# task -> (primary metric, "min"|"max" is better); long_range picks its metric per data set
PRIMARY_METRIC = {
    "weather_forecast": ("rmse", "min"),
    "speaker_id": ("accuracy", "max"),
    "handwriting": ("accuracy", "max"),
    "char_lm": ("bits_per_char", "min"),
    "sentiment": ("accuracy", "max"),
    "long_range": (None, None),
}
_LONG_RANGE_METRIC = {"adding": ("mse", "min"), "temporal_order": ("accuracy", "max")}


def summarize_runs(runs: Sequence[dict], *, cells: Sequence[str] = CELLS) -> list:
    """One table row per (task, data set[, T]) from several ``metrics.json`` dicts.

    Each row: ``task, dataset, metric, baseline`` (the best baseline, "name value"), one value
    per cell found (test split), ``wall_time_s`` per cell and the ``command`` of each cell's run.
    Runs of the same task and data set with different cells are merged into one row. A
    multi-seed run (``config["seeds"] > 1``) contributes its summary rows (the median over
    seeds, ``{cell}_solved_runs = (solved, seeds)``), not its per-seed rows.
    """
    table: dict = {}
    for run in runs:
        task = run.get("task") or (run["results"][0]["task"] if run["results"] else None)
        multi_seed = (run.get("config") or {}).get("seeds", 1) > 1
        for row in run["results"]:
            if row["split"] != "test" or (multi_seed and "seed" in row):
                continue
            metric, mode = PRIMARY_METRIC.get(task, (None, None))
            if task == "long_range":
                metric, mode = _LONG_RANGE_METRIC.get(row["dataset"], (row["metric"], "min"))
            if metric is None or row["metric"] != metric:
                continue
            key = (task, row["dataset"], row.get("seq_len"))
            entry = table.setdefault(key, {"task": task, "dataset": row["dataset"], "metric": metric,
                                           "T": row.get("seq_len"), "_mode": mode, "_baselines": {}})
            if row["model"] in cells:
                entry[row["model"]] = row["value"]
                entry[f"{row['model']}_wall_time_s"] = run.get("wall_time_s")
                entry[f"{row['model']}_command"] = run.get("command")
                if "solved" in row:
                    entry[f"{row['model']}_solved"] = row["solved"]
                if "solved_runs" in row:
                    entry[f"{row['model']}_solved_runs"] = (row["solved_runs"], row["seeds"])
            else:
                entry["_baselines"][row["model"]] = row["value"]
    rows = []
    for entry in table.values():
        base = entry.pop("_baselines")
        mode = entry.pop("_mode")
        if base:
            name = (min if mode == "min" else max)(base, key=base.get)
            entry["baseline"] = f"{name} {base[name]:.4g}"
        rows.append(entry)
    return rows


def cells_markdown(rows: Sequence[dict], *, cells: Sequence[str] = ("lstm", "gru")) -> str:
    """Markdown table of ``summarize_runs`` rows: task, data, metric, best baseline, each cell, wall time, command."""
    def cell_value(row, c):
        v = row.get(c)
        if v is None:
            return "-"
        mark = " (solved)" if row.get(f"{c}_solved") else ""
        if row.get(f"{c}_solved_runs") is not None:
            solved, seeds = row[f"{c}_solved_runs"]
            mark = f" (median of {seeds}; solved {solved}/{seeds})"
        return f"{v:.4g}{mark}"

    header = ["task", "data", "metric", "best baseline"] + [c.upper() for c in cells] + ["wall time (s)", "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        data = row["dataset"] + (f" T={row['T']}" if row.get("T") is not None else "")
        times = " / ".join(f"{row[f'{c}_wall_time_s']:.0f}" for c in cells if row.get(f"{c}_wall_time_s") is not None)
        commands = "<br>".join(f"`{row[f'{c}_command']}`" for c in cells if row.get(f"{c}_command"))
        lines.append("| " + " | ".join([row["task"], data, row["metric"], row.get("baseline", "-")]
                                      + [cell_value(row, c) for c in cells] + [times or "-", commands or "-"]) + " |")
    return "\n".join(lines)


def ppmi_svd_vectors(token_lists: Sequence[list], vocab: WordVocab, dim: int, *, window: int = 4,
                     seed: int = 0) -> np.ndarray:
    """Word vectors from the texts alone: truncated SVD of the positive PMI matrix of word
    co-occurrences within ``window`` tokens (Levy & Goldberg 2014), scaled to unit RMS.

    Unsupervised (labels are not used), so it is a fair initialisation for an embedding
    trained on the same texts. Returns ``[len(vocab.words), dim]`` float32; the padding row is 0.
    """
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    index = vocab.index
    v = len(vocab.words)
    rows, cols = [], []
    for toks in token_lists:
        ids = np.array([index.get(t, 1) for t in toks], np.int64)
        for k in range(1, window + 1):
            if len(ids) > k:
                rows.append(ids[:-k])
                cols.append(ids[k:])
    if not rows:
        raise ValueError("expected texts with at least two tokens, got none")
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(v, v)).tocsr()
    counts = counts + counts.T
    total = counts.sum()
    row_sum = np.asarray(counts.sum(1)).ravel()
    col_sum = row_sum ** 0.75  # context distribution smoothing
    col_sum = col_sum / col_sum.sum() * total
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * col_sum[coo.col] + 1e-12))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(v, v))
    k = min(dim, v - 1)
    svd = TruncatedSVD(n_components=k, random_state=seed)
    vectors = svd.fit_transform(ppmi)
    vectors = vectors / (np.sqrt(np.mean(vectors**2)) + 1e-12)
    out = np.zeros((v, dim), np.float32)
    out[:, :k] = vectors
    out[0] = 0.0
    return out


def forecast_baselines(data: ForecastData) -> dict:
    """Test-span predictions (original units) of persistence, day-of-year climatology and linear
    autoregression on the same windows; the latter two are fitted on train + val."""
    from lstm_jax import baselines as B

    raw = data.raw
    fit_rows = {k: np.concatenate([raw["train"][k], raw["val"][k]]) for k in ("x", "y")}
    fit_dates = np.concatenate([data.dates["train"], data.dates["val"]])
    return {
        "persistence": B.persistence(raw["test"]["x"], 0),
        "climatology": B.predict_climatology(B.fit_climatology(fit_dates, fit_rows["y"]), data.dates["test"]),
        "linear_ar": B.predict_linear_ar(B.fit_linear_ar(fit_rows["x"], fit_rows["y"]), raw["test"]["x"]),
    }


def forecast_member_apply(params: SeqModel, x: Array, rng: Optional[PRNGKey], *, dropout: float = 0.0,
                          residual: bool = False) -> Array:
    """One forecaster: ``x [b, w, f]`` (scaled, target in column 0) -> ``[b, 1]`` scaled target.

    Dropout (variational on ``h`` and on the head input) only with ``rng``; with ``residual``
    the network predicts the change from the last observed value.
    """
    out = apply_seq_model(params, x, dropout=dropout, recurrent_dropout=dropout, dropout_key=rng)
    return out + x[:, -1, :1] if residual else out


class ForecastEnsemble(NamedTuple):
    """Result of ``train_forecast_ensemble``."""

    params: PyTree  # members stacked on a leading axis (after the refit when asked for)
    best_params: PyTree  # members at the best validation epoch
    best_epoch: int
    history: list
    steps: int  # optimiser steps of the validated run
    apply: Callable  # member apply function (for predict_forecast_ensemble)


def train_forecast_ensemble(
    data: ForecastData, *, cell: str = "lstm", hidden: int = 64, ensemble: int = 8, epochs: int = 60,
    batch_size: int = 32, lr: float = 3e-3, dropout: float = 0.3, weight_decay: float = 1e-4, seed: int = 0,
    residual: bool = False, bagging: bool = False, refit: bool = True, progress: bool = True, desc: str = "",
) -> ForecastEnsemble:
    """Train ``ensemble`` forecasters together (``jax.vmap`` over members inside one loss) with
    ``lstm_jax.train.fit``: Adam(W) with warmup + cosine decay, early selection on the validation
    MSE of the members' mean; then, with ``refit``, the same recipe again on train + val for the
    selected number of epochs (the returned ``params``)."""
    from lstm_jax import train as train_lib

    d_in = data.train["x"].shape[-1]
    init_fn = partial(init_seq_model, cell=cell, input_size=d_in, hidden_size=hidden, output_size=1)
    params = init_ensemble(init_fn, jax.random.key(seed), ensemble)
    apply = partial(forecast_member_apply, dropout=dropout, residual=residual)
    loss_fn = make_ensemble_regression_loss(apply, bagging=bagging)

    def optimizer(n_rows, n_epochs):
        steps = n_epochs * (n_rows // batch_size)
        return train_lib.make_optimizer(lr, clip_norm=None, warmup_steps=min(100, steps // 10), total_steps=steps,
                                        weight_decay=weight_decay), steps

    opt, steps = optimizer(len(data.train["x"]), epochs)
    result = train_lib.fit(loss_fn, params, opt, data.train, val_data=data.val, epochs=epochs, batch_size=batch_size,
                           seed=seed, monitor="val_ens_mse", compiled_epoch=True, progress=progress, desc=desc)
    best_epoch = max(int(result.best_epoch or epochs), 1)
    final = result.params
    if refit:
        both = {k: np.concatenate([data.train[k], data.val[k]]) for k in ("x", "y")}
        opt, _ = optimizer(len(both["x"]), best_epoch)
        final = train_lib.fit(loss_fn, params, opt, both, epochs=best_epoch, batch_size=batch_size, seed=seed,
                              compiled_epoch=True, monitor="train_loss", progress=progress,
                              desc=f"{desc} refit train+val x{best_epoch}").state.params
    return ForecastEnsemble(final, result.params, best_epoch, result.history, int(result.state.step), apply)


def predict_forecast_ensemble(model: ForecastEnsemble, params: PyTree, x: np.ndarray, data: ForecastData) -> np.ndarray:
    """Every member's prediction in original units: ``x [s, w, f]`` -> ``[E, s]`` (batched, jitted once)."""
    fn = _ENSEMBLE_PREDICT.get(model.apply)
    if fn is None:
        fn = jax.jit(lambda p, b: jnp.moveaxis(ensemble_apply(model.apply, p, b["x"])[..., 0], 0, 1))
        _ENSEMBLE_PREDICT.clear()
        _ENSEMBLE_PREDICT[model.apply] = fn
    scaled = predict_batched(fn, params, {"x": x}, batch_size=512).T
    return scaled * data.y_std + data.y_mean


_ENSEMBLE_PREDICT: dict = {}


# --------------------------------------------------------------------------- character language models
class CharVocab(NamedTuple):
    """Characters of a training text; id 0 stands for characters never seen in training."""

    chars: tuple

    @staticmethod
    def of(text: str) -> "CharVocab":
        return CharVocab(("\x00",) + tuple(sorted(set(text) - {"\x00"})))

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        return np.array([index.get(c, 0) for c in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def lm_zero_state(params: SeqModel, batch_size: int) -> PyTree:
    """Zero recurrent state of a batch (leaves ``[b, L, D, d]``)."""
    from lstm_jax.layers import zero_state

    return jax.tree_util.tree_map(lambda s: jnp.zeros((batch_size,) + s.shape, s.dtype), zero_state(params.rnn))


def lm_chunk_loss(params: SeqModel, carry, piece: dict, rng, *, impl: str = "scan", dropout: float = 0.0) -> tuple:
    """Truncated-BPTT chunk loss: ``piece = {"x": [b, c] ids, "y": [b, c] next ids}`` from ``carry``.

    ``dropout`` (between the layers and on the head's input) applies only when ``rng`` is given.
    Returns ``(mean nats, (carry, {"bits_per_char": ...}))`` as ``lstm_jax.train.make_tbptt_train_step`` expects.
    """
    from lstm_jax import losses

    logits, carry = apply_seq_model(params, piece["x"], readout="sequence", initial_state=carry, return_state=True,
                                    impl=impl, dropout=dropout, dropout_key=rng if dropout > 0.0 else None)
    loss = losses.softmax_cross_entropy(logits, piece["y"])
    return loss, (carry, {"bits_per_char": losses.bits_per_char(loss)})


def make_lm_train_step(optimizer, *, chunk: int, impl: str = "scan", dropout: float = 0.0) -> Callable:
    """TBPTT step over batches ``{"x", "y": [b, k*chunk]}``: ``k`` optimiser updates per call, the
    state carried from chunk to chunk (``lstm_jax.train.make_tbptt_train_step``); ``impl`` and
    ``dropout`` as for ``lm_chunk_loss``."""
    from lstm_jax import train as train_lib

    return train_lib.make_tbptt_train_step(
        partial(lm_chunk_loss, impl=impl, dropout=dropout), optimizer, chunk=chunk,
        init_carry=lambda p, b: lm_zero_state(p, b["x"].shape[0]))


def lm_random_windows(ids: np.ndarray, batch_size: int, length: int, rng: np.random.Generator) -> dict:
    """``batch_size`` random windows of ``length + 1`` ids -> ``{"x": [b, length], "y": [b, length]}`` (next ids)."""
    starts = rng.integers(0, len(ids) - length - 1, batch_size)
    window = ids[starts[:, None] + np.arange(length + 1)[None, :]]
    return {"x": window[:, :-1], "y": window[:, 1:]}


_LM_CHUNK: dict = {}


def lm_bits_per_char(params: SeqModel, ids: np.ndarray, *, streams: int = 32, chunk: int = 200) -> float:
    """Bits per character of ``ids`` read as ``streams`` parallel streams, state carried across
    chunks, so every character after the first of its stream is scored with its whole left
    context in the stream. (The last ``< streams * chunk`` characters are not scored.)"""
    n = (len(ids) - 1) // streams
    n_chunks = n // chunk
    if n_chunks < 1:
        raise ValueError(f"expected at least {streams * chunk + 1} ids, got {len(ids)}")
    n = n_chunks * chunk
    ids = np.asarray(ids)
    inputs = np.stack([ids[i * n : (i + 1) * n] for i in range(streams)])
    targets = np.stack([ids[i * n + 1 : (i + 1) * n + 1] for i in range(streams)])
    if "fn" not in _LM_CHUNK:
        _LM_CHUNK["fn"] = jax.jit(lambda p, c, x, y: lm_chunk_loss(p, c, {"x": x, "y": y}, None))
    run = _LM_CHUNK["fn"]
    carry, total = lm_zero_state(params, streams), 0.0
    for c in range(n_chunks):
        sl = slice(c * chunk, (c + 1) * chunk)
        loss, (carry, _) = run(params, carry, inputs[:, sl], targets[:, sl])
        total += float(loss)
    return total / n_chunks / math.log(2.0)


_SAMPLERS: dict = {}


def lm_sample(params: SeqModel, vocab: CharVocab, prompt: str, n_chars: int, temperature: float, key) -> str:
    """Read ``prompt``, then draw ``n_chars`` characters at ``temperature`` (one jitted ``lax.scan``)."""
    if n_chars not in _SAMPLERS:

        @jax.jit
        def run(params, ids, key, temperature):
            logits, state = apply_seq_model(params, ids, readout="sequence", return_state=True)

            def step(carry, k):
                last, state = carry
                nxt = jax.random.categorical(k, last / temperature)
                out, state = apply_seq_model(params, nxt[:, None], readout="sequence", initial_state=state,
                                             return_state=True)
                return (out[:, 0], state), nxt[0]

            _, chars = jax.lax.scan(step, (logits[:, -1], state), jax.random.split(key, n_chars))
            return chars

        _SAMPLERS[n_chars] = run
    ids = jnp.asarray(vocab.encode(prompt))[None]
    return prompt + vocab.decode(np.asarray(_SAMPLERS[n_chars](params, ids, key, jnp.float32(temperature))))


def train_classifier(
    train_set: dict, val_set: dict, *, cell: str, input_size: int, hidden: int, n_classes: int,
    epochs: int, batch_size: int = 32, lr: float = 2e-3, dropout: float = 0.0, recurrent_dropout: float = 0.0,
    readout: str = "final", bidirectional: bool = False, vocab_size: Optional[int] = None,
    embed_init: Optional[np.ndarray] = None, weight_decay: float = 0.0, monitor: str = "val_loss",
    seed: int = 0, progress: bool = True, desc: str = "",
):
    """Train a ``SeqModel`` classifier with ``lstm_jax.train.fit`` (compiled epochs, Adam with
    warmup + cosine decay, gradient clipping 1.0) and return the ``FitResult`` (best-on-``monitor`` params).

    ``train_set``/``val_set``: ``{"x": [N, t, d] floats or [N, t] ids, "y": [N], "lengths": [N]?}``.
    ``embed_init`` (``[vocab_size, input_size]``) replaces the random embedding.
    """
    from lstm_jax import train as train_lib

    init = partial(init_seq_model, cell=cell, input_size=input_size, hidden_size=hidden, output_size=n_classes,
                   bidirectional=bidirectional, vocab_size=vocab_size)
    params = jax.jit(init)(jax.random.key(seed))
    if embed_init is not None:
        params = params._replace(embed=jnp.asarray(embed_init, jnp.float32))
    loss_fn = make_classifier_loss(readout=readout, dropout=dropout, recurrent_dropout=recurrent_dropout)
    batch_size = min(batch_size, len(train_set["y"]))
    steps = epochs * (len(train_set["y"]) // batch_size)
    optimizer = train_lib.make_optimizer(lr, clip_norm=1.0, warmup_steps=min(100, steps // 10), total_steps=steps,
                                         weight_decay=weight_decay)
    mode = "max" if monitor.endswith("accuracy") else "min"
    return train_lib.fit(loss_fn, params, optimizer, train_set, val_data=val_set, epochs=epochs, batch_size=batch_size,
                         seed=seed, monitor=monitor, mode=mode, compiled_epoch=True, progress=progress, desc=desc)


def best_history_value(result, key: str) -> float:
    """``key`` (e.g. ``"val_accuracy"``) at the best epoch of a ``FitResult`` (last epoch if none)."""
    evaluated = [h for h in result.history if key in h]
    by_epoch = {h["epoch"]: h[key] for h in evaluated}
    return float(by_epoch.get(result.best_epoch, evaluated[-1][key]))
