"""Whole training runs as one pure function, for ``jax.vmap`` ensembles (purejaxrl's ``make_train``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from lstm_jax.keys import as_key
from lstm_jax.train.state import init_train_state, make_optimizer
from lstm_jax.train.steps import _select, evaluate_arrays, make_eval_step, make_train_step, prepare_data, run_epoch
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = ["TrainConfig", "TrainResult", "split_run_key", "make_train"]


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
            lr,
            clip_norm=self.clip_norm,
            warmup_steps=self.warmup_steps,
            total_steps=total,
            end_fraction=self.end_fraction,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
        )


class TrainResult(NamedTuple):
    """What ``train(key)`` returns; under ``jax.vmap`` every leaf gains a leading member axis."""

    params: PyTree  # best params by config.monitor when monitoring is possible, else final
    final_params: PyTree
    history: dict  # name -> [epochs]: train_*, val_*, nonfinite_steps, active (epoch ran)
    best_epoch: Array  # 1-based, 0 when never improved / not monitoring
    best_metric: Array


def split_run_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """``(init_key, fit_key)`` of a run: ``train(key)`` == ``fit(..., init_fn(init_key), seed=fit_key)``.

    ``key`` may be a ``jax.random.key`` or a legacy ``jax.random.PRNGKey`` (same bits either way).
    """
    init_key, fit_key = jax.random.split(as_key(key))
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

    Example (``loss_fn``, ``init_fn`` and the data as for ``fit``)::

        train = make_train(TrainConfig(epochs=5), loss_fn, init_fn, train, val)
        keys = jnp.stack([jax.random.key(i) for i in range(16)])
        results = jax.jit(jax.vmap(train))(keys)             # 16 models, one program
        results.history["val_loss"].shape                    # (16, 5)
        lrs = jnp.logspace(-4, -2, 16)
        results = jax.jit(jax.vmap(train))(keys, lrs)        # and/or different learning rates
    """
    if config.mode not in ("min", "max"):
        raise ValueError(f"expected mode 'min' or 'max', got {config.mode!r}")
    train_host, val_host, _, nb = prepare_data(train_data, val_data, config.batch_size)
    eval_step = make_eval_step(loss_fn)
    sign = 1.0 if config.mode == "min" else -1.0

    def train(key: PRNGKey, learning_rate=None) -> TrainResult:
        init_key, fit_key = split_run_key(key)
        params = init_fn(init_key)
        optimizer = config.make_optimizer(nb, learning_rate)
        data_key, step_key = jax.random.split(fit_key)
        state = init_train_state(params, optimizer, step_key)
        train_dev = jax.tree_util.tree_map(jnp.asarray, train_host)
        val_dev = None if val_host is None else jax.tree_util.tree_map(jnp.asarray, val_host)
        epoch_body = _epoch_body(config, make_train_step(loss_fn, optimizer), eval_step, train_dev, val_dev, data_key)
        init = (
            state,
            state.params,
            jnp.asarray(jnp.inf * sign, jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), bool),
        )
        (state, best_params, best, best_epoch, _, _), history = jax.lax.scan(
            epoch_body, init, jnp.arange(config.epochs)
        )
        monitored = config.monitor in history
        params_out = best_params if monitored else state.params
        best = best if monitored else jnp.asarray(jnp.nan, jnp.float32)
        return TrainResult(params_out, state.params, history, best_epoch, best)

    return train


def _epoch_body(config: TrainConfig, step_fn: Callable, eval_step: Callable, train_dev, val_dev, data_key) -> Callable:
    """One epoch of ``make_train``'s scan: train, evaluate, track the best params, early-stop."""
    ebs = int(config.eval_batch_size or config.batch_size)
    sign = 1.0 if config.mode == "min" else -1.0
    monitor = config.monitor

    def epoch_body(carry, epoch):
        state, best_params, best, best_epoch, bad, stopped = carry
        new_state, stacked = run_epoch(step_fn, state, train_dev, data_key, epoch, config.batch_size)
        finite = stacked.pop("finite")
        count = jnp.sum(finite.astype(jnp.float32))
        entry = {
            f"train_{k}": jnp.where(count > 0, jnp.sum(jnp.where(finite, v, 0.0)) / count, jnp.nan)
            for k, v in stacked.items()
        }
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

    return epoch_body
