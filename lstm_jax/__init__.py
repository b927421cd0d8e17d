"""lstm_jax: functional LSTM/GRU/RNN layers for JAX.

Pure single-example steps ``step(params, carry, x) -> (carry, y)``, a masked ``lax.scan``
sequence layer, stacks/bidirectional/dropout, and batched entry points built with
``jax.vmap``. Nothing here is jitted for you: jit at the outermost level.

The core names below are imported eagerly; every public submodule (``lstm_jax.nn``,
``lstm_jax.train``, ``lstm_jax.backends``, ``lstm_jax.tasks``, ...) is an attribute of the
package, imported on first access, so ``import lstm_jax`` stays light and never imports the
optional heavy dependencies (torch, keras, matplotlib).
"""

import importlib as _importlib

from lstm_jax.cells import (
    GRUParams,
    LSTMCarry,
    LSTMLayerNorm,
    LSTMParams,
    RNNParams,
    gru_step,
    init_gru_cell,
    init_lstm_cell,
    init_rnn_cell,
    lstm_step,
    rnn_step,
)
from lstm_jax.layers import StackParams, gru, init_gru, init_lstm, init_rnn, lstm, rnn, run_stack, zero_state
from lstm_jax.profile import profile_scan
from lstm_jax.scan import scan_cell, scan_sequence

__version__ = "0.1.0"

# public submodules, reachable as attributes after ``import lstm_jax`` (imported on first access)
SUBMODULES = (
    "backends",
    "baselines",
    "cells",
    "checkpoint",
    "data",
    "datasets",
    "distributed",
    "interop",
    "keys",
    "layers",
    "losses",
    "metrics",
    "nn",
    "profile",
    "scan",
    "seq2seq",
    "sharding",
    "speech",
    "stats",
    "tasks",
    "train",
    "typing",
)


def __getattr__(name: str):
    if name in SUBMODULES:
        return _importlib.import_module(f"lstm_jax.{name}")
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = [
    "GRUParams",
    "LSTMCarry",
    "LSTMLayerNorm",
    "LSTMParams",
    "RNNParams",
    "StackParams",
    "gru",
    "interop",
    "gru_step",
    "init_gru",
    "init_gru_cell",
    "init_lstm",
    "init_lstm_cell",
    "init_rnn",
    "init_rnn_cell",
    "lstm",
    "lstm_step",
    "profile_scan",
    "rnn",
    "rnn_step",
    "run_stack",
    "scan_cell",
    "scan_sequence",
    "zero_state",
]
