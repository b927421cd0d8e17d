"""The cuDNN backend (``impl="cudnn"``): a whole plain-LSTM network in one call of
``jax.experimental.rnn.lstm`` (cuDNN on CUDA, MIOpen on ROCm; no lowering on CPU or TPU).

It serves plain LSTMs (no peephole, LayerNorm or projection) with float32 weights, any number
of layers, one or two directions, and no dropout (cuDNN's dropout has a fixed seed and no
state, so it cannot reproduce the masks ``layers.run_stack`` draws). ``unroll``, ``hoist``
have no meaning here and are ignored.

Two halves, so that the packing can be tested without a GPU:

* ``pack_weights`` / ``pack_state`` / ``unpack_state``: our ``StackParams`` and
  ``[b, L, D, d]`` states in cuDNN's layout. cuDNN's weights are one flat float32 vector in
  torch's layout (see ``jax.experimental.rnn``): all matrices first, per pseudo-layer
  (fwd-0, rev-0, fwd-1, ...) ``W_ih: [4H, in]`` then ``W_hh: [4H, H]``; then all biases,
  ``b_ih`` then ``b_hh`` per pseudo-layer. Gates i, f, g, o in both. Our ``w_x: [d_in, 4H]``
  is ``W_ih.T``, ``w_h`` is ``W_hh.T``; our single bias ``b`` goes in ``b_ih`` and ``b_hh``
  is zero.
* ``cudnn_stack(params, xs, ..., kernel=...)``: the network call; ``kernel`` has the
  signature of ``jax.experimental.rnn.lstm`` (``CUDNN_KERNEL``, the default) and the CPU
  tests pass ``reference_kernel`` (``jax.experimental.rnn.lstm_ref`` on the unpacked weights).

Semantics (checked against the source of ``jax.experimental.rnn``): ``seq_lengths`` must be
int32; cuDNN runs the padded, batch-major layout, so the reverse direction reads the valid
prefix reversed and ``h_n, c_n`` are the states at the last valid step, as ours. Padding of
``xs`` is replaced by zeros before the call (``lstm_ref`` computes through padded steps and
only discards them, so NaN junk there would reach the weight gradients) and the outputs
past each length are set to zero after it (cuDNN fills them with its padding value, 0; the
``where`` makes this independent of that). ``precision=HIGHEST`` turns TF32 off in cuDNN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.typing import Array

__all__ = [
    "CUDNN_KERNEL",
    "cudnn_stack",
    "pack_state",
    "pack_weights",
    "reference_kernel",
    "run",
    "unpack_state",
    "unsupported",
]

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def _cudnn_kernel(*args, **kwargs):
    from jax.experimental import rnn  # imported on first use

    return rnn.lstm(*args, **kwargs)


CUDNN_KERNEL: Callable = _cudnn_kernel


# --------------------------------------------------------------------------- support
def _plain_f32_reason(params) -> Optional[str]:
    hidden = set()
    for layer in params.layers:
        for p in layer:
            if not isinstance(p, LSTMParams):
                return f"{type(p).__name__} cells (cuDNN runs LSTMParams only)"
            extras = [n for n in ("w_peep", "ln", "w_proj") if getattr(p, n) is not None]
            if extras:
                return f"LSTM cells with {', '.join(extras)} (cuDNN runs plain LSTMs)"
            dtypes = sorted({str(jnp.dtype(a.dtype)) for a in (p.w_x, p.w_h, p.b)})
            if dtypes != ["float32"]:
                return f"weights of dtypes {dtypes} (cuDNN runs float32 only)"
            hidden.add(p.w_h.shape[0])
    if len(hidden) != 1:
        return f"layers of hidden sizes {sorted(hidden)} (cuDNN needs one hidden size)"
    return None


def unsupported(params, xs, call, platform: Optional[str] = None) -> Optional[str]:
    """Why the cuDNN backend cannot run this call, or None. ``platform`` defaults to ``jax.default_backend()``."""
    reason = _plain_f32_reason(params)
    if reason is not None:
        return f"expected plain float32 LSTM params, got {reason}"
    if call.compute_dtype is not None and jnp.dtype(call.compute_dtype) != jnp.float32:
        return f"expected compute_dtype None or float32 (cuDNN runs float32), got {jnp.dtype(call.compute_dtype)}"
    if call.uses_dropout:
        return (
            f"expected no dropout (cuDNN's dropout masks are not those of run_stack), got dropout={call.dropout}, "
            f"recurrent_dropout={call.recurrent_dropout}"
        )
    platform = platform or jax.default_backend()
    if platform not in _GPU_PLATFORMS:
        return f"cuDNN needs a CUDA/ROCm GPU, platform is {platform}"
    return None


# --------------------------------------------------------------------------- packing
def pack_weights(params) -> Array:
    """Our ``StackParams`` (plain float32 LSTM cells) as cuDNN's flat weight vector.

    Returns ``[n]`` float32 with ``n = jax.experimental.rnn.get_num_params_in_lstm(d_in, H, L, D == 2)``.
    Differentiable: the gradient of the flat vector flows back to ``w_x``, ``w_h``, ``b``.
    """
    cells = [p for layer in params.layers for p in layer]  # pseudo-layers fwd-0, rev-0, fwd-1, ...
    mats = [m for p in cells for m in (p.w_x.T.reshape(-1), p.w_h.T.reshape(-1))]
    biases = [v for p in cells for v in (p.b, jnp.zeros_like(p.b))]
    return jnp.concatenate(mats + biases).astype(jnp.float32)


def pack_state(state: Array) -> Array:
    """``[b, L, D, H]`` -> cuDNN's ``[L*D, b, H]`` (pseudo-layer ``l*D + d``)."""
    b, num_layers, num_dirs, d_h = state.shape
    return jnp.transpose(state, (1, 2, 0, 3)).reshape(num_layers * num_dirs, b, d_h)


def unpack_state(state: Array, num_layers: int, num_directions: int) -> Array:
    """cuDNN's ``[L*D, b, H]`` -> ``[b, L, D, H]``."""
    _, b, d_h = state.shape
    return jnp.transpose(state.reshape(num_layers, num_directions, b, d_h), (2, 0, 1, 3))


def reference_kernel(
    x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout, bidirectional, precision=None
):
    """``jax.experimental.rnn.lstm_ref`` behind the signature of ``jax.experimental.rnn.lstm``.

    Runs anywhere (pure JAX); unpacks the flat ``weights`` with ``unpack_lstm_weights``, so a
    test through it checks ``pack_weights`` as well as the semantics around the kernel.
    """
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    with jax.default_matmul_precision("highest" if precision == jax.lax.Precision.HIGHEST else "default"):
        return rnn.lstm_ref(
            x,
            h_0,
            c_0,
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            seq_lengths,
            input_size,
            hidden_size,
            num_layers,
            dropout,
            bidirectional,
        )


# --------------------------------------------------------------------------- network
def cudnn_stack(
    params,
    xs: Array,
    *,
    lengths: Optional[Array] = None,
    initial_state: Optional[LSTMCarry] = None,
    kernel: Optional[Callable] = None,
) -> tuple[Array, LSTMCarry]:
    """A whole plain-LSTM network over a batch in one cuDNN call (inputs validated by ``layers.lstm``).

    Args:
      params: ``StackParams`` of plain float32 LSTM cells, one hidden size ``H``.
      xs: ``[b, t, d_in]``.
      lengths: optional ``[b]`` ints in ``[1, t]``.
      initial_state: optional ``LSTMCarry`` with leaves ``[b, L, D, H]``.
      kernel: ``jax.experimental.rnn.lstm`` (default) or a function of its signature.

    Returns:
      ``(ys: [b, t, D*H], LSTMCarry(h: [b, L, D, H], c: [b, L, D, H]))``.
    """
    kernel = CUDNN_KERNEL if kernel is None else kernel
    b, t, d_in = xs.shape
    num_layers, num_dirs = len(params.layers), len(params.layers[0])
    d_h = params.layers[0][0].w_h.shape[0]
    x = xs.astype(jnp.float32)
    if lengths is None:
        seq_lengths = jnp.full((b,), t, jnp.int32)
    else:
        seq_lengths = lengths.astype(jnp.int32)
        x = jnp.where((jnp.arange(t)[None, :] < seq_lengths[:, None])[..., None], x, jnp.zeros_like(x))
    if initial_state is None:
        h0 = c0 = jnp.zeros((num_layers * num_dirs, b, d_h), jnp.float32)
    else:
        h0, c0 = (pack_state(s.astype(jnp.float32)) for s in initial_state)
    with jax.named_scope("cudnn_lstm"):
        ys, h_n, c_n = kernel(
            x,
            h0,
            c0,
            pack_weights(params),
            seq_lengths,
            input_size=d_in,
            hidden_size=d_h,
            num_layers=num_layers,
            dropout=0.0,
            bidirectional=num_dirs == 2,
            precision=jax.lax.Precision.HIGHEST,
        )
    if lengths is not None:
        ys = jnp.where((jnp.arange(t)[None, :] < seq_lengths[:, None])[..., None], ys, jnp.zeros_like(ys))
    final = LSTMCarry(unpack_state(h_n, num_layers, num_dirs), unpack_state(c_n, num_layers, num_dirs))
    return ys, final


def run(params, xs: Array, call, *, kernel: Optional[Callable] = None) -> tuple[Array, LSTMCarry]:
    """``cudnn_stack`` with the options of a ``backends.LayerCall`` (``unroll``/``hoist`` ignored)."""
    return cudnn_stack(params, xs, lengths=call.lengths, initial_state=call.initial_state, kernel=kernel)
