"""``impl="pallas"``: LSTM networks (plain or peephole), the time loop inside one Pallas kernel per layer/direction.

Per layer and direction (time-major ``[t, b, .]`` inside):

1. the input projection ``zx = x W_x + b`` for all steps is ONE large matmul, outside the kernel;
2. the forward kernel (``pallas_kernels.forward``) runs the whole recurrence in a
   ``lax.fori_loop`` in its body; ``W_h`` is read once and stays live across the loop; the grid
   spans batch tiles of ``block_b`` rows and no state crosses grid programs; lengths are masked
   inside the loop (frozen carry, zero outputs, final state at the last valid step); the
   variational recurrent-dropout mask is a kernel input;
3. under a ``jax.custom_vjp``, the forward stores the gate derivatives (``6*d_h`` numbers per
   example and step, as ``backends.fused`` with ``memory="gates"``), the backward kernel runs
   the reverse-time loop in one kernel (one ``dz_t W_h^T`` GEMM per step), and the weight
   gradient ``dW_h = sum_t h_{t-1}^T dz_t`` is one large matmul after it; ``dW_x``, ``db`` and
   ``dX`` are JAX's autodiff of step 1, again single large matmuls.

The backward direction reads the valid prefix reversed (``fused.permute_valid_prefix``), and
dropout masks are drawn exactly as ``layers.run_stack`` / ``fused.fused_stack`` draw them.

Which Pallas API, and why
-------------------------
Read from jax 0.10.2 (``jax/_src/pallas/pallas_call.py``): on CPU, ``pl.pallas_call`` runs only
with ``interpret=True`` (a jitted scan over the grid); on CUDA it lowers to Mosaic GPU when
``compiler_params`` is None or a ``plgpu.CompilerParams`` (the default since
``jax_pallas_use_mosaic_gpu=True``; ``pallas_call`` for Mosaic GPU is deprecated in favour of
``plgpu.kernel``), and to Triton when ``compiler_params`` is a ``pallas.triton.CompilerParams``.
This module uses ``pl.pallas_call`` with explicit Triton compiler params on GPU and
``interpret=True`` on CPU, because:

* the same kernel body (refs, ``jnp.dot`` on values, ``fori_loop``, ``jnp.where``) then runs in
  interpret mode on CPU, where it is tested here, and lowers through Triton on an H200;
* a Mosaic GPU kernel (``plgpu.kernel``) needs explicit GMEM->SMEM copies, barriers and
  ``wgmma`` with layout rules (M % 64 == 0, N <= 256) that the CPU interpreter does not check:
  without a GPU in the loop it could not be written with any confidence that it lowers.
  The Triton lowering is deprecated but still present; moving the body to ``plgpu.kernel`` is the
  follow-up once a GPU run has validated the algorithm and the numbers.

The kernel bodies only use loads/stores of ``[block_b, d_h]`` / ``[d_h, d_h]`` ref slices at static
gate offsets (no slicing of loaded values, which Triton cannot do), so on GPU ``block_b`` and
``d_h`` must be powers of two (Triton tensors) and ``block_b >= 16`` (Triton's ``dot``).

Which sizes take which path
---------------------------
``w_h`` is ``16 d_h^2`` bytes in float32 and ``8 d_h^2`` in bfloat16; one H200 SM has ~227 KiB
of shared memory. On GPU this backend serves ``d_h`` in {16, 32, 64} in float32 (64 KiB at 64)
and {16, ..., 128} with ``compute_dtype=jnp.bfloat16`` (128 KiB at 128); ``unsupported`` refuses
larger or non-power-of-two ``d_h`` with the reason (a split of ``W_h`` over a cluster of CTAs,
or bf16 at ``d_h = 256``, is not implemented), so no call falls into a kernel that cannot fit.
On CPU every ``d_h`` runs (interpret mode: for tests, slow). TPU is refused (the kernel targets
the GPU lowerings). ``impl="auto"`` picks this backend only where ``AUTO_ORDER`` lists it.

Beyond cuDNN: variational recurrent dropout (the mask is a kernel input) and peephole LSTMs
(``w_peep``: ``i, f`` see ``c_{t-1}``, ``o`` sees ``c_t``; the kernels take ``peep: [3, d_h]``, the
forward also stores the cell states and ``d peep`` is a reduction after the backward loop).

Not served (``unsupported`` names them; use ``"scan"``): LayerNorm and projection cells and
GRU/RNN cells (each changes the kernel's cell math and its residuals -- LayerNorm needs row
reductions over ``4*d_h`` inside the loop, a projection a second resident matrix and ``d_out !=
d_h`` tiles, GRU other gates -- so they fall back rather than grow three more kernel variants that
no GPU run has checked); weights other than float32; a ``compute_dtype`` other than float32
or bfloat16; forward-mode ``jax.jvp`` (custom VJP).

Numerics: the carry, gates and accumulation are float32; matmuls (in and out of the kernels) use
JAX's default matmul precision, so on GPU float32 runs as TF32 unless
``jax.default_matmul_precision("highest")`` is set (as for ``"scan"``). With ``compute_dtype=bfloat16``
the matmul operands are bfloat16, rounded where ``"scan"`` rounds them.

Verified on CPU only (interpret mode): outputs, final states and gradients against
``impl="scan"`` (``tests/test_backend_pallas.py``). NOT verified on a GPU: that the Triton lowering
accepts these kernels on the H200, that ``W_h`` stays on chip (Triton chooses registers or
shared memory for loop-invariant values; it may spill), and the speed.

>>> from lstm_jax.layers import init_lstm, lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> ys, state = lstm(params, jnp.ones((2, 5, 3)), impl="pallas")
>>> ys.shape, state.h.shape
((2, 5, 8), (2, 1, 1, 8))
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from lstm_jax.backends import pallas_kernels as pk
from lstm_jax.backends.masking import permute_valid_prefix, zero_padding
from lstm_jax.backends.network import run_network
from lstm_jax.cells import LSTMCarry, LSTMParams
from lstm_jax.typing import Array

__all__ = ["GPU_MAX_D_H", "pallas_stack", "run", "unsupported"]

# the largest d_h whose w_h fits one SM's shared memory, per compute dtype (see module docstring)
GPU_MAX_D_H = {"float32": 64, "bfloat16": 128}
_GPU_MIN_BLOCK_B = 16  # Triton's dot needs M >= 16


def _compute_dtype_name(compute_dtype) -> str | None:
    name = "float32" if compute_dtype is None else jnp.dtype(compute_dtype).name
    return name if name in GPU_MAX_D_H else None


def _cell_reason(p) -> str | None:
    if not isinstance(p, LSTMParams):
        return f"{type(p).__name__} cells (only plain LSTMParams)"
    extras = [name for name in ("ln", "w_proj") if getattr(p, name) is not None]
    if extras:
        return f"LSTM cells with {', '.join(extras)} (only plain or peephole LSTMs)"
    dtypes = sorted({jnp.dtype(a.dtype).name for a in jax.tree_util.tree_leaves(p)})
    if dtypes != ["float32"]:
        return f"weights of dtypes {dtypes} (only float32 weights)"
    return None


def _gpu_reason(d_h: int, cdt: str) -> str | None:
    limit = GPU_MAX_D_H[cdt]
    if d_h & (d_h - 1) or not 16 <= d_h <= limit:
        return (
            f"expected d_h a power of two in [16, {limit}] for {cdt} on GPU (w_h of {16 if cdt == 'float32' else 8}"
            f"*d_h^2 bytes resident in one SM), got d_h={d_h}"
        )
    return None


def unsupported(params, xs, call) -> str | None:
    """Why the pallas backend cannot run this call (see ``lstm_jax.backends``), or None."""
    for layer in params.layers:
        for p in layer:
            reason = _cell_reason(p)
            if reason:
                return reason
    cdt = _compute_dtype_name(call.compute_dtype)
    if cdt is None:
        return f"expected compute_dtype None, float32 or bfloat16, got {jnp.dtype(call.compute_dtype).name}"
    platform = jax.default_backend()
    if platform == "gpu":
        return _gpu_reason(params.layers[0][0].w_h.shape[0], cdt)
    if platform != "cpu":
        return f"expected platform cpu (interpret mode) or gpu, got {platform}"
    return None


# --------------------------------------------------------------------------- custom VJP core
@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(cfg: pk.KernelConfig, w_h, peep, zx, h0, c0, lengths, mask):
    """The recurrence: ``zx: [t, b, 4*d_h]`` -> ``(ys: [t, b, d_h], h_T, c_T: [b, d_h])``."""
    return pk.forward(cfg, zx, w_h, peep, h0, c0, lengths, mask, store=False)


def _core_fwd(cfg, w_h, peep, zx, h0, c0, lengths, mask):
    ys, h, c, r, *cs = pk.forward(cfg, zx, w_h, peep, h0, c0, lengths, mask, store=True)
    return (ys, h, c), (w_h, peep, h0, c0, lengths, mask, ys, r, cs)


def _peephole_grads(dz, c0, cs):
    """``d peep: [3, d_h]`` from ``dz: [t, b, 4*d_h]`` and the cell states ``cs: [t, b, d_h]`` (reductions)."""
    d_h = cs.shape[-1]
    c_prev = jnp.concatenate([c0[None], cs[:-1]], axis=0)
    rows = [dz[..., :d_h] * c_prev, dz[..., d_h : 2 * d_h] * c_prev, dz[..., 3 * d_h :] * cs]
    return jnp.stack([jnp.sum(v, axis=(0, 1)) for v in rows])


def _core_bwd(cfg, res, cts):
    w_h, peep, h0, c0, lengths, mask, ys, r, cs = res
    dys, dh, dc = cts
    dz, dh0, dc0 = pk.backward(cfg, r, dys, dh, dc, w_h, peep, lengths, mask)
    dpeep = _peephole_grads(dz, c0, cs[0]) if cfg.peephole else jnp.zeros_like(peep)
    t, b, d_h = ys.shape
    # the (masked) h entering each step's recurrent matmul; at invalid steps dz = 0
    h_prev = jnp.concatenate([h0[None], ys[:-1]], axis=0) * mask[None]
    cdt = w_h.dtype
    with jax.named_scope("pallas_lstm_dw_h"):
        dw_h = jax.lax.dot_general(
            h_prev.reshape(t * b, d_h).astype(cdt),
            dz.reshape(t * b, 4 * d_h).astype(cdt),
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
    # lengths are integers (no cotangent); the mask is a constant (the caller stops its gradient)
    return dw_h.astype(w_h.dtype), dpeep, dz, dh0, dc0, None, jnp.zeros_like(mask)


_core.defvjp(_core_fwd, _core_bwd)


# --------------------------------------------------------------------------- one layer
def _pad_rows(a: Array, rows: int, value=0) -> Array:
    return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, rows), (0, 0)], constant_values=value)


def _layer(cfg: pk.KernelConfig, p: LSTMParams, h0, c0, xs, lengths, reverse: bool, rmask):
    """One LSTM layer and direction over ``xs: [t, b, d_in]``; ``h0, c0: [b, d_h]``, ``lengths: [b]`` or None.

    Returns ``((h_T, c_T): [b, d_h], ys: [t, b, d_h])``, float32.
    """
    t, b, d_in = xs.shape
    d_h = p.w_h.shape[0]
    cdt = jnp.dtype(cfg.compute_dtype)
    xs = zero_padding(xs, lengths)
    if reverse:
        xs = permute_valid_prefix(xs, lengths)
    with jax.named_scope("pallas_lstm_input_projection"):  # as cells.lstm_input_projection, all steps at once
        zx = xs.reshape(t * b, d_in).astype(cdt) @ p.w_x.astype(cdt)
        zx = (zx + jnp.broadcast_to(p.b.astype(cdt), zx.shape)).astype(jnp.float32).reshape(t, b, 4 * d_h)
    lens = jnp.full((b,), t, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    mask = jnp.ones((b, d_h), jnp.float32) if rmask is None else jax.lax.stop_gradient(rmask.astype(jnp.float32))
    pad = -b % cfg.block_b
    if pad:  # padding rows: length 0, so their carry stays zero and their outputs are zero
        zx, h0, c0, mask = _pad_rows(zx, pad), _pad_rows(h0, pad), _pad_rows(c0, pad), _pad_rows(mask, pad, 1)
        lens = jnp.pad(lens, (0, pad))
    peep = jnp.zeros((3, d_h), jnp.float32) if p.w_peep is None else p.w_peep.astype(cdt).astype(jnp.float32)
    cfg = cfg._replace(peephole=p.w_peep is not None)
    ys, h, c = _core(cfg, p.w_h.astype(cdt), peep, zx, h0.astype(jnp.float32), c0.astype(jnp.float32), lens, mask)
    ys, h, c = ys[:, :b], h[:b], c[:b]
    if reverse:
        ys = permute_valid_prefix(ys, lengths)
    return (h, c), ys


# --------------------------------------------------------------------------- network
def _config(b: int, d_h: int, compute_dtype, block_b: int | None, interpret: bool | None) -> pk.KernelConfig:
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if block_b is None:
        block_b = b if interpret else _GPU_MIN_BLOCK_B
    if not isinstance(block_b, int) or block_b < 1:
        raise ValueError(f"expected block_b to be a positive int, got {block_b!r}")
    if not interpret and (block_b & (block_b - 1) or block_b < _GPU_MIN_BLOCK_B):
        raise ValueError(f"expected block_b a power of two >= {_GPU_MIN_BLOCK_B} on GPU, got {block_b}")
    return pk.KernelConfig(
        block_b, bool(interpret), _compute_dtype_name(compute_dtype) or "float32", num_warps=4 if d_h <= 32 else 8
    )


def pallas_stack(
    params, xs: Array, call, *, block_b: int | None = None, interpret: bool | None = None
) -> tuple[Array, LSTMCarry]:
    """A whole (stacked, possibly bidirectional) plain-LSTM network over a batch with the Pallas kernels.

    Args:
      params: ``StackParams`` of plain float32 LSTM cells.
      xs: ``[b, t, d_in]``.
      call: a ``backends.LayerCall`` (lengths, initial state, dropout, compute_dtype; ``unroll`` and
        ``hoist`` do not apply: the loop is in the kernel and the projection always hoisted).
      block_b: batch rows per grid program (default: 16 on GPU, the whole batch in interpret mode).
      interpret: run the kernels in Pallas interpret mode (default: on CPU).

    Returns:
      ``(ys: [b, t, D*d_h], LSTMCarry(h: [b, L, D, d_h], c: [b, L, D, d_h]))``, float32.
    """
    d_h = params.layers[0][0].w_h.shape[0]
    cfg = _config(xs.shape[0], d_h, call.compute_dtype, block_b, interpret)

    def layer_fn(p, carry0, inputs, reverse, rmask):
        (h, c), ys = _layer(cfg, p, carry0.h, carry0.c, inputs, call.lengths, reverse, rmask)
        return LSTMCarry(h, c), ys

    return run_network(params, xs, call, layer_fn)


def run(
    params, xs: Array, call, *, block_b: int | None = None, interpret: bool | None = None
) -> tuple[Array, LSTMCarry]:
    """The backend entry point: ``pallas_stack`` with the options of a ``backends.LayerCall``."""
    return pallas_stack(params, xs, call, block_b=block_b, interpret=interpret)
