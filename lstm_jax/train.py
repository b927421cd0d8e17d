"""Training with Optax: train/eval steps, a ``fit`` loop (per-step jit or whole compiled epochs),
validation, early stopping, checkpoints with exact resume, a non-finite guard, truncated BPTT,
data parallelism and vmapped ensembles.

The pieces are pure functions that the caller may jit; ``fit`` and ``make_train`` are the two
ready-made loops that jit them.

* ``loss_fn(params, batch, rng) -> (loss, metrics)`` is the user's model: ``batch`` is a pytree
  (usually a dict) of arrays with a leading batch axis, ``rng`` a fresh key per step (``None``
  during evaluation, meaning deterministic: no dropout), ``metrics`` a dict of scalars. A
  ``loss_fn`` returning only the loss is accepted too.
* ``TrainState(params, opt_state, step, rng)``: step ``s`` uses the key ``fold_in(rng, s)``,
  so resuming at step ``s`` reproduces the same randomness.
* Every training path draws epoch ``e``'s batches from
  ``data.epoch_permutation(data_key, e, N)`` (full batches only, the remainder of the
  permutation is skipped that epoch), with ``data_key, step_key = split(key(seed))``.

>>> def loss_fn(params, batch, rng):
...     ys, _ = lstm_jax.lstm(params["rnn"], batch["x"], dropout_key=rng, dropout=0.1)
...     pred = ys[:, -1] @ params["w"] + params["b"]
...     loss = lstm_jax.losses.last_step_mse(pred, batch["y"])
...     return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}
>>> opt = make_optimizer(1e-3, clip_norm=1.0, warmup_steps=100, total_steps=5000)
>>> result = fit(loss_fn, params, opt, train, val_data=val, epochs=20, batch_size=64,
...              patience=5, checkpoint_dir="ckpt", resume=True, history_path="history.jsonl")
>>> result.params            # best validation params; result.history: one dict per epoch
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from lstm_jax import checkpoint as ckpt
from lstm_jax import sharding as shd
from lstm_jax.data import _key_of, check_finite, data_size, epoch_permutation, num_batches, take, tbptt_chunks
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = [
    "TrainState",
    "NonFiniteError",
    "make_schedule",
    "make_optimizer",
    "init_train_state",
    "make_train_step",
    "make_eval_step",
    "evaluate_arrays",
    "evaluate",
    "run_epoch",
    "FitResult",
    "fit",
    "tbptt_value_and_grad",
    "make_tbptt_train_step",
    "TrainConfig",
    "TrainResult",
    "split_run_key",
    "make_train",
]

log = logging.getLogger("lstm_jax.train")


# --------------------------------------------------------------------------- state
class TrainState(NamedTuple):
    """Everything that changes during training (a pytree: jit, vmap and checkpoint it)."""

    params: PyTree
    opt_state: PyTree
    step: Array  # shape=[], int32: updates attempted so far
    rng: PRNGKey  # base key; step s uses jax.random.fold_in(rng, s)


class NonFiniteError(FloatingPointError):
    """A NaN/Inf loss or gradient; the update was not applied and training stopped."""


# --------------------------------------------------------------------------- optimizer
def make_schedule(
    learning_rate, *, warmup_steps: int = 0, total_steps: Optional[int] = None, end_fraction: float = 0.0
) -> Callable[[Array], Array]:
    """Learning rate per step: linear warmup from 0, then constant or cosine decay.

    ``lr(s) = learning_rate * min(1, s / warmup_steps)`` during warmup; with ``total_steps``
    it then follows ``end + (1 - end) * (1 + cos(pi * p)) / 2`` (``p`` the fraction of the
    decay phase done, ``end = end_fraction``) and stays at ``end_fraction * learning_rate``
    after ``total_steps``. ``learning_rate`` may be a traced array (vmapped ensembles).
    """
    if not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
        raise ValueError(f"expected warmup_steps to be a non-negative int, got {warmup_steps!r}")
    if total_steps is not None and (not isinstance(total_steps, (int, np.integer)) or total_steps <= warmup_steps):
        raise ValueError(f"expected total_steps > warmup_steps = {warmup_steps}, got {total_steps!r}")
    if not 0.0 <= end_fraction <= 1.0:
        raise ValueError(f"expected end_fraction in [0, 1], got {end_fraction}")
    if not isinstance(learning_rate, jax.core.Tracer) and np.ndim(learning_rate) == 0:
        if not float(learning_rate) > 0:
            raise ValueError(f"expected a positive learning_rate, got {learning_rate}")

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        factor = jnp.ones((), jnp.float32)
        if warmup_steps:
            factor = jnp.minimum(1.0, count / warmup_steps)
        if total_steps is not None:
            p = jnp.clip((count - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
            cosine = end_fraction + (1.0 - end_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
            factor = jnp.where(count < warmup_steps, factor, cosine)
        return learning_rate * factor

    return schedule


def make_optimizer(
    learning_rate=1e-3,
    *,
    clip_norm: Optional[float] = 1.0,
    warmup_steps: int = 0,
    total_steps: Optional[int] = None,
    end_fraction: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """Optax chain: global-norm clipping, then Adam/AdamW/SGD/RMSProp on a warmup(+cosine) schedule.

    Args:
      learning_rate: peak learning rate (a float, or a traced scalar inside ``make_train``).
      clip_norm: clip the global gradient norm to this (None or 0 disables clipping).
      warmup_steps, total_steps, end_fraction: see ``make_schedule`` (cosine decay only
        when ``total_steps`` is given).
      weight_decay: decoupled weight decay (AdamW) when > 0 with ``optimizer="adam"``.
      optimizer: ``"adam"``, ``"sgd"`` (with ``momentum``) or ``"rmsprop"``.
    """
    sched = make_schedule(learning_rate, warmup_steps=warmup_steps, total_steps=total_steps, end_fraction=end_fraction)
    if optimizer == "adam":
        if weight_decay:
            base = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
        else:
            base = optax.adam(sched, b1=b1, b2=b2, eps=eps)
    elif optimizer == "sgd":
        base = optax.sgd(sched, momentum=momentum or None)
    elif optimizer == "rmsprop":
        base = optax.rmsprop(sched, eps=eps)
    else:
        raise ValueError(f"expected optimizer in ('adam', 'sgd', 'rmsprop'), got {optimizer!r}")
    if weight_decay and optimizer != "adam":
        base = optax.chain(optax.add_decayed_weights(weight_decay), base)
    if clip_norm:
        if clip_norm < 0:
            raise ValueError(f"expected clip_norm >= 0 or None, got {clip_norm}")
        return optax.chain(optax.clip_by_global_norm(clip_norm), base)
    return base


def init_train_state(params: PyTree, optimizer: optax.GradientTransformation, key: Union[int, PRNGKey]) -> TrainState:
    """Fresh state: ``optimizer.init(params)``, step 0, and ``key`` (int seed or key) as base rng."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), _key_of(key))


# --------------------------------------------------------------------------- steps
def _loss_and_metrics(loss_fn: Callable) -> Callable:
    """Normalise ``loss_fn`` to return ``(loss, dict_of_scalars)`` and check it at trace time."""

    def wrapped(params, batch, rng):
        out = loss_fn(params, batch, rng)
        loss, metrics = (out if isinstance(out, tuple) and len(out) == 2 else (out, {}))
        if jnp.shape(loss) != ():
            raise ValueError(f"expected loss_fn to return a scalar loss, got shape {jnp.shape(loss)}")
        if not isinstance(metrics, dict):
            raise TypeError(f"expected loss_fn's metrics to be a dict of scalars, got {type(metrics).__name__}")
        for name, value in metrics.items():
            if jnp.shape(value) != ():
                raise ValueError(f"expected scalar metrics, got metrics[{name!r}] of shape {jnp.shape(value)}")
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items() if k != "loss"}
        return jnp.asarray(loss), metrics

    return wrapped


def _all_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred: Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _apply_gradients(optimizer, state: TrainState, loss, metrics, grads, guard: bool, new_step=None):
    finite = jnp.logical_and(jnp.isfinite(loss), _all_finite(grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if guard:
        params = _select(finite, params, state.params)
        opt_state = _select(finite, opt_state, state.opt_state)
    metrics = {**metrics, "loss": loss.astype(jnp.float32), "grad_norm": optax.tree.norm(grads), "finite": finite}
    step = state.step + 1 if new_step is None else new_step
    return TrainState(params, opt_state, step, state.rng), metrics


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, guard_nonfinite: bool = True):
    """Build ``train_step(state, batch) -> (state, metrics)`` (pure; jit it yourself).

    ``metrics`` holds the user's metrics plus ``loss``, ``grad_norm`` and ``finite`` (False
    when the loss or any gradient is NaN/Inf). With ``guard_nonfinite`` such an update is not
    applied (params and optimizer state are kept; the step counter still advances).
    """
    objective = _loss_and_metrics(loss_fn)
    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def train_step(state: TrainState, batch: PyTree):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = grad_fn(state.params, batch, rng)
        return _apply_gradients(optimizer, state, loss, metrics, grads, guard_nonfinite)

    return train_step


def make_eval_step(loss_fn: Callable):
    """Build ``eval_step(params, batch) -> metrics`` (``loss_fn`` gets ``rng=None``: deterministic)."""
    objective = _loss_and_metrics(loss_fn)

    def eval_step(params: PyTree, batch: PyTree):
        loss, metrics = objective(params, batch, None)
        return {**metrics, "loss": loss.astype(jnp.float32)}

    return eval_step


def evaluate_arrays(eval_step: Callable, params: PyTree, data: PyTree, batch_size: int, *, mesh=None) -> dict:
    """Mean metrics over all of ``data`` in order, batch by batch (traceable; one program).

    Full batches run under ``lax.map``, the remainder as one smaller batch; batch metrics are
    weighted by batch size. With ``mesh`` the full batches are split over its devices when
    ``batch_size`` divides evenly.
    """
    n = data_size(data, "eval data")
    bs = min(int(batch_size), n)
    nb, rem = divmod(n, bs)
    totals = None
    if nb:
        full = jax.tree_util.tree_map(lambda a: a[: nb * bs].reshape((nb, bs) + a.shape[1:]), data)
        if mesh is not None and bs % mesh.devices.size == 0:
            full = shd.constrain_batch(full, mesh, axis=1)
        stacked = jax.lax.map(lambda b: eval_step(params, b), full)
        totals = {k: jnp.sum(v) * bs for k, v in stacked.items()}
    if rem:
        last = eval_step(params, jax.tree_util.tree_map(lambda a: a[nb * bs :], data))
        last = {k: v * rem for k, v in last.items()}
        totals = last if totals is None else {k: totals[k] + last[k] for k in totals}
    return {k: v / n for k, v in totals.items()}


_EVAL_CACHE: dict = {}


def evaluate(loss_fn: Callable, params: PyTree, data: PyTree, *, batch_size: int = 256) -> dict:
    """Mean of ``loss_fn``'s loss and metrics over ``data`` (jitted once per ``loss_fn`` and shape).

    Returns:
      dict of Python floats, e.g. ``{"loss": 0.12, "mae": 0.3}``.
    """
    data = _canonical(data)
    key = (loss_fn, int(batch_size))
    fn = _EVAL_CACHE.get(key)
    if fn is None:
        eval_step = make_eval_step(loss_fn)
        fn = jax.jit(lambda p, d: evaluate_arrays(eval_step, p, d, batch_size))
        if len(_EVAL_CACHE) > 32:
            _EVAL_CACHE.clear()
        _EVAL_CACHE[key] = fn
    return {k: float(v) for k, v in jax.device_get(fn(params, data)).items()}


def run_epoch(train_step: Callable, state: TrainState, data: PyTree, data_key: PRNGKey, epoch, batch_size: int, *, mesh=None):
    """One epoch in one ``lax.scan`` (traceable): the batches of ``epoch_permutation(data_key,
    epoch, N)``, full batches only.

    Returns:
      ``(state, metrics)`` with every metric stacked over the ``N // batch_size`` steps.
    """
    n = data_size(data, "train data")
    nb = num_batches(n, batch_size, drop_last=True)
    order = epoch_permutation(data_key, epoch, n)[: nb * batch_size].reshape(nb, batch_size)

    def body(state, idx):
        batch = take(data, idx)
        if mesh is not None:
            batch = shd.constrain_batch(batch, mesh)
        return train_step(state, batch)

    return jax.lax.scan(body, state, order)


# --------------------------------------------------------------------------- fit
_jit_permutation = jax.jit(epoch_permutation, static_argnums=2)
_PROGRAMS: "OrderedDict[tuple, tuple]" = OrderedDict()


def _fit_programs(loss_fn, optimizer, train_step, mesh, batch_size: int, eval_batch_size: int):
    """Jitted (step, compiled epoch, evaluation) for ``fit``, cached so that repeated ``fit``
    calls with the same ``loss_fn``/``optimizer``/``train_step`` objects reuse compilations
    (resuming in the same process, sweeps, tests)."""
    key = (loss_fn, optimizer, train_step, mesh, int(batch_size), int(eval_batch_size))
    try:
        hit = _PROGRAMS.get(key)
    except TypeError:  # unhashable user objects: no caching
        key, hit = None, None
    if hit is not None:
        _PROGRAMS.move_to_end(key)
        return hit
    repl = shd.replicated(mesh)
    step_fn = train_step or make_train_step(loss_fn, optimizer)
    eval_step = make_eval_step(loss_fn)
    jstep = jax.jit(step_fn, out_shardings=repl)
    epoch_fn = jax.jit(
        lambda s, d, k, e: run_epoch(step_fn, s, d, k, e, batch_size, mesh=mesh), out_shardings=repl
    )
    eval_fn = jax.jit(lambda p, d: evaluate_arrays(eval_step, p, d, eval_batch_size, mesh=mesh), out_shardings=repl)
    programs = (jstep, epoch_fn, eval_fn)
    if key is not None:
        _PROGRAMS[key] = programs
        while len(_PROGRAMS) > 16:
            _PROGRAMS.popitem(last=False)
    return programs


class FitResult(NamedTuple):
    """What ``fit`` returns."""

    params: PyTree  # best params by the monitored metric when monitoring was active, else final
    state: TrainState  # final training state (params at the last step)
    history: list  # one dict per epoch: epoch, step, train_*, val_*, nonfinite_steps, time_s
    best_epoch: Optional[int]  # 1-based epoch of best_metric (None when not monitoring)
    best_metric: Optional[float]
    interrupted: bool = False  # Ctrl-C: checkpoint saved (if checkpoint_dir), resume=True continues
    stopped_early: bool = False


def _canonical(tree: PyTree) -> PyTree:
    """Host NumPy arrays in JAX's canonical dtypes (float64 -> float32 without x64)."""

    def conv(a):
        a = np.asarray(a)
        return a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)

    return jax.tree_util.tree_map(conv, tree)


def _check_like(train: PyTree, val: PyTree) -> None:
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(train)
    v_leaves, v_def = jax.tree_util.tree_flatten_with_path(val)
    if t_def != v_def:
        raise ValueError(f"expected val_data with the same structure as train_data ({t_def}), got {v_def}")
    for (path, a), (_, b) in zip(t_leaves, v_leaves):
        name = jax.tree_util.keystr(path)
        same = a.ndim == b.ndim and (a.shape[2:] == b.shape[2:] if a.ndim >= 3 else a.shape[1:] == b.shape[1:]
                                     or not np.issubdtype(a.dtype, np.floating))
        if not same:
            raise ValueError(
                f"expected val_data{name} with the feature shape of train_data{name} {a.shape[1:]}, got {b.shape[1:]}"
            )


class _Interrupt:
    """SIGINT -> flag (first press: finish the step, save, return; second press: abort)."""

    def __init__(self):
        self.flag = False
        self._prev = None
        self._installed = False

    def _handler(self, signum, frame):
        if self.flag:
            signal.signal(signal.SIGINT, self._prev or signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag = True
        print("\nlstm_jax.fit: interrupt received; finishing the step and saving (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)


def _mean_metrics(records: dict) -> dict:
    return {k: (float(np.mean(np.asarray(v, np.float32))) if v else float("nan")) for k, v in records.items()}


def _improved(value: float, best: Optional[float], mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def fit(
    loss_fn: Callable,
    params: PyTree,
    optimizer: optax.GradientTransformation,
    train_data: PyTree,
    *,
    val_data: Optional[PyTree] = None,
    epochs: int = 10,
    batch_size: int = 32,
    seed: Union[int, PRNGKey] = 0,
    monitor: str = "val_loss",
    mode: str = "min",
    patience: Optional[int] = None,
    compiled_epoch: bool = False,
    checkpoint_dir=None,
    checkpoint_every: Optional[int] = None,
    keep_checkpoints: int = 3,
    resume: bool = False,
    progress: bool = True,
    desc: Optional[str] = None,
    history_path=None,
    on_nonfinite: str = "raise",
    eval_every: int = 1,
    eval_batch_size: Optional[int] = None,
    train_step: Optional[Callable] = None,
    devices=None,
    validate_data: bool = True,
    callback: Optional[Callable[[int, dict], None]] = None,
) -> FitResult:
    """Train ``params`` on ``train_data`` with minibatches; validate, early-stop, checkpoint.

    Args:
      loss_fn: ``(params, batch, rng) -> (loss, metrics)``; also used for validation with
        ``rng=None``.
      params: initial parameters (any pytree).
      optimizer: e.g. ``make_optimizer(...)``.
      train_data, val_data: pytrees (dicts) of arrays with a shared leading axis ``N``.
      epochs: epochs to run in total (a resumed run continues up to this number).
      batch_size: global batch size; each epoch uses ``N // batch_size`` full batches of a
        fresh seeded permutation. Must divide over the devices used.
      seed: int or key; ``data_key, step_key = split(key(seed))`` drive shuffling and the
        per-step rng.
      monitor, mode: history key to watch (``"val_loss"``, ``"val_acc"``, ``"train_loss"``...)
        and ``"min"``/``"max"``. Monitoring is active when the key exists (no ``val_data``
        and a ``val_*`` monitor: inactive, ``params`` returned are the final ones).
      patience: stop after this many evaluations without improvement; the best params are
        returned either way.
      compiled_epoch: run each epoch as one jitted ``lax.scan`` (no Python per step; pays
        off for small models). Checkpoints then happen at epoch ends only.
      checkpoint_dir: where to write ``state/<step>`` (periodic: each epoch end and every
        ``checkpoint_every`` batches, ``keep_checkpoints`` kept) and ``best/<step>`` (params of
        the best epoch). Written atomically with checksums.
      resume: continue from the newest valid checkpoint in ``checkpoint_dir`` (damaged ones
        are moved to ``checkpoint_dir/state/corrupt``). The optimizer state, rng, data
        position, history and early-stopping state are restored, so the result is
        bit-identical to an uninterrupted run. Without a checkpoint it starts fresh.
      progress: tqdm bar with loss and the monitored metric; ``desc`` labels it.
      history_path: JSON-lines file, one history dict per epoch (rewritten on resume).
      on_nonfinite: ``"raise"``: a NaN/Inf loss or gradient raises ``NonFiniteError``
        naming the step and batch, without saving anything (the last checkpoint stays
        the last good state); ``"skip"``: that update is skipped and counted in
        ``nonfinite_steps``.
      eval_every: validate every this many epochs (and after the last).
      eval_batch_size: validation batch size (default ``batch_size``).
      train_step: custom ``(state, batch) -> (state, metrics)`` (e.g.
        ``make_tbptt_train_step``); ``loss_fn`` is then used for validation only.
      devices: devices for data parallelism (default all ``jax.devices()``): the batch is
        split over them, params replicated. One device runs the same code.
      validate_data: check the data for NaN/Inf up front (``ValueError``).
      callback: ``callback(step, metrics)`` after every step (every epoch when compiled),
        with host floats.

    Returns:
      ``FitResult(params, state, history, best_epoch, best_metric, interrupted, stopped_early)``.

    Ctrl-C finishes the current step (epoch when compiled), saves a checkpoint and returns
    with ``interrupted=True``; a second Ctrl-C aborts.
    """
    # ---------------------------------------------------------------- checks
    for name, v, lo in (("epochs", epochs, 0), ("eval_every", eval_every, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"expected {name} to be an int >= {lo}, got {v!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"expected mode 'min' or 'max', got {mode!r}")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"expected on_nonfinite 'raise' or 'skip', got {on_nonfinite!r}")
    if patience is not None and (not isinstance(patience, (int, np.integer)) or patience < 1):
        raise ValueError(f"expected patience to be a positive int or None, got {patience!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1):
        raise ValueError(f"expected checkpoint_every to be a positive int or None, got {checkpoint_every!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("expected checkpoint_dir when resume=True, got None")
    train_host = _canonical(train_data)
    n_train = data_size(train_host, "train_data")
    nb = num_batches(n_train, batch_size, drop_last=True)
    val_host = None
    if val_data is not None:
        val_host = _canonical(val_data)
        data_size(val_host, "val_data")
        _check_like(train_host, val_host)
    if validate_data:
        check_finite(train_host, "train_data")
        if val_host is not None:
            check_finite(val_host, "val_data")
    mesh = shd.data_mesh(devices)
    shd.check_batch_divisible(batch_size, mesh)
    ebs = int(eval_batch_size or batch_size)

    key = _key_of(seed)
    data_key, step_key = jax.random.split(key)
    optimizer_state = init_train_state(params, optimizer, step_key)
    state = shd.replicate(optimizer_state, mesh)
    jstep, epoch_fn, eval_fn = _fit_programs(loss_fn, optimizer, train_step, mesh, batch_size, ebs)
    perm_fn = _jit_permutation
    val_dev = shd.replicate(val_host, mesh) if val_host is not None else None
    train_dev = shd.replicate(train_host, mesh) if compiled_epoch else None
    _check_monitor(monitor, jstep, state, train_host, batch_size, loss_fn, val_host, ebs)
    fingerprint = {
        "n_train": int(n_train),
        "batch_size": int(batch_size),
        "seed": np.asarray(jax.random.key_data(key)).tolist(),
    }

    # ---------------------------------------------------------------- run state
    history: list = []
    best_params = None
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    bad_evals = 0
    stopped = False
    epoch0, batch0 = 0, 0
    partial: dict = {}
    nonfinite = 0
    store = best_store = None
    last_saved = None
    pbar = None

    def checkpoint_tree():
        return {"state": state, "best": best_params if best_params is not None else state.params}

    if checkpoint_dir is not None:
        store = ckpt.CheckpointStore(Path(checkpoint_dir) / "state", keep=keep_checkpoints)
        best_store = ckpt.CheckpointStore(Path(checkpoint_dir) / "best", keep=1)
    try:
        if resume:
            restored = _restore_latest(store, checkpoint_tree())
            if restored is not None:
                tree, meta = restored
                if meta["fingerprint"] != fingerprint:
                    raise ValueError(
                        f"expected the checkpoint in {checkpoint_dir} to come from the same data/batch_size/seed "
                        f"{fingerprint}, got {meta['fingerprint']}"
                    )
                state = shd.replicate(tree["state"], mesh)
                best_params = shd.replicate(tree["best"], mesh) if meta["has_best"] else None
                history = meta["history"]
                best_metric, best_epoch, bad_evals = meta["best_metric"], meta["best_epoch"], meta["bad_evals"]
                stopped = meta["stopped"]
                epoch0, batch0 = meta["epoch"], meta["batch"]
                partial, nonfinite = meta["partial"], meta["nonfinite"]
                last_saved = int(state.step)
        if history_path is not None:
            with open(history_path, "w") as fh:
                for entry in history:
                    fh.write(json.dumps(entry) + "\n")

        def save(epoch_pos: int, batch_pos: int) -> None:
            nonlocal last_saved
            step = int(state.step)
            if store is None or step == last_saved:
                return
            meta = {
                "epoch": epoch_pos, "batch": batch_pos, "partial": partial, "nonfinite": nonfinite,
                "history": history, "best_metric": best_metric, "best_epoch": best_epoch,
                "bad_evals": bad_evals, "stopped": stopped, "has_best": best_params is not None,
                "fingerprint": fingerprint,
            }
            store.save(step, checkpoint_tree(), meta=meta)
            last_saved = step

        pbar = tqdm(total=epochs * nb, initial=min(epoch0 * nb + batch0, epochs * nb), desc=desc,
                    disable=not progress, dynamic_ncols=True, leave=True)
        postfix: dict = {}
        with _Interrupt() as interrupt:
            for epoch in range(epoch0, epochs):
                if stopped:
                    break
                t0 = time.perf_counter()
                start = batch0 if epoch == epoch0 else 0
                if start == 0:
                    partial, nonfinite = {}, 0
                if compiled_epoch and start == 0:
                    state, stacked = epoch_fn(state, train_dev, data_key, epoch)
                    stacked = jax.device_get(stacked)
                    finite = np.asarray(stacked.pop("finite"))
                    if on_nonfinite == "raise" and not finite.all():
                        j = int(np.argmin(finite))
                        raise _nonfinite_error(epoch * nb + j, epoch, j, nb, store)
                    nonfinite += int((~finite).sum())
                    for k, v in stacked.items():
                        partial.setdefault(k, []).extend(float(x) for x in np.asarray(v)[finite])
                    pbar.update(nb)
                    if callback is not None:
                        callback(int(state.step), _mean_metrics(partial))
                else:
                    order = np.asarray(perm_fn(data_key, epoch, n_train))
                    for j in range(start, nb):
                        batch = take(train_host, order[j * batch_size : (j + 1) * batch_size])
                        state, metrics = jstep(state, shd.shard_batch(batch, mesh))
                        metrics = jax.device_get(metrics)
                        if not bool(metrics.pop("finite")):
                            if on_nonfinite == "raise":
                                raise _nonfinite_error(epoch * nb + j, epoch, j, nb, store)
                            nonfinite += 1
                        else:
                            for k, v in metrics.items():
                                partial.setdefault(k, []).append(float(v))
                        pbar.update(1)
                        postfix["loss"] = f"{float(metrics['loss']):.4g}"
                        pbar.set_postfix(postfix, refresh=False)
                        if callback is not None:
                            callback(int(state.step), {k: float(v) for k, v in metrics.items()})
                        if interrupt.flag:
                            save(epoch, j + 1)
                            return _result(state, history, best_params, best_epoch, best_metric, True, False)
                        if checkpoint_every and (epoch * nb + j + 1) % checkpoint_every == 0 and j + 1 < nb:
                            save(epoch, j + 1)
                # ------------------------------------------------ epoch end
                entry = {"epoch": epoch + 1, "step": int(state.step)}
                entry.update({f"train_{k}": v for k, v in _mean_metrics(partial).items()})
                entry["nonfinite_steps"] = nonfinite
                evaluated = val_dev is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
                if evaluated:
                    val = jax.device_get(eval_fn(state.params, val_dev))
                    entry.update({f"val_{k}": float(v) for k, v in val.items()})
                entry["time_s"] = round(time.perf_counter() - t0, 4)
                history.append(entry)
                partial, nonfinite = {}, 0
                if history_path is not None:
                    with open(history_path, "a") as fh:
                        fh.write(json.dumps(entry) + "\n")
                if monitor in entry:
                    value = float(entry[monitor])
                    if _improved(value, best_metric, mode):
                        best_metric, best_epoch, bad_evals = value, epoch + 1, 0
                        best_params = state.params
                        if best_store is not None and int(state.step) not in best_store.all_steps():
                            best_store.save(int(state.step), best_params, meta={"epoch": epoch + 1, monitor: value})
                    else:
                        bad_evals += 1
                        stopped = patience is not None and bad_evals >= patience
                    postfix[monitor] = f"{value:.4g}"
                postfix["loss"] = f"{entry.get('train_loss', float('nan')):.4g}"
                pbar.set_postfix(postfix, refresh=True)
                save(epoch + 1, 0)
                if interrupt.flag:
                    return _result(state, history, best_params, best_epoch, best_metric, True, False)
        return _result(state, history, best_params, best_epoch, best_metric, False, stopped)
    finally:
        if pbar is not None:
            pbar.close()
        for s in (store, best_store):
            if s is not None:
                s.close()


def _check_monitor(monitor, jstep, state, train_host, batch_size, loss_fn, val_host, ebs) -> None:
    """Fail before training when ``monitor`` cannot appear in the history (traces, no compile)."""
    def spec(tree, rows):
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((rows,) + a.shape[1:], a.dtype), tree)

    names = {"epoch", "step", "nonfinite_steps", "time_s"}
    train_metrics = jax.eval_shape(jstep, state, spec(train_host, batch_size))[1]
    names |= {f"train_{k}" for k in train_metrics if k != "finite"}
    if val_host is not None:
        rows = min(ebs, data_size(val_host))
        names |= {f"val_{k}" for k in jax.eval_shape(make_eval_step(loss_fn), state.params, spec(val_host, rows))}
    elif monitor.startswith("val_"):
        return  # no validation data: monitoring is simply inactive
    if monitor not in names:
        raise ValueError(f"expected monitor to name a history key, got {monitor!r}; have {sorted(names)}")


def _result(state, history, best_params, best_epoch, best_metric, interrupted, stopped) -> FitResult:
    params = best_params if best_params is not None else state.params
    return FitResult(params, state, history, best_epoch, best_metric, interrupted, stopped)


def _nonfinite_error(step: int, epoch: int, batch: int, nb: int, store) -> NonFiniteError:
    last = store.latest_step() if store is not None else None
    where = (f"the last checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written")
    return NonFiniteError(
        f"non-finite loss or gradient at step {step} (epoch {epoch + 1}, batch {batch} of {nb}, 0-based); "
        f"the update was not applied and {where}. Check the data and learning rate, or pass "
        f"on_nonfinite='skip' to skip such updates"
    )


def _restore_latest(store: ckpt.CheckpointStore, like: PyTree):
    """Newest checkpoint that verifies; damaged newer ones are quarantined. None if none."""
    for step in reversed(store.all_steps()):
        try:
            return store.restore(like, step=step)
        except ckpt.CheckpointMismatchError:
            raise  # an intact checkpoint of another model: never move it aside
        except ckpt.CheckpointError as e:
            moved = store.quarantine(step)
            log.warning("skipping damaged checkpoint step %d (moved to %s): %s", step, moved, e)
            print(f"lstm_jax.fit: skipping damaged checkpoint step {step}: {e}", file=sys.stderr)
    return None


# --------------------------------------------------------------------------- TBPTT
def tbptt_value_and_grad(
    chunk_loss_fn: Callable,
    params: PyTree,
    carry: PyTree,
    batch: PyTree,
    chunk: int,
    *,
    rng: Optional[PRNGKey] = None,
    truncate: bool = True,
):
    """Loss and gradient of a long sequence processed in chunks, the carry passed on.

    ``chunk_loss_fn(params, carry, chunk_batch, rng) -> (loss, (carry, metrics))`` runs the
    model over one chunk (every leaf of ``batch`` is ``[b, T, ...]``, cut into
    ``[b, chunk, ...]`` pieces) starting from ``carry``. The total loss is the mean of the
    chunk losses. With ``truncate=True`` the carry entering each chunk is wrapped in
    ``stop_gradient`` (truncated BPTT: no gradient flows across chunk boundaries); with
    ``truncate=False`` the gradient is exactly the full-sequence gradient.

    Returns:
      ``((loss, final_carry, metrics), grads)``; metrics are averaged over chunks.
    """
    chunks = jax.tree_util.tree_map(lambda a: tbptt_chunks(a, chunk), batch)
    n = jax.tree_util.tree_leaves(chunks)[0].shape[0]
    keys = None if rng is None else jax.random.split(rng, n)

    def run(p, carry0):
        def body(c, inputs):
            piece, k = inputs
            if truncate:
                c = jax.lax.stop_gradient(c)
            loss, (c, metrics) = chunk_loss_fn(p, c, piece, k)
            return c, (loss, metrics)

        final, (losses, metrics) = jax.lax.scan(body, carry0, (chunks, keys))
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        return jnp.mean(losses), (final, metrics)

    (loss, (final, metrics)), grads = jax.value_and_grad(run, has_aux=True)(params, carry)
    return (loss, final, metrics), grads


def make_tbptt_train_step(
    chunk_loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    chunk: int,
    init_carry: Callable[[PyTree, PyTree], PyTree],
    truncate: bool = True,
    update_every_chunk: bool = True,
    guard_nonfinite: bool = True,
):
    """Truncated-BPTT ``train_step(state, batch) -> (state, metrics)`` for ``fit(train_step=...)``.

    Each batch holds long sequences (leaves ``[b, T, ...]``, ``T % chunk == 0``). Starting from
    ``init_carry(params, batch)`` the model reads them chunk by chunk (``chunk_loss_fn`` as in
    ``tbptt_value_and_grad``), the carry passed on with ``stop_gradient`` between chunks. With
    ``update_every_chunk`` the optimizer steps after every chunk (classic TBPTT; ``state.step``
    advances by the number of chunks); otherwise the chunk gradients are averaged into one
    update per batch.

    For language modelling give inputs and targets as separate aligned arrays,
    ``{"x": tokens[:, :-1], "y": tokens[:, 1:]}``, so no prediction is lost at chunk edges:

    >>> def chunk_loss(params, carry, piece, rng):
    ...     ys, carry = lstm_jax.lstm(params["rnn"], params["emb"][piece["x"]], initial_state=carry)
    ...     return softmax_cross_entropy(ys @ params["out"], piece["y"]), (carry, {})
    >>> def init_carry(params, batch):
    ...     zero = lstm_jax.zero_state(params["rnn"])               # leaves [L, D, d]
    ...     return jax.tree_util.tree_map(lambda s: jnp.zeros((batch["x"].shape[0],) + s.shape), zero)
    >>> step = make_tbptt_train_step(chunk_loss, opt, chunk=100, init_carry=init_carry)
    >>> result = fit(full_sequence_loss, params, opt, train, train_step=step, ...)
    """

    def train_step(state: TrainState, batch: PyTree):
        carry0 = init_carry(state.params, batch)
        if not update_every_chunk:
            rng = jax.random.fold_in(state.rng, state.step)
            (loss, _, metrics), grads = tbptt_value_and_grad(
                chunk_loss_fn, state.params, carry0, batch, chunk, rng=rng, truncate=truncate
            )
            return _apply_gradients(optimizer, state, loss, dict(metrics), grads, guard_nonfinite)
        chunks = jax.tree_util.tree_map(lambda a: tbptt_chunks(a, chunk), batch)

        def objective(p, c, piece, k):
            loss, (c, metrics) = chunk_loss_fn(p, c, piece, k)
            return loss, (c, metrics)

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def body(carry, piece):
            st, c = carry
            k = jax.random.fold_in(st.rng, st.step)
            (loss, (c_new, metrics)), grads = grad_fn(st.params, jax.lax.stop_gradient(c), piece, k)
            st, m = _apply_gradients(optimizer, st, loss, dict(metrics), grads, guard_nonfinite)
            return (st, c_new), m

        (state, _), stacked = jax.lax.scan(body, (state, carry0), chunks)
        finite = jnp.all(stacked.pop("finite"))
        metrics = {k: jnp.mean(v) for k, v in stacked.items()}
        return state, {**metrics, "finite": finite}

    return train_step


# --------------------------------------------------------------------------- ensembles
class TrainConfig(NamedTuple):
    """Hashable configuration of ``make_train`` (and of an equivalent ``fit`` call)."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    clip_norm: Optional[float] = 1.0
    warmup_steps: int = 0
    cosine_decay: bool = False  # cosine to end_fraction * lr over all epochs * steps_per_epoch
    end_fraction: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    monitor: str = "val_loss"
    mode: str = "min"
    patience: Optional[int] = None
    eval_batch_size: Optional[int] = None

    def make_optimizer(self, steps_per_epoch: int, learning_rate=None) -> optax.GradientTransformation:
        """The optimizer this config describes (``learning_rate`` overrides, may be traced)."""
        lr = self.learning_rate if learning_rate is None else learning_rate
        total = self.epochs * steps_per_epoch if self.cosine_decay else None
        return make_optimizer(
            lr, clip_norm=self.clip_norm, warmup_steps=self.warmup_steps, total_steps=total,
            end_fraction=self.end_fraction, weight_decay=self.weight_decay, optimizer=self.optimizer,
        )


class TrainResult(NamedTuple):
    """What ``train(key)`` returns; under ``jax.vmap`` every leaf gains a leading member axis."""

    params: PyTree  # best params by config.monitor when monitoring is possible, else final
    final_params: PyTree
    history: dict  # name -> [epochs]: train_*, val_*, nonfinite_steps, active (epoch ran)
    best_epoch: Array  # 1-based, 0 when never improved / not monitoring
    best_metric: Array


def split_run_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """``(init_key, fit_key)`` of a run: ``train(key)`` == ``fit(..., init_fn(init_key), seed=fit_key)``."""
    init_key, fit_key = jax.random.split(key)
    return init_key, fit_key


def make_train(
    config: TrainConfig,
    loss_fn: Callable,
    init_fn: Callable[[PRNGKey], PyTree],
    train_data: PyTree,
    val_data: Optional[PyTree] = None,
) -> Callable:
    """Build a pure ``train(key, learning_rate=None) -> TrainResult``: a whole training run in
    one traceable function, for ``jax.jit(jax.vmap(train))(keys)`` ensembles.

    Member ``i`` trained by ``vmap`` equals the standalone run
    ``fit(loss_fn, init_fn(k_init), config.make_optimizer(N // batch_size), train_data,
    val_data=..., seed=k_fit, epochs=..., batch_size=..., monitor=..., mode=..., patience=...,
    on_nonfinite="skip")`` with ``k_init, k_fit = split_run_key(keys[i])``: the same batches,
    rng, optimizer, validation, best-params selection and early stopping (a stopped member's
    later epochs are computed but frozen; ``history["active"]`` marks the epochs that ran).

    Args:
      config: ``TrainConfig`` (static).
      loss_fn: as for ``fit``.
      init_fn: ``key -> params``.
      train_data, val_data: pytrees of arrays (closed over as constants of the program).

    >>> train = make_train(TrainConfig(epochs=5), loss_fn, init_fn, train, val)
    >>> keys = jnp.stack([jax.random.key(i) for i in range(16)])
    >>> results = jax.jit(jax.vmap(train))(keys)             # 16 models, one program
    >>> results.history["val_loss"].shape                    # (16, 5)
    >>> lrs = jnp.logspace(-4, -2, 16)
    >>> results = jax.jit(jax.vmap(train))(keys, lrs)        # and/or different learning rates
    """
    if config.mode not in ("min", "max"):
        raise ValueError(f"expected mode 'min' or 'max', got {config.mode!r}")
    train_host = _canonical(train_data)
    n = data_size(train_host, "train_data")
    nb = num_batches(n, config.batch_size, drop_last=True)
    val_host = None
    if val_data is not None:
        val_host = _canonical(val_data)
        data_size(val_host, "val_data")
        _check_like(train_host, val_host)
    check_finite(train_host, "train_data")
    if val_host is not None:
        check_finite(val_host, "val_data")
    ebs = int(config.eval_batch_size or config.batch_size)
    eval_step = make_eval_step(loss_fn)
    sign = 1.0 if config.mode == "min" else -1.0
    monitor = config.monitor

    def train(key: PRNGKey, learning_rate=None) -> TrainResult:
        init_key, fit_key = split_run_key(key)
        params = init_fn(init_key)
        optimizer = config.make_optimizer(nb, learning_rate)
        data_key, step_key = jax.random.split(fit_key)
        state = init_train_state(params, optimizer, step_key)
        step_fn = make_train_step(loss_fn, optimizer)
        train_dev = jax.tree_util.tree_map(jnp.asarray, train_host)
        val_dev = None if val_host is None else jax.tree_util.tree_map(jnp.asarray, val_host)

        def epoch_body(carry, epoch):
            state, best_params, best, best_epoch, bad, stopped = carry
            new_state, stacked = run_epoch(step_fn, state, train_dev, data_key, epoch, config.batch_size)
            finite = stacked.pop("finite")
            weights = finite.astype(jnp.float32)
            count = jnp.sum(weights)
            entry = {f"train_{k}": jnp.where(count > 0, jnp.sum(jnp.where(finite, v, 0.0)) / count, jnp.nan)
                     for k, v in stacked.items()}
            entry["nonfinite_steps"] = jnp.sum(~finite).astype(jnp.int32)
            if val_dev is not None:
                val = evaluate_arrays(eval_step, new_state.params, val_dev, ebs)
                entry.update({f"val_{k}": v for k, v in val.items()})
            active = ~stopped
            new_state = _select(active, new_state, state)
            if monitor in entry:
                value = entry[monitor]
                better = jnp.isfinite(value) & (jnp.isinf(best) | (sign * value < sign * best))
                improved = active & better
                best_params = _select(improved, new_state.params, best_params)
                best = jnp.where(improved, value, best)
                best_epoch = jnp.where(improved, epoch + 1, best_epoch)
                bad = jnp.where(improved, 0, jnp.where(active, bad + 1, bad))
                if config.patience is not None:
                    stopped = stopped | (bad >= config.patience)
            elif not monitor.startswith("val_"):
                raise ValueError(f"expected config.monitor to name a history key, got {monitor!r}; have {sorted(entry)}")
            entry["active"] = active
            return (new_state, best_params, best, best_epoch, bad, stopped), entry

        init = (state, state.params, jnp.asarray(jnp.inf * sign, jnp.float32), jnp.zeros((), jnp.int32),
                jnp.zeros((), jnp.int32), jnp.zeros((), bool))
        (state, best_params, best, best_epoch, _, _), history = jax.lax.scan(
            epoch_body, init, jnp.arange(config.epochs)
        )
        monitored = monitor in history
        params_out = best_params if monitored else state.params
        best = best if monitored else jnp.asarray(jnp.nan, jnp.float32)
        return TrainResult(params_out, state.params, history, best_epoch, best)

    return train

