"""Training with Optax: state and steps, the ``fit`` loop, truncated BPTT and vmapped ensembles.

The pieces are pure functions that the caller may jit; ``fit`` and ``make_train`` are the two
ready-made loops that jit them.

* ``loss_fn(params, batch, rng) -> (loss, metrics)`` is the user's model: ``batch`` is a pytree
  (usually a dict) of arrays with a leading batch axis, ``rng`` a fresh key per step (``None``
  during evaluation, meaning deterministic: no dropout), ``metrics`` a dict of scalars. A
  ``loss_fn`` returning only the loss is accepted too.
* ``TrainState(params, opt_state, step, rng)``: step ``s`` uses the key ``fold_in(rng, s)``,
  so resuming at step ``s`` reproduces the same randomness.

Modules: ``state`` (``TrainState``, schedules, optimizers), ``steps`` (train/eval steps,
evaluation, one compiled epoch), ``loop`` (``fit``, the loop), ``run_state`` (what a run checkpoints
and how it resumes), ``tbptt`` (truncated backpropagation through time), ``ensemble``
(``make_train`` for ``jax.vmap`` over seeds and learning rates). Every public name is
importable from ``lstm_jax.train`` itself.
"""

from lstm_jax.train.ensemble import TrainConfig, TrainResult, make_train, split_run_key
from lstm_jax.train.loop import fit
from lstm_jax.train.run_state import FitResult
from lstm_jax.train.state import NonFiniteError, TrainState, init_train_state, make_optimizer, make_schedule
from lstm_jax.train.steps import evaluate, evaluate_arrays, make_eval_step, make_train_step, run_epoch
from lstm_jax.train.tbptt import make_tbptt_train_step, tbptt_value_and_grad

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
