"""``impl="cpu_kernel"``: plain float32 LSTM networks with the recurrence in a C++ kernel (XLA FFI).

Per layer and direction (time-major ``[t, b, .]`` inside):

1. the forward kernel (``csrc/lstm_cpu.cc``, called through ``jax.ffi.ffi_call``) runs the whole
   layer: per step ONE GEMM ``[x_t | h * mask] [W_x; W_h]`` (the input projection fused into the
   recurrent GEMM, so no ``[t, b, 4h]`` projection is ever materialised; its own register-blocked
   micro-kernel over a copy of both weights packed once per call, in panels of one vector
   register's width of hidden units x 4 gates) with ``+ b``, the gate nonlinearities and the state
   update applied to each panel's block of the product while it is in cache (panels split across
   XLA's own intra-op threads within a step when the step is large enough: ``csrc/thread_pool.h``);
   lengths are masked inside (frozen carry, zero outputs), and with lengths the rows are sorted
   longest first on the way in (and back on the way out), so each step's GEMM runs over the rows
   still inside their sequences only: a padded batch pays for its valid steps, as a packed one
   would;
2. under a ``jax.custom_vjp`` the training forward also stores the gate activations and cell
   states (non-temporal stores: only the backward call reads them back); the backward kernel runs the reverse-time loop (per step the ``dz_t W_h^T`` GEMM over
   packed panels of ``W_h^T``, split along ``4h`` in chunks that stay in L1, each panel's block
   followed at once by the gate derivatives of step ``t - 1``), writing ``dz`` over the stored
   activations; then a third kernel computes ``[dW_x; dW_h] = [X | H_prev]^T dz`` (``H_prev`` the
   masked ``h`` entering each step, packed straight from ``ys`` and ``h0``: ``csrc/weight_grads.h``)
   and ``db`` as one blocked GEMM, and ``dX = dz W_x^T`` is one XLA matmul. A call that is not
   differentiated runs the inference kernel, which stores nothing.

``jax.vmap`` (e.g. a vmapped ensemble) passes the mapped axes to the kernel
(``vmap_method="broadcast_all"``), which runs the members in one call, each with its own ``W_h``.

The backward direction reads the valid prefix reversed (``masking.permute_valid_prefix``), and
dropout masks are drawn exactly as ``layers.run_stack`` draws them (``network.run_network``), so
results equal ``impl="scan"`` to float rounding. Not served (``unsupported`` names them): other
platforms than CPU, peephole / LayerNorm / projection cells, GRU/RNN cells, weights other than
float32, a ``compute_dtype`` other than float32 or bfloat16, forward-mode ``jax.jvp`` (custom
VJP; use ``impl="scan"``), and a machine where the kernel could not be built
(``cpu_build.status()`` says why).

``compute_dtype=jnp.bfloat16`` is mixed precision as ``torch.autocast`` does it: the weights and
inputs are rounded to bfloat16 values, the products are exact in float32 and accumulate in
float32 (in the kernel; ``dX`` and ``dW_x`` as bfloat16 GEMMs with float32 accumulation), and
the recurrence, gates, carry and outputs stay float32 (``h`` is not rounded). It equals
``impl="scan"`` with the same ``compute_dtype`` to bfloat16 rounding (scan also rounds ``h``
before its recurrent matmul), not to float32 rounding.

>>> from lstm_jax.layers import init_lstm, lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> ys, state = lstm(params, jnp.ones((2, 5, 3)), impl="cpu_kernel")  # doctest: +SKIP
>>> ys.shape, state.h.shape  # doctest: +SKIP
((2, 5, 8), (2, 1, 1, 8))
"""

from __future__ import annotations

from functools import partial

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
    if call.compute_dtype is not None and jnp.dtype(call.compute_dtype) not in (_F32, _BF16):
        return f"expected compute_dtype None, float32 or bfloat16, got {jnp.dtype(call.compute_dtype).name}"
    if jnp.dtype(xs.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)):
        return f"expected float32 inputs, got {jnp.dtype(xs.dtype).name}"
    return cpu_build.status().reason


_F32, _BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)


# --------------------------------------------------------------------------- bfloat16 helpers
def _project_bf16_bwd(res, g):
    """The input gradients of ``x @ w`` (``x: [n, d_in]``, ``w: [d_in, g]`` as bfloat16) for the
    float32 cotangent ``g: [n, g]``: ``(dX, dW)`` as bfloat16 GEMMs with float32 results."""
    xb, wb = res
    gb = g.astype(_BF16)
    return jnp.dot(gb, wb.T, preferred_element_type=jnp.float32), jnp.dot(xb.T, gb, preferred_element_type=jnp.float32)


def _round_bf16(a):
    """``a`` rounded to bfloat16 values, kept float32; the gradient passes straight through."""
    return a + jax.lax.stop_gradient(a.astype(_BF16).astype(jnp.float32) - a)


# --------------------------------------------------------------------------- FFI calls
def _like(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _forward(xs, w_x, b, w_h, h0, c0, lengths, mask, *, store: bool):
    """The forward kernel: ``(ys, h_T, c_T)``, and with ``store`` also ``(acts, cs)``."""
    t, bsz, _ = xs.shape[-3:]
    lead, d_h = xs.shape[:-3], w_h.shape[-2]
    outs = [_like((*lead, t, bsz, d_h)), _like((*lead, bsz, d_h)), _like((*lead, bsz, d_h))]
    if store:
        outs += [_like((*lead, t, bsz, 4 * d_h)), _like((*lead, t, bsz, d_h))]
    name = "lstm_jax_cpu_forward_train" if store else "lstm_jax_cpu_forward"
    return jax.ffi.ffi_call(name, outs, vmap_method="broadcast_all")(xs, w_x, b, w_h, h0, c0, lengths, mask)


def _weight_grads(xs, ys, h0, mask, dz):
    """The weight-gradient kernel: ``(dW = [X | H_prev]^T dz: [d_in + d_h, 4 d_h], db: [4 d_h])`` with
    ``X = xs`` and ``H_prev`` the masked ``h`` entering each step (``h0``, then ``ys``), packed as the
    GEMM reads them (never written out)."""
    d_in, d_h = xs.shape[-1], ys.shape[-1]
    lead = xs.shape[:-3]
    outs = [_like((*lead, d_in + d_h, 4 * d_h)), _like((*lead, 4 * d_h))]
    return jax.ffi.ffi_call("lstm_jax_cpu_weight_grads", outs, vmap_method="broadcast_all")(xs, ys, h0, mask, dz)


def _backward(w_h, acts, cs, c0, lengths, mask, dys, dh, dc):
    """The backward kernel: ``(dz [t, b, 4h], dh0, dc0 [b, h])``; ``dz`` is written over ``acts``
    (each step's gate activations are read once, just before that step's ``dz`` replaces them),
    which saves allocating and faulting in a second buffer of that size."""
    outs = [_like(acts.shape), _like(c0.shape), _like(c0.shape)]
    call = jax.ffi.ffi_call("lstm_jax_cpu_backward", outs, vmap_method="broadcast_all", input_output_aliases={1: 0})
    return call(w_h, acts, cs, c0, lengths, mask, dys, dh, dc)


# --------------------------------------------------------------------------- custom VJP core
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(bf16: bool, w_x, w_h, b, xs, h0, c0, lengths, mask):
    """One layer: ``xs: [t, b, d_in]`` -> ``(ys: [t, b, d_h], h_T, c_T: [b, d_h])``."""
    return tuple(_forward(xs, w_x, b, w_h, h0, c0, lengths, mask, store=False))


def _core_fwd(bf16, w_x, w_h, b, xs, h0, c0, lengths, mask):
    ys, h, c, acts, cs = _forward(xs, w_x, b, w_h, h0, c0, lengths, mask, store=True)
    return (ys, h, c), (w_x, w_h, xs, h0, c0, lengths, mask, ys, acts, cs)


def _core_bwd(bf16, res, cts):
    w_x, w_h, xs, h0, c0, lengths, mask, ys, acts, cs = res
    dys, dh, dc = cts
    dz, dh0, dc0 = _backward(w_h, acts, cs, c0, lengths, mask, dys, dh, dc)
    t, b, d_h = ys.shape
    d_in = xs.shape[-1]
    flat_dz = dz.reshape(t * b, 4 * d_h)
    with jax.named_scope("cpu_kernel_lstm_weight_grads"):
        if bf16:  # xs and w_x hold bfloat16 values: exact as bfloat16 operands
            # the (masked) h entering each step's recurrent matmul; at invalid steps dz = 0
            h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0) * mask[None]
            dx, dw_x = _project_bf16_bwd((xs.reshape(t * b, d_in).astype(_BF16), w_x.astype(_BF16)), flat_dz)
            dw_h, db = h_prev.reshape(t * b, d_h).T @ flat_dz, flat_dz.sum(0)
        else:  # [dW_x; dW_h] = [x_t | h_{t-1}]^T dz_t summed over steps: one GEMM in the kernel
            dw, db = _weight_grads(xs, ys, h0, mask, dz)
            dw_x, dw_h = dw[:d_in], dw[d_in:]
            dx = flat_dz @ w_x.T
    # lengths are integers (no cotangent); the mask is a constant (the caller stops its gradient)
    return dw_x, dw_h, db, dx.reshape(t, b, d_in), dh0, dc0, None, jnp.zeros_like(mask)


_core.defvjp(_core_fwd, _core_bwd)


# --------------------------------------------------------------------------- one layer, the network
@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _take_rows(order, inv, a, axis: int):
    """``a`` with its rows (along ``axis``) in ``order``; ``inv`` is the inverse permutation. Its
    VJP is the inverse gather (the transpose of a permutation), not the scatter-add autodiff of
    ``jnp.take`` would run."""
    return jnp.take(a, order, axis=axis)


def _take_rows_fwd(order, inv, a, axis):
    return jnp.take(a, order, axis=axis), (order, inv)


def _take_rows_bwd(axis, res, g):
    order, inv = res
    return None, None, jnp.take(g, inv, axis=axis)


_take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _layer(p: LSTMParams, h0, c0, xs, lengths, reverse: bool, rmask, bf16: bool = False):
    """One layer and direction over ``xs: [t, b, d_in]``: ``((h_T, c_T): [b, d_h], ys: [t, b, d_h])``;
    ``bf16``: the mixed-precision path of ``compute_dtype=bfloat16`` (module docstring)."""
    t, b, _ = xs.shape
    d_h = p.w_h.shape[0]
    xs = zero_padding(xs.astype(jnp.float32), lengths)
    if reverse:
        xs = permute_valid_prefix(xs, lengths)
    w_x, w_h, bias = p.w_x, p.w_h, p.b
    if bf16:
        xs, w_x, w_h, bias = (_round_bf16(a) for a in (xs, w_x, w_h, bias))
    mask = jnp.ones((b, d_h), jnp.float32) if rmask is None else jax.lax.stop_gradient(rmask.astype(jnp.float32))
    h0, c0 = h0.astype(jnp.float32), c0.astype(jnp.float32)
    if lengths is None:
        ys, h, c = _core(bf16, w_x, w_h, bias, xs, h0, c0, jnp.full((b,), t, jnp.int32), mask)
    else:  # rows longest first: the kernel's per-step GEMMs skip the rows past the last live one
        lens = lengths.astype(jnp.int32)
        order = jnp.argsort(-lens, stable=True)
        inv = jnp.argsort(order)
        rows = partial(_take_rows, order, inv)
        ys, h, c = _core(bf16, w_x, w_h, bias, rows(xs, 1), rows(h0, 0), rows(c0, 0), lens[order], mask[order])
        back = partial(_take_rows, inv, order)
        ys, h, c = back(ys, 1), back(h, 0), back(c, 0)
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    return (h, c), ys


def cpu_kernel_stack(params, xs: Array, call) -> tuple[Array, LSTMCarry]:
    """A whole (stacked, possibly bidirectional) plain-LSTM network over a batch with the CPU kernel.

    Args:
      params: ``StackParams`` of plain float32 LSTM cells.
      xs: ``[b, t, d_in]``.
      call: a ``backends.LayerCall`` (lengths, initial state, dropout, ``compute_dtype`` float32 or
        bfloat16; ``unroll`` and ``hoist`` do not apply: the loop is in the kernel and the
        projection fused into its GEMM).

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``, float32.
    """
    status = cpu_build.status()
    if not status.ok:
        raise ValueError(f"impl='cpu_kernel' cannot run: {status.reason}")

    bf16 = call.compute_dtype is not None and jnp.dtype(call.compute_dtype) == _BF16

    def layer_fn(p, carry0, inputs, reverse, rmask):
        (h, c), ys = _layer(p, carry0.h, carry0.c, inputs, call.lengths, reverse, rmask, bf16)
        return LSTMCarry(h, c), ys

    return run_network(params, xs, call, layer_fn)


def run(params, xs: Array, call) -> tuple[Array, LSTMCarry]:
    """The backend entry point: ``cpu_kernel_stack`` with a ``backends.LayerCall``."""
    return cpu_kernel_stack(params, xs, call)
