"""Weights from ``keras.layers`` LSTM, GRU and SimpleRNN (keras never imported here)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import jax.numpy as jnp

from lstm_jax.cells import GRUParams, LSTMParams, RNNParams
from lstm_jax.interop.common import _jax_of
from lstm_jax.layers import StackParams
from lstm_jax.typing import DType

__all__ = ["from_keras"]


# --------------------------------------------------------------------------- keras -> ours
def from_keras(layer: Any, *, dtype: Optional[DType] = None) -> StackParams:
    """Copy a Keras 3 recurrent layer's weights into lstm_jax ``StackParams`` (1 layer, 1 direction).

    Supported: ``keras.layers.LSTM`` (``kernel [d_in, 4*d_h]`` with gates i, f, c, o = ours,
    ``recurrent_kernel [d_h, 4*d_h]``, ``bias [4*d_h]``), ``keras.layers.GRU`` with
    ``reset_after=True`` (Keras' default, which is PyTorch's GRU; Keras orders the gates
    z, r, h and they are reordered to our r, z, n; ``bias [2, 3*d_h]`` = input and recurrent
    biases), and ``keras.layers.SimpleRNN`` with tanh. The layer must be built, use the
    default activations (tanh, and sigmoid for the gates) and not run backwards.
    ``use_bias=False`` gives zero biases. Dropout rates are not weights and are not copied.

    Keras returns the final state as ``[h, c]`` with shapes ``[b, d_h]``; ours is
    ``LSTMCarry(h, c)`` with ``[b, L=1, D=1, d_h]``.

    Args:
      layer: the Keras layer.
      dtype: optional dtype of the returned arrays.

    Returns:
      ``StackParams(((cell,),))`` with an ``LSTMParams``, ``GRUParams`` or ``RNNParams`` cell.

    >>> import keras, numpy as np, jax.numpy as jnp, lstm_jax  # KERAS_BACKEND=jax
    >>> layer = keras.layers.LSTM(8, return_sequences=True)
    >>> ys_keras = layer(np.ones((4, 10, 3), np.float32))
    >>> ys, state = lstm_jax.lstm(from_keras(layer), jnp.ones((4, 10, 3)))  # ys == ys_keras
    >>> ys.shape
    (4, 10, 8)
    """
    if "keras" not in sys.modules:
        raise TypeError(f"expected a keras.layers.LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
    import keras

    kinds = {keras.layers.LSTM: "LSTM", keras.layers.GRU: "GRU", keras.layers.SimpleRNN: "SimpleRNN"}
    name = next((n for cls, n in kinds.items() if isinstance(layer, cls)), None)
    if name is None:
        raise TypeError(f"expected a keras.layers.LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
    if not layer.built:
        raise ValueError(
            f"expected a built keras {name} layer (call it once or use .build(input_shape)), got an unbuilt one"
        )
    if layer.go_backwards:
        raise ValueError(f"expected a keras {name} with go_backwards=False, got go_backwards=True")
    cell = layer.cell
    if cell.activation is not keras.activations.tanh:
        raise ValueError(f"expected a keras {name} with activation='tanh', got {cell.activation!r}")
    if name != "SimpleRNN" and cell.recurrent_activation is not keras.activations.sigmoid:
        raise ValueError(
            f"expected a keras {name} with recurrent_activation='sigmoid', got {cell.recurrent_activation!r}"
        )
    w_x = _jax_of(cell.kernel, dtype)
    w_h = _jax_of(cell.recurrent_kernel, dtype)
    cols = w_h.shape[-1]
    if name == "GRU":
        if not cell.reset_after:
            raise ValueError(
                "expected a keras GRU with reset_after=True (the PyTorch/cuDNN convention lstm_jax uses), "
                "got reset_after=False"
            )
        if cell.use_bias:
            bias = _jax_of(cell.bias, dtype)
            b_x, b_h = bias[0], bias[1]
        else:
            b_x = b_h = jnp.zeros((cols,), w_x.dtype)

        def zrh_to_rzn(a):  # keras gate order z, r, h -> ours r, z, n
            z, r, h = jnp.split(a, 3, axis=-1)
            return jnp.concatenate([r, z, h], axis=-1)

        params = GRUParams(w_x=zrh_to_rzn(w_x), w_h=zrh_to_rzn(w_h), b_x=zrh_to_rzn(b_x), b_h=zrh_to_rzn(b_h))
    else:
        b = _jax_of(cell.bias, dtype) if cell.use_bias else jnp.zeros((cols,), w_x.dtype)
        params = (LSTMParams if name == "LSTM" else RNNParams)(w_x=w_x, w_h=w_h, b=b)  # type: ignore[assignment]
    return StackParams(((params,),))
