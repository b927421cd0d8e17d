"""Training state and optimizers: ``TrainState``, learning-rate schedules, the Optax chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax.data import _key_of
from lstm_jax.typing import Array, PRNGKey, PyTree

__all__ = ["TrainState", "NonFiniteError", "make_schedule", "make_optimizer", "init_train_state"]


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
    """Fresh state: ``optimizer.init(params)``, step 0, and ``key`` as base rng.

    ``key``: an int seed, a ``jax.random.key`` or a legacy ``jax.random.PRNGKey`` (same bits).
    """
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), _key_of(key, "key"))
