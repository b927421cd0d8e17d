"""Shape-letter legend and array aliases used in every docstring of lstm_jax.

Shape letters
-------------
``b``      batch size (only at the user-facing, vmapped level)
``t``      number of time steps (time-major inside one example: ``xs: [t, d_in]``)
``d_in``   input features of a layer
``d_h``    hidden units of a cell (size of the LSTM cell state ``c``)
``d_out``  size of the emitted hidden state ``h``: ``d_h``, or ``proj_size`` for LSTMP
``L``      number of stacked layers
``D``      number of directions (1, or 2 when bidirectional)
``n``      number of gates stacked on the last weight axis (LSTM 4: i, f, g, o; GRU 3: r, z, n)

Layout conventions
------------------
* Inside a scan everything is one example, time-major: ``xs: [t, d_in]``, ``h: [d_out]``.
* The user-facing functions (``lstm``, ``gru``, ``rnn``) are batch-major: ``xs: [b, t, d_in]``,
  and are ``jax.vmap`` of the per-example functions.
* Final states are ``[b, L, D, d]``: batch, layer, direction (0 forward, 1 backward), units.
"""

from __future__ import annotations

from typing import Any, Union

import jax
import numpy as np

Array = jax.Array
ArrayLike = Union[jax.Array, np.ndarray, float, int]
PRNGKey = jax.Array
DType = Any
PyTree = Any

__all__ = ["Array", "ArrayLike", "PRNGKey", "DType", "PyTree"]
