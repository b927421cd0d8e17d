"""Pure training pieces: train/eval steps, evaluation over a data set, one compiled epoch.

Each builder returns a pure function that the caller may jit; ``fit`` and ``make_train`` jit
them. ``loss_fn(params, batch, rng) -> (loss, metrics)`` (or just the loss) is the model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax import sharding as shd
from lstm_jax.data import check_finite, data_size, epoch_permutation, num_batches, take
from lstm_jax.train.state import TrainState
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = ["make_train_step", "make_eval_step", "evaluate_arrays", "evaluate", "run_epoch", "prepare_data"]


def _loss_and_metrics(loss_fn: Callable) -> Callable:
    """Normalise ``loss_fn`` to return ``(loss, dict_of_scalars)`` and check it at trace time."""

    def wrapped(params, batch, rng):
        out = loss_fn(params, batch, rng)
        loss, metrics = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
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
    assert totals is not None  # n >= 1, so there is a full batch or a remainder
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


def run_epoch(
    train_step: Callable, state: TrainState, data: PyTree, data_key: PRNGKey, epoch, batch_size: int, *, mesh=None
):
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


def _canonical(tree: PyTree) -> PyTree:
    """Host NumPy arrays in JAX's canonical dtypes (float64 -> float32 without x64)."""

    def conv(a):
        a = np.asarray(a)
        return a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False)

    return jax.tree_util.tree_map(conv, tree)


def _check_like(train: PyTree, val: PyTree) -> None:
    t_leaves, t_def = jax.tree_util.tree_flatten_with_path(train)
    v_leaves, v_def = jax.tree_util.tree_flatten_with_path(val)
    if t_def != v_def:  # type: ignore[operator]
        raise ValueError(f"expected val_data with the same structure as train_data ({t_def}), got {v_def}")
    for (path, a), (_, b) in zip(t_leaves, v_leaves):
        name = jax.tree_util.keystr(path)
        same = a.ndim == b.ndim and (
            a.shape[2:] == b.shape[2:]
            if a.ndim >= 3
            else a.shape[1:] == b.shape[1:] or not np.issubdtype(a.dtype, np.floating)
        )
        if not same:
            raise ValueError(
                f"expected val_data{name} with the feature shape of train_data{name} {a.shape[1:]}, got {b.shape[1:]}"
            )


def prepare_data(train_data: PyTree, val_data: Optional[PyTree], batch_size: int, *, validate: bool = True):
    """Host copies of the data in canonical dtypes, checked: ``(train, val, n_train, batches per epoch)``.

    Raises ``ValueError`` for mismatched sizes or structures, fewer rows than ``batch_size``, or
    (with ``validate``) NaN/Inf values.
    """
    train_host = _canonical(train_data)
    n_train = data_size(train_host, "train_data")
    nb = num_batches(n_train, batch_size, drop_last=True)
    val_host = None
    if val_data is not None:
        val_host = _canonical(val_data)
        data_size(val_host, "val_data")
        _check_like(train_host, val_host)
    if validate:
        check_finite(train_host, "train_data")
        if val_host is not None:
            check_finite(val_host, "val_data")
    return train_host, val_host, n_train, nb


# --------------------------------------------------------------------------- compiled programs of fit
_PROGRAMS: OrderedDict[tuple, tuple] = OrderedDict()


def fit_programs(loss_fn, optimizer, train_step, mesh, batch_size: int, eval_batch_size: int):
    """Jitted (step, compiled epoch, evaluation) for ``fit``, cached so that repeated ``fit``
    calls with the same ``loss_fn``/``optimizer``/``train_step`` objects reuse compilations
    (resuming in the same process, sweeps, tests)."""
    key: Optional[tuple] = (loss_fn, optimizer, train_step, mesh, int(batch_size), int(eval_batch_size))
    try:
        hit = _PROGRAMS.get(key)  # type: ignore[arg-type]
    except TypeError:  # unhashable user objects: no caching
        key, hit = None, None
    if hit is not None:
        _PROGRAMS.move_to_end(key)  # type: ignore[arg-type]
        return hit
    repl = shd.replicated(mesh)
    step_fn = train_step or make_train_step(loss_fn, optimizer)
    eval_step = make_eval_step(loss_fn)
    jstep = jax.jit(step_fn, out_shardings=repl)
    epoch_fn = jax.jit(lambda s, d, k, e: run_epoch(step_fn, s, d, k, e, batch_size, mesh=mesh), out_shardings=repl)
    eval_fn = jax.jit(lambda p, d: evaluate_arrays(eval_step, p, d, eval_batch_size, mesh=mesh), out_shardings=repl)
    programs = (jstep, epoch_fn, eval_fn)
    if key is not None:
        _PROGRAMS[key] = programs
        while len(_PROGRAMS) > 16:
            _PROGRAMS.popitem(last=False)
    return programs
