"""Training loops for data that is not a fixed epoch: ``train_steps`` (a host-side batch
sampler, one jitted step at a time, optional evaluation, best-params selection and a
wall-clock cap) and ``train_generated`` (batches generated on the device, ``chunk`` steps
per jitted ``lax.scan``).

The budget of a run is a number of steps. A wall-clock cap (``max_seconds``) is off unless
asked for; when it cuts a run short, ``LoopResult.stopped_early`` says so and
``LoopResult.steps`` says how many steps ran, so a result never silently depends on how
loaded the machine was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.keys import as_key
from lstm_jax.tasks.cli import tqdm
from lstm_jax.typing import PRNGKey, PyTree

__all__ = ["LoopResult", "train_steps", "train_generated"]


class LoopResult(NamedTuple):
    """What ``train_steps`` returns."""

    params: PyTree  # the best by ``monitor``, or the last
    history: list  # dicts with ``step``, ``train_loss`` and the eval metrics
    steps: int  # steps that ran
    steps_planned: int  # the ``steps`` asked for
    stopped_early: bool  # the ``max_seconds`` cap cut the run short (an ``until`` stop is not "early")
    selected: Optional[dict] = None  # with ``monitor``: ``{"step", "averaged"}`` of the params returned


def _open_bar(bar, total: int, desc: str, progress: bool):
    """``(bar, own)``: a new tqdm bar of ``total`` steps, or ``bar`` relabelled ``desc``."""
    if bar is None:
        return tqdm()(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True), True
    bar.set_description(desc, refresh=False)
    return bar, False


class _Tracker:
    """History records of one run and its best params by ``monitor`` (``mode`` ``"min"``/``"max"``)."""

    def __init__(self, params, eval_fn, monitor, mode, until, bar):
        self.eval_fn, self.monitor, self.mode, self.until, self.bar = eval_fn, monitor, mode, until, bar
        self.history, self.best, self.best_params, self.losses = [], None, params, []
        self.selected: Optional[dict] = None

    def __call__(self, step: int, params, averaged=None) -> bool:
        """Record ``step`` (mean of the logged losses since the last record, eval metrics of
        ``params`` and, given, of the ``averaged`` params as ``<metric>_ema``); True = stop."""
        record = {"step": step, "train_loss": float(np.mean(self.losses)) if self.losses else float("nan")}
        self.losses.clear()
        candidates = [(params, "", False)] + ([(averaged, "_ema", True)] if averaged is not None else [])
        if self.eval_fn is not None:
            for p, suffix, _ in candidates:
                record.update({f"{k}{suffix}": float(v) for k, v in self.eval_fn(p).items()})
        self.history.append(record)
        if self.monitor is not None:
            for p, suffix, is_avg in candidates:
                value = record[self.monitor + suffix]
                better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
                if better and math.isfinite(value):
                    self.best, self.best_params = value, p
                    self.selected = {"step": step, "averaged": is_avg}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"}, refresh=False)
        return self.until is not None and self.until(record)


def train_steps(
    loss_fn: Optional[Callable],
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
    ema: Optional[float] = None,
) -> LoopResult:
    """Step-budgeted training with a batch sampler, built on ``lstm_jax.train.make_train_step``
    (jitted here, at the outermost level).

    Args:
      loss_fn: ``loss_fn(params, batch, rng) -> (loss, metrics)`` as for ``lstm_jax.train``.
      sample_batch: ``step -> batch`` (host-side; e.g. random crops of a long text).
      steps: the budget, in optimiser steps. ``max_seconds`` (off by default) caps the wall
        clock, counted from the end of the first (compiling) step; a run it cuts short has
        ``stopped_early=True`` and the real ``steps``.
      eval_fn: ``params -> dict of metrics`` every ``eval_every`` steps and at the end; with
        ``monitor`` (a key of that dict) the best params seen are returned.
      until: ``record -> bool`` after each evaluation; True stops training (e.g. "solved").
      bar: an existing tqdm bar to advance (one bar across several runs); else a new one.
      train_step: a custom ``(state, batch) -> (state, metrics)`` (e.g. ``lstm_jax.train.
        make_tbptt_train_step``) instead of ``make_train_step(loss_fn, optimizer)``.
      ema: a decay in (0, 1): also keep an exponential moving average of the params (Polyak
        averaging; ``avg_t = ema * avg_{t-1} + (1 - ema) * params_t`` from zero, divided by
        ``1 - ema ** t``), evaluate it beside the params at each evaluation (metrics
        ``<name>_ema``), and let ``monitor`` pick from both.
    Returns:
      ``LoopResult(params, history, steps, steps_planned, stopped_early, selected)``.
    """
    # lazy: keeps datasets/baselines usable alone
    from lstm_jax import train as train_lib

    if ema is not None and not (isinstance(ema, float) and 0.0 < ema < 1.0):
        raise ValueError(f"expected ema None or a float in (0, 1), got {ema!r}")
    state = train_lib.init_train_state(params, optimizer, jax.random.key(seed))
    step_fn = jax.jit(train_step or train_lib.make_train_step(loss_fn, optimizer))  # type: ignore[arg-type]
    avg = None if ema is None else jax.tree.map(jnp.zeros_like, state.params)
    averaged = (lambda n: None) if ema is None else (lambda n: _debiased(avg, ema, n))  # noqa: E731
    bar, own_bar = _open_bar(bar, steps, desc, progress)
    track = _Tracker(params, eval_fn, monitor, mode, until, bar)
    done, cut, start = 0, False, time.perf_counter()
    for step in range(steps):
        state, metrics = step_fn(state, sample_batch(step))
        done = step + 1
        if ema is not None:
            avg = _ema_step(avg, state.params, ema)
        if step == 0:  # the wall-clock cap starts after the first (compiling) step
            jax.block_until_ready(state)
            start = time.perf_counter()
        if done % 10 == 0 or done == steps:
            loss = float(metrics["loss"]) if "loss" in metrics else float("nan")
            if not math.isfinite(loss):
                if own_bar:
                    bar.close()
                raise FloatingPointError(f"expected a finite training loss, got {loss} at step {done}")
            track.losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.update(1)
        if eval_every and done % eval_every == 0 and done < steps and track(done, state.params, averaged(done)):
            break
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            cut = done < steps
            break
    if not track.history or track.history[-1]["step"] != done:
        track(done, state.params, averaged(done))
    if own_bar:
        bar.close()
    else:
        bar.update(steps - done)  # a shared bar counts the skipped budget as done
    final = track.best_params if monitor is not None else state.params
    return LoopResult(final, track.history, done, steps, cut, track.selected)


def _floating(a) -> bool:
    return jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)


@partial(jax.jit, donate_argnums=(0,))
def _ema_step(avg, params, decay: float):
    """One EMA step over the floating-point leaves (others: the current value)."""
    return jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p if _floating(p) else p, avg, params)


def _debiased(avg, decay: float, n: int):
    """The average of the first ``n`` params with zero-start bias removed (``/ (1 - decay ** n)``)."""
    scale = 1.0 / (1.0 - decay**n)
    return jax.tree.map(lambda a: (a * scale).astype(a.dtype) if _floating(a) else a, avg)


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
    depend on ``chunk``. ``key`` may be a typed or a legacy key (same numbers). After every
    chunk ``eval_fn(params)`` runs (jit it yourself) and ``until(record)`` may stop training
    (e.g. "solved"); there is no wall-clock cap.

    Returns:
      ``(params, history)`` with history records ``{"step", "train_loss", **eval}``.
    """
    from lstm_jax import train as train_lib

    key = as_key(key)
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
    bar, own_bar = _open_bar(bar, steps, desc, progress)
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
