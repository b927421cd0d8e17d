"""lstm_jax: functional LSTM/GRU/RNN layers for JAX.

Pure single-example steps ``step(params, carry, x) -> (carry, y)``, a masked ``lax.scan``
sequence layer, stacks/bidirectional/dropout, and batched entry points built with
``jax.vmap``. Nothing here is jitted for you: jit at the outermost level.
"""

from lstm_jax import interop  # noqa: F401  (imports torch/flax/keras only inside its functions)
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
