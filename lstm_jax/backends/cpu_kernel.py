"""``impl="cpu_kernel"``: plain float32 LSTM networks with the recurrence in a C++ kernel (XLA FFI).

Per layer and direction (time-major ``[t, b, .]`` inside), as ``backends.pallas`` does on GPU:

1. the input projection ``zx = x W_x + b`` for all steps is ONE large XLA matmul;
2. the forward kernel (``csrc/lstm_cpu.cc``, called through ``jax.ffi.ffi_call``) runs the whole
   recurrence: per step one OpenBLAS GEMM ``zx_t + (h * mask) W_h`` and the gate nonlinearities
   and state update in one vectorised loop (no per-op dispatch, nothing materialised between
   them); lengths are masked inside (frozen carry, zero outputs);
3. under a ``jax.custom_vjp`` the training forward also stores the gate activations and cell
   states, the backward kernel runs the reverse-time loop (one ``dz_t W_h^T`` GEMM per step),
   and ``dW_h = sum_t h_{t-1}^T dz_t`` is one large matmul after it; ``dW_x``, ``db`` and ``dX``
   are JAX's autodiff of step 1, again single large matmuls. A call that is not differentiated
   runs the inference kernel, which stores nothing.

``jax.vmap`` (e.g. a vmapped ensemble) passes the mapped axes to the kernel
(``vmap_method="broadcast_all"``), which runs the members in one call, each with its own ``W_h``.

The backward direction reads the valid prefix reversed (``masking.permute_valid_prefix``), and
dropout masks are drawn exactly as ``layers.run_stack`` draws them (``network.run_network``), so
results equal ``impl="scan"`` to float rounding. Not served (``unsupported`` names them): other
platforms than CPU, peephole / LayerNorm / projection cells, GRU/RNN cells, weights other than
float32, a ``compute_dtype``, forward-mode ``jax.jvp`` (custom VJP; use ``impl="scan"``), and a
machine where the kernel could not be built (``cpu_build.status()`` says why).

>>> from lstm_jax.layers import init_lstm, lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> ys, state = lstm(params, jnp.ones((2, 5, 3)), impl="cpu_kernel")  # doctest: +SKIP
>>> ys.shape, state.h.shape  # doctest: +SKIP
((2, 5, 8), (2, 1, 1, 8))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.backends import cpu_build
from lstm_jax.backends.masking import permute_valid_prefix, zero_padding
from lstm_jax.backends.network import run_network
from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.typing import Array

__all__ = ["cpu_kernel_stack", "run", "unsupported"]


def _cell_reason(p) -> str | None:
    if not isinstance(p, LSTMParams):
        return f"{type(p).__name__} cells (only plain LSTMParams)"
    extras = [name for name in ("w_peep", "ln", "w_proj") if getattr(p, name) is not None]
    if extras:
        return f"LSTM cells with {', '.join(extras)} (only plain LSTMs)"
    dtypes = sorted({jnp.dtype(a.dtype).name for a in (p.w_x, p.w_h, p.b)})
    if dtypes != ["float32"]:
        return f"weights of dtypes {dtypes} (only float32 weights)"
    return None


def unsupported(params, xs, call) -> str | None:
    """Why the cpu_kernel backend cannot run this call (see ``lstm_jax.backends``), or None."""
    if jax.default_backend() != "cpu":
        return f"expected platform cpu, got {jax.default_backend()}"
    for layer in params.layers:
        for p in layer:
            reason = _cell_reason(p)
            if reason:
                return reason
    if call.compute_dtype is not None and jnp.dtype(call.compute_dtype) != jnp.float32:
        return f"expected compute_dtype None or float32, got {jnp.dtype(call.compute_dtype).name}"
    if jnp.dtype(xs.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
        return f"expected float32 inputs, got {jnp.dtype(xs.dtype).name}"
    return cpu_build.status().reason


# --------------------------------------------------------------------------- FFI calls
def _like(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _forward(zx, w_h, h0, c0, lengths, mask, *, store: bool):
    """The forward kernel: ``(ys, h_T, c_T)``, and with ``store`` also ``(acts, cs)``."""
    t, b, g = zx.shape[-3:]
    lead, d_h = zx.shape[:-3], g // 4
    outs = [_like((*lead, t, b, d_h)), _like((*lead, b, d_h)), _like((*lead, b, d_h))]
    if store:
        outs += [_like((*lead, t, b, g)), _like((*lead, t, b, d_h))]
    name = "lstm_jax_cpu_forward_train" if store else "lstm_jax_cpu_forward"
    return jax.ffi.ffi_call(name, outs, vmap_method="broadcast_all")(zx, w_h, h0, c0, lengths, mask)


def _backward(w_h, acts, cs, c0, lengths, mask, dys, dh, dc):
    """The backward kernel: ``(dz [t, b, 4h], dh0, dc0 [b, h])``."""
    outs = [_like(acts.shape), _like(c0.shape), _like(c0.shape)]
    call = jax.ffi.ffi_call("lstm_jax_cpu_backward", outs, vmap_method="broadcast_all")
    return call(w_h, acts, cs, c0, lengths, mask, dys, dh, dc)


# --------------------------------------------------------------------------- custom VJP core
@jax.custom_vjp
def _core(w_h, zx, h0, c0, lengths, mask):
    """The recurrence: ``zx: [t, b, 4*d_h]`` -> ``(ys: [t, b, d_h], h_T, c_T: [b, d_h])``."""
    return tuple(_forward(zx, w_h, h0, c0, lengths, mask, store=False))


def _core_fwd(w_h, zx, h0, c0, lengths, mask):
    ys, h, c, acts, cs = _forward(zx, w_h, h0, c0, lengths, mask, store=True)
    return (ys, h, c), (w_h, h0, c0, lengths, mask, ys, acts, cs)


def _core_bwd(res, cts):
    w_h, h0, c0, lengths, mask, ys, acts, cs = res
    dys, dh, dc = cts
    dz, dh0, dc0 = _backward(w_h, acts, cs, c0, lengths, mask, dys, dh, dc)
    t, b, d_h = ys.shape
    # the (masked) h entering each step's recurrent matmul; at invalid steps dz = 0
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0) * mask[None]
    with jax.named_scope("cpu_kernel_lstm_dw_h"):
        dw_h = h_prev.reshape(t * b, d_h).T @ dz.reshape(t * b, 4 * d_h)
    # lengths are integers (no cotangent); the mask is a constant (the caller stops its gradient)
    return dw_h, dz, dh0, dc0, None, jnp.zeros_like(mask)


_core.defvjp(_core_fwd, _core_bwd)


# --------------------------------------------------------------------------- one layer, the network
def _layer(p: LSTMParams, h0, c0, xs, lengths, reverse: bool, rmask):
    """One layer and direction over ``xs: [t, b, d_in]``: ``((h_T, c_T): [b, d_h], ys: [t, b, d_h])``."""
    t, b, d_in = xs.shape
    d_h = p.w_h.shape[0]
    xs = zero_padding(xs.astype(jnp.float32), lengths)
    if reverse:
        xs = permute_valid_prefix(xs, lengths)
    with jax.named_scope("cpu_kernel_lstm_input_projection"):
        zx = (xs.reshape(t * b, d_in) @ p.w_x + p.b[None]).reshape(t, b, 4 * d_h)
    lens = jnp.full((b,), t, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    mask = jnp.ones((b, d_h), jnp.float32) if rmask is None else jax.lax.stop_gradient(rmask.astype(jnp.float32))
    ys, h, c = _core(p.w_h, zx, h0.astype(jnp.float32), c0.astype(jnp.float32), lens, mask)
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    return (h, c), ys


def cpu_kernel_stack(params, xs: Array, call) -> tuple[Array, LSTMCarry]:
    """A whole (stacked, possibly bidirectional) plain-LSTM network over a batch with the CPU kernel.

    Args:
      params: ``StackParams`` of plain float32 LSTM cells.
      xs: ``[b, t, d_in]``.
      call: a ``backends.LayerCall`` (lengths, initial state, dropout; ``unroll`` and ``hoist`` do
        not apply: the loop is in the kernel and the projection always hoisted).

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``, float32.
    """
    status = cpu_build.status()
    if not status.ok:
        raise ValueError(f"impl='cpu_kernel' cannot run: {status.reason}")

    def layer_fn(p, carry0, inputs, reverse, rmask):
        (h, c), ys = _layer(p, carry0.h, carry0.c, inputs, call.lengths, reverse, rmask)
        return LSTMCarry(h, c), ys

    return run_network(params, xs, call, layer_fn)


def run(params, xs: Array, call) -> tuple[Array, LSTMCarry]:
    """The backend entry point: ``cpu_kernel_stack`` with a ``backends.LayerCall``."""
    return cpu_kernel_stack(params, xs, call)
