"""``fit``: the ready-made training loop, a short sequence of named stages.

``fit`` checks its arguments, prepares data and compiled programs (``_setup``), restores a
checkpoint when resuming (``_resume``), then for every epoch trains (``_train_epoch``: one
compiled ``lax.scan`` or a Python loop of jitted steps) and closes it (``_end_epoch``:
history, validation, best params, early stopping, checkpoint). What changes during the run,
and what a checkpoint stores besides the ``TrainState``, is one ``_Run`` record.

Every training path draws epoch ``e``'s batches from ``data.epoch_permutation(data_key, e, N)``
(full batches only) with ``data_key, step_key = split(key(seed))``, so a resumed run, a compiled
epoch and ``make_train`` see the same batches. Example::

    def loss_fn(params, batch, rng):
        ys, _ = lstm_jax.lstm(params["rnn"], batch["x"], dropout_key=rng, dropout=0.1)
        pred = ys[:, -1] @ params["w"] + params["b"]
        loss = lstm_jax.train.losses.last_step_mse(pred, batch["y"])
        return loss, {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}
    opt = make_optimizer(1e-3, clip_norm=1.0, warmup_steps=100, total_steps=5000)
    result = fit(loss_fn, params, opt, train, val_data=val, epochs=20, batch_size=64,
                 patience=5, checkpoint_dir="ckpt", resume=True, history_path="history.jsonl")
    result.params            # best validation params; result.history: one dict per epoch
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Optional, Union

import jax
import numpy as np
import optax
from tqdm import tqdm

from lstm_jax import sharding as shd
from lstm_jax.data import _key_of, data_size, epoch_permutation, take
from lstm_jax.train import run_state as rs
from lstm_jax.train.run_state import FitResult, Run
from lstm_jax.train.state import NonFiniteError, TrainState, init_train_state
from lstm_jax.train.steps import fit_programs, make_eval_step, prepare_data
from lstm_jax.typing import PRNGKey, PyTree

__all__ = ["FitResult", "fit"]


_jit_permutation = jax.jit(epoch_permutation, static_argnums=2)


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
      seed: int, ``jax.random.key`` or legacy ``jax.random.PRNGKey`` (same bits);
        ``data_key, step_key = split(key(seed))`` drive shuffling and the per-step rng.
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
        split over them, params replicated. One device runs the same code. After
        ``jax.distributed`` initialisation (``lstm_jax.distributed.initialize_from_env``)
        these are every process's devices: each process runs the same ``fit`` call (same
        data, seed, global ``batch_size``, a ``checkpoint_dir`` they all see) and feeds only
        its own rows of each global batch; process 0 alone writes ``history_path`` and shows
        the progress bar; every process checkpoints (orbax saves collectively).
      validate_data: check the data for NaN/Inf up front (``ValueError``).
      callback: ``callback(step, metrics)`` after every step (every epoch when compiled),
        with host floats.

    Returns:
      ``FitResult(params, state, history, best_epoch, best_metric, interrupted, stopped_early)``.

    Ctrl-C finishes the current step (epoch when compiled), saves a checkpoint and returns
    with ``interrupted=True``; a second Ctrl-C aborts.
    """
    _check_fit_args(epochs, eval_every, mode, on_nonfinite, patience, checkpoint_every, resume, checkpoint_dir)
    setup = _setup(
        loss_fn,
        params,
        optimizer,
        train_data,
        val_data,
        seed=seed,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        train_step=train_step,
        devices=devices,
        validate_data=validate_data,
        compiled_epoch=compiled_epoch,
        monitor=monitor,
    )
    opts = _Options(epochs, eval_every, monitor, mode, patience, on_nonfinite, checkpoint_every, history_path, callback)
    run = Run(state=setup.state)
    stores = rs.open_stores(checkpoint_dir, keep_checkpoints)
    pbar = None
    try:
        if resume:
            rs.resume(run, stores, setup, checkpoint_dir)
        rs.rewrite_history(history_path, run.history)
        done = min(run.epoch0 * setup.nb + run.batch0, epochs * setup.nb)
        pbar = tqdm(
            total=epochs * setup.nb,
            initial=done,
            desc=desc,
            disable=not progress or jax.process_index() != 0,  # one bar per job: process 0's
            dynamic_ncols=True,
            leave=True,
        )
        with rs.Interrupt() as interrupt:
            for epoch in range(run.epoch0, epochs):
                if run.stopped:
                    break
                t0 = time.perf_counter()
                if not _train_epoch(run, setup, opts, stores, epoch, pbar, interrupt):
                    return run.result(interrupted=True)
                _end_epoch(run, setup, opts, stores, epoch, time.perf_counter() - t0, pbar)
                if interrupt.flag:
                    return run.result(interrupted=True)
        return run.result(interrupted=False)
    finally:
        if pbar is not None:
            pbar.close()
        for store in stores:
            if store is not None:
                store.close()


def _check_fit_args(epochs, eval_every, mode, on_nonfinite, patience, checkpoint_every, resume, checkpoint_dir):
    """``ValueError`` for any option of ``fit`` out of its range."""
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


# --------------------------------------------------------------------------- stage: setup
class _Options(NamedTuple):
    """The loop options of one ``fit`` call."""

    epochs: int
    eval_every: int
    monitor: str
    mode: str
    patience: Optional[int]
    on_nonfinite: str
    checkpoint_every: Optional[int]
    history_path: Any
    callback: Optional[Callable]


class _Setup(NamedTuple):
    """Everything fixed for a whole ``fit`` run: data, keys, mesh and compiled programs."""

    train_host: PyTree
    train_dev: Optional[PyTree]  # device copy for compiled epochs
    val_dev: Optional[PyTree]
    n_train: int
    nb: int  # full batches per epoch
    batch_size: int
    mesh: Any
    rows: tuple  # (start, stop): the rows of every global batch this process feeds
    data_key: PRNGKey
    state: TrainState  # the fresh (replicated) state
    jstep: Callable
    epoch_fn: Callable
    eval_fn: Callable
    fingerprint: dict  # what a resumed checkpoint must match


def _setup(
    loss_fn,
    params,
    optimizer,
    train_data,
    val_data,
    *,
    seed,
    batch_size,
    eval_batch_size,
    train_step,
    devices,
    validate_data,
    compiled_epoch,
    monitor,
) -> _Setup:
    """Check and place the data, derive the keys, build (or reuse) the jitted programs."""
    train_host, val_host, n_train, nb = prepare_data(train_data, val_data, batch_size, validate=validate_data)
    mesh = shd.data_mesh(devices)
    shd.check_batch_divisible(batch_size, mesh)
    ebs = int(eval_batch_size or batch_size)
    key = _key_of(seed)
    data_key, step_key = jax.random.split(key)
    state = shd.replicate(init_train_state(params, optimizer, step_key), mesh)
    jstep, epoch_fn, eval_fn = fit_programs(loss_fn, optimizer, train_step, mesh, batch_size, ebs)
    _check_monitor(monitor, jstep, state, train_host, batch_size, loss_fn, val_host, ebs)
    fingerprint = {
        "n_train": int(n_train),
        "batch_size": int(batch_size),
        "seed": np.asarray(jax.random.key_data(key)).tolist(),
    }
    return _Setup(
        train_host=train_host,
        train_dev=shd.replicate(train_host, mesh) if compiled_epoch else None,
        val_dev=shd.replicate(val_host, mesh) if val_host is not None else None,
        n_train=n_train,
        nb=nb,
        batch_size=int(batch_size),
        mesh=mesh,
        rows=shd.process_rows(mesh, int(batch_size)),
        data_key=data_key,
        state=state,
        jstep=jstep,
        epoch_fn=epoch_fn,
        eval_fn=eval_fn,
        fingerprint=fingerprint,
    )


# --------------------------------------------------------------------------- stage: train an epoch
def _train_epoch(run: Run, setup: _Setup, opts: _Options, stores: tuple, epoch: int, pbar, interrupt) -> bool:
    """Run epoch ``epoch`` (from ``run.batch0`` when resuming into it); False if interrupted."""
    start = run.batch0 if epoch == run.epoch0 else 0
    if start == 0:
        run.partial, run.nonfinite = {}, 0
    if setup.train_dev is not None and start == 0:
        _compiled_epoch(run, setup, opts, stores, epoch, pbar)
        return True
    order = np.asarray(_jit_permutation(setup.data_key, epoch, setup.n_train))
    nb, bs = setup.nb, setup.batch_size
    lo, hi = setup.rows
    for j in range(start, nb):
        # this process's rows of global batch j; the other processes feed the rest
        batch = take(setup.train_host, order[j * bs + lo : j * bs + hi])
        run.state, metrics = setup.jstep(run.state, shd.shard_batch(batch, setup.mesh, global_rows=bs))
        metrics = jax.device_get(metrics)
        if not bool(metrics.pop("finite")):
            if opts.on_nonfinite == "raise":
                raise _nonfinite_error(epoch * nb + j, epoch, j, nb, stores[0])
            run.nonfinite += 1
        else:
            for k, v in metrics.items():
                run.partial.setdefault(k, []).append(float(v))
        pbar.update(1)
        run.postfix["loss"] = f"{float(metrics['loss']):.4g}"
        pbar.set_postfix(run.postfix, refresh=False)
        if opts.callback is not None:
            opts.callback(int(run.state.step), {k: float(v) for k, v in metrics.items()})
        if interrupt.flag:
            rs.save(run, setup, stores, epoch, j + 1)
            return False
        if opts.checkpoint_every and (epoch * nb + j + 1) % opts.checkpoint_every == 0 and j + 1 < nb:
            rs.save(run, setup, stores, epoch, j + 1)
    return True


def _compiled_epoch(run: Run, setup: _Setup, opts: _Options, stores: tuple, epoch: int, pbar) -> None:
    """The whole epoch as one jitted ``lax.scan``; per-step metrics come back stacked."""
    run.state, stacked = setup.epoch_fn(run.state, setup.train_dev, setup.data_key, epoch)
    stacked = jax.device_get(stacked)
    finite = np.asarray(stacked.pop("finite"))
    if opts.on_nonfinite == "raise" and not finite.all():
        j = int(np.argmin(finite))
        raise _nonfinite_error(epoch * setup.nb + j, epoch, j, setup.nb, stores[0])
    run.nonfinite += int((~finite).sum())
    for k, v in stacked.items():
        run.partial.setdefault(k, []).extend(float(x) for x in np.asarray(v)[finite])
    pbar.update(setup.nb)
    if opts.callback is not None:
        opts.callback(int(run.state.step), _mean_metrics(run.partial))


# --------------------------------------------------------------------------- stage: end of epoch
def _end_epoch(run: Run, setup: _Setup, opts: _Options, stores: tuple, epoch: int, seconds: float, pbar) -> None:
    """History entry, validation, best params, early stopping, progress bar, checkpoint."""
    entry: dict[str, Any] = {"epoch": epoch + 1, "step": int(run.state.step)}
    entry.update({f"train_{k}": v for k, v in _mean_metrics(run.partial).items()})
    entry["nonfinite_steps"] = run.nonfinite
    last = epoch + 1 == opts.epochs
    if setup.val_dev is not None and ((epoch + 1) % opts.eval_every == 0 or last):
        val = jax.device_get(setup.eval_fn(run.state.params, setup.val_dev))
        entry.update({f"val_{k}": float(v) for k, v in val.items()})
    entry["time_s"] = round(seconds, 4)
    run.history.append(entry)
    run.partial, run.nonfinite = {}, 0
    if opts.history_path is not None and jax.process_index() == 0:
        with open(opts.history_path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    if opts.monitor in entry:
        _track_best(run, opts, stores[1], entry, epoch)
    run.postfix["loss"] = f"{entry.get('train_loss', float('nan')):.4g}"
    pbar.set_postfix(run.postfix, refresh=True)
    rs.save(run, setup, stores, epoch + 1, 0)


def _track_best(run: Run, opts: _Options, best_store, entry: dict, epoch: int) -> None:
    """Keep the best params by ``opts.monitor`` (saved to ``best/``) and count evaluations without gain."""
    value = float(entry[opts.monitor])
    if _improved(value, run.best_metric, opts.mode):
        run.best_metric, run.best_epoch, run.bad_evals = value, epoch + 1, 0
        run.best_params = run.state.params
        step = int(run.state.step)
        if best_store is not None and step not in best_store.all_steps():
            best_store.save(step, run.best_params, meta={"epoch": epoch + 1, opts.monitor: value})
    else:
        run.bad_evals += 1
        run.stopped = opts.patience is not None and run.bad_evals >= opts.patience
    run.postfix[opts.monitor] = f"{value:.4g}"


# --------------------------------------------------------------------------- helpers
def _mean_metrics(records: dict) -> dict:
    return {k: (float(np.mean(np.asarray(v, np.float32))) if v else float("nan")) for k, v in records.items()}


def _improved(value: float, best: Optional[float], mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


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


def _nonfinite_error(step: int, epoch: int, batch: int, nb: int, store) -> NonFiniteError:
    last = store.latest_step() if store is not None else None
    where = f"the last checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written"
    return NonFiniteError(
        f"non-finite loss or gradient at step {step} (epoch {epoch + 1}, batch {batch} of {nb}, 0-based); "
        f"the update was not applied and {where}. Check the data and learning rate, or pass "
        f"on_nonfinite='skip' to skip such updates"
    )
