"""Weight interop with PyTorch, Flax and Keras: copy a peer's weights into lstm_jax params
(and, for PyTorch, back out again).

Every mapping here is exact (no approximation): the peers compute the same equations as
``lstm_jax.cells`` once their weights are laid out our way.

* ``from_torch(module)``: ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` -> ``StackParams``;
  ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` -> one cell's params.
* ``to_torch(params)``: ``StackParams`` -> a new ``torch.nn.LSTM`` / ``GRU`` / ``RNN``; one
  cell's params -> a ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``.
* ``from_flax(params_or_module)``: flax linen / NNX ``LSTMCell``, ``OptimizedLSTMCell`` and
  ``GRUCell`` -> ``LSTMParams`` / ``GRUParams``.
* ``from_keras(layer)``: a Keras 3 ``LSTM`` / ``GRU`` (``reset_after=True``) / ``SimpleRNN``
  layer -> ``StackParams`` with one layer and one direction.

Weight layout (ours vs theirs), ``n`` gates stacked on the last axis:

=========================  ==============================  ===============================
ours                        torch                           keras / flax
=========================  ==============================  ===============================
``w_x: [d_in, n*d_h]``      ``weight_ih.T``                 ``kernel`` (per-gate for linen)
``w_h: [d_out, n*d_h]``     ``weight_hh.T``                 ``recurrent_kernel`` / ``h*``
``b: [4*d_h]`` (LSTM)       ``bias_ih + bias_hh``           ``bias``
``w_proj: [d_h, d_out]``    ``weight_hr.T``                 --
=========================  ==============================  ===============================

PyTorch, Flax and Keras are imported only inside these functions; none is a dependency of
lstm_jax. Nothing is jitted. Parameters keep the peer's floating dtype unless ``dtype`` is
given. Dropout settings of the peer modules are not weights and are not copied: pass
``dropout=...`` to ``lstm()`` instead.
"""

from lstm_jax.interop.flax_io import from_flax
from lstm_jax.interop.keras_io import from_keras
from lstm_jax.interop.torch_io import from_torch, to_torch

__all__ = ["from_torch", "to_torch", "from_flax", "from_keras"]
