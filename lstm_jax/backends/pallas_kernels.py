"""The two Pallas kernels of ``impl="pallas"``: an LSTM recurrence forward and its reverse-time backward.

Both kernels run the WHOLE time loop inside one kernel (``lax.fori_loop`` in the body); the grid
spans batch tiles only, so no state ever crosses grid programs (GPU programs run in parallel, in
no order). What a kernel sees is only the sequential part of a layer:

* forward: ``z_t = zx_t + (h_{t-1} * mask) @ W_h`` and the cell update, where ``zx`` (the input
  projection plus bias, for all steps) was computed outside as one large matmul;
* backward: the reverse-time loop ``dz_t`` / ``dh_{t-1} = (dz_t @ W_h^T) * mask``, one small GEMM
  per step; the weight gradient ``dW_h = sum_t h_{t-1}^T dz_t`` and everything of the input
  projection are single large matmuls outside (``lstm_jax.backends.pallas``).

Layouts (time-major, gates along the last axis as everywhere in lstm_jax, order i, f, g, o):
``zx: [t, b, 4*d_h]``, ``w_h: [d_h, 4*d_h]``, ``h0, c0, mask: [b, d_h]``, ``lengths: [b]`` int32,
``ys: [t, b, d_h]``, residuals ``r: [t, b, 6*d_h]`` (see ``_cell``). Per gate the kernels read
``[bt, d_h]`` / ``[d_h, d_h]`` *ref* slices (static offsets ``g*d_h``), never slice a loaded value:
Triton cannot slice register tensors, and every loaded block is then ``[bt, d_h]`` (a power of 2).

``b`` must be a multiple of ``block_b`` (the caller pads). The recurrent weights are read from
their ref once, before the loop, and stay live across all iterations (on-chip residency).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lstm_jax.typing import Array

__all__ = ["KernelConfig", "forward", "backward", "N_RES"]

N_RES = 6  # residual rows per step: d c/d z_{i,f,g}, d h/d z_o, E = o (1 - tanh(c)^2), F = f


class KernelConfig(NamedTuple):
    """Static (hashable) settings of both kernels."""

    block_b: int  # batch rows per grid program
    interpret: bool  # run with pallas_call(interpret=True) (CPU)
    compute_dtype: str  # dtype name of the recurrent matmul operands ("float32" or "bfloat16")
    peephole: bool = False  # i, f see c_{t-1} and o sees c_t through the weights ``peep: [3, d_h]``
    num_warps: int = 4  # Triton only
    num_stages: int = 1  # Triton only: the time loop carries a dependency, nothing to pipeline


def _compiler_params(cfg: KernelConfig):
    """Triton compiler params on GPU (explicit: ``compiler_params=None`` would pick Mosaic GPU)."""
    if cfg.interpret:
        return None
    from jax.experimental.pallas import triton as plt  # imported only where it is used

    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _dot(a: Array, w: Array, cdt) -> Array:
    """``a @ w`` with operands in ``cdt`` and float32 accumulation.

    The precision is JAX's default matmul precision at trace time, as for every other matmul of
    lstm_jax: on GPU that is TF32 for float32 operands unless ``jax.default_matmul_precision("highest")``
    is in effect (then the Triton lowering emits IEEE float32).
    """
    return jnp.dot(a.astype(cdt), w, preferred_element_type=jnp.float32)


def _gate_slices(d_h: int):
    return [pl.ds(g * d_h, d_h) for g in range(4)]


# --------------------------------------------------------------------------- forward
def _forward_kernel(
    zx_ref, w_ref, p_ref, h0_ref, c0_ref, len_ref, m_ref, *out_refs, t: int, d_h: int, cdt, store: bool, peephole: bool
):
    """One batch tile: ``zx_ref: [t, bt, 4*d_h]``, ``p_ref: [3, d_h]`` ... -> ``ys_ref: [t, bt, d_h]``,
    ``hT/cT: [bt, d_h]`` (and, if ``store``, ``r_ref: [t, bt, 6*d_h]`` and with peepholes ``cs_ref: [t, bt, d_h]``)."""
    ys_ref, hT_ref, cT_ref = out_refs[:3]
    r_ref = out_refs[3] if store else None
    cs_ref = out_refs[4] if store and peephole else None
    peep = [p_ref[pl.ds(k, 1), :] for k in range(3)] if peephole else None  # [1, d_h] each
    gates = _gate_slices(d_h)
    w = [w_ref[:, sl] for sl in gates]  # [d_h, d_h] each: loaded once, live across the loop
    lens = len_ref[...]  # [bt]
    mask = m_ref[...]  # [bt, d_h]

    def step(s, carry):
        h, c = carry
        hm = h * mask
        z = [zx_ref[s, :, sl] + _dot(hm, wg, cdt) for sl, wg in zip(gates, w)]
        if peephole:
            z[0], z[1] = z[0] + peep[0] * c, z[1] + peep[1] * c
        i, f, g = jax.nn.sigmoid(z[0]), jax.nn.sigmoid(z[1]), jnp.tanh(z[2])
        c_new = f * c + i * g
        o = jax.nn.sigmoid(z[3] + peep[2] * c_new if peephole else z[3])
        tc = jnp.tanh(c_new)
        h_new = o * tc
        valid = (lens > s)[:, None]  # [bt, 1]
        ys_ref[s] = jnp.where(valid, h_new, 0.0)
        if store:
            res = (g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tc * o * (1 - o), o * (1 - tc * tc))
            for k, v in enumerate(res):  # zero at invalid steps: the cotangents pass through unchanged
                r_ref[s, :, pl.ds(k * d_h, d_h)] = jnp.where(valid, v, 0.0)
            r_ref[s, :, pl.ds(5 * d_h, d_h)] = jnp.where(valid, f, 1.0)
            if peephole:
                cs_ref[s] = jnp.where(valid, c_new, c)
        return jnp.where(valid, h_new, h), jnp.where(valid, c_new, c)

    h, c = jax.lax.fori_loop(0, t, step, (h0_ref[...], c0_ref[...]))
    hT_ref[...] = h
    cT_ref[...] = c


def forward(
    cfg: KernelConfig,
    zx: Array,
    w_h: Array,
    peep: Array,
    h0: Array,
    c0: Array,
    lengths: Array,
    mask: Array,
    store: bool,
):
    """Run the forward kernel over all batch tiles.

    Args:
      zx: ``[t, b, 4*d_h]`` float32, input projection plus bias.
      w_h: ``[d_h, 4*d_h]`` in ``cfg.compute_dtype``.
      peep: ``[3, d_h]`` float32 peephole weights (read only if ``cfg.peephole``).
      h0, c0: ``[b, d_h]`` float32.
      lengths: ``[b]`` int32 (0 for padding rows).
      mask: ``[b, d_h]`` float32 recurrent-dropout multiplier (ones for none).
      store: also return the residuals for the backward kernel.

    Returns:
      ``(ys: [t, b, d_h], h_T: [b, d_h], c_T: [b, d_h])`` plus ``r: [t, b, 6*d_h]`` if ``store`` and then,
      with peepholes, the cell states ``cs: [t, b, d_h]`` (for the peephole weight gradients).
    """
    t, b, n4 = zx.shape
    d_h = n4 // 4
    bt = cfg.block_b
    if b % bt:
        raise ValueError(f"expected a batch that is a multiple of block_b={bt}, got {b}")
    tile = pl.BlockSpec((bt, d_h), lambda i: (i, 0))
    seq = lambda width: pl.BlockSpec((t, bt, width), lambda i: (0, i, 0))  # noqa: E731
    out_shape = [jax.ShapeDtypeStruct((t, b, d_h), jnp.float32)] + [jax.ShapeDtypeStruct((b, d_h), jnp.float32)] * 2
    out_specs = [seq(d_h), tile, tile]
    if store:
        out_shape.append(jax.ShapeDtypeStruct((t, b, N_RES * d_h), jnp.float32))
        out_specs.append(seq(N_RES * d_h))
        if cfg.peephole:
            out_shape.append(jax.ShapeDtypeStruct((t, b, d_h), jnp.float32))
            out_specs.append(seq(d_h))
    kernel = partial(
        _forward_kernel, t=t, d_h=d_h, cdt=jnp.dtype(cfg.compute_dtype), store=store, peephole=cfg.peephole
    )
    with jax.named_scope("pallas_lstm_forward"):
        return pl.pallas_call(
            kernel,
            out_shape=tuple(out_shape),
            grid=(b // bt,),
            in_specs=[
                seq(n4),
                pl.BlockSpec((d_h, n4), lambda i: (0, 0)),
                pl.BlockSpec((3, d_h), lambda i: (0, 0)),
                tile,
                tile,
                pl.BlockSpec((bt,), lambda i: (i,)),
                tile,
            ],
            out_specs=tuple(out_specs),
            interpret=cfg.interpret,
            compiler_params=_compiler_params(cfg),
            name="lstm_forward",
        )(zx, w_h, peep, h0, c0, lengths, mask)


# --------------------------------------------------------------------------- backward
def _backward_kernel(
    r_ref,
    dy_ref,
    dh_ref,
    dc_ref,
    wt_ref,
    p_ref,
    len_ref,
    m_ref,
    dz_ref,
    dh0_ref,
    dc0_ref,
    *,
    t: int,
    d_h: int,
    cdt,
    peephole: bool,
):
    """One batch tile, reverse time: ``r_ref: [t, bt, 6*d_h]``, ``dy_ref: [t, bt, d_h]``,
    ``wt_ref: [4*d_h, d_h]`` (``W_h^T``) -> ``dz_ref: [t, bt, 4*d_h]``, ``dh0/dc0: [bt, d_h]``."""
    gates = _gate_slices(d_h)
    wt = [wt_ref[sl, :] for sl in gates]  # [d_h, d_h] each: loaded once
    peep = [p_ref[pl.ds(k, 1), :] for k in range(3)] if peephole else None
    lens = len_ref[...]
    mask = m_ref[...]

    def step(k, carry):
        dh, dc = carry
        s = t - 1 - k
        valid = (lens > s)[:, None]
        dh = dh + jnp.where(valid, dy_ref[s], 0.0)
        dz_o = r_ref[s, :, pl.ds(3 * d_h, d_h)] * dh
        dc = dc + dh * r_ref[s, :, pl.ds(4 * d_h, d_h)]
        if peephole:  # o saw c_t
            dc = dc + dz_o * peep[2]
        dz = [r_ref[s, :, pl.ds(j * d_h, d_h)] * dc for j in range(3)] + [dz_o]
        dh_prev = _dot(dz[0], wt[0], cdt)
        for j in range(1, 4):
            dh_prev = dh_prev + _dot(dz[j], wt[j], cdt)
        for sl, v in zip(gates, dz):
            dz_ref[s, :, sl] = v
        dc_prev = dc * r_ref[s, :, pl.ds(5 * d_h, d_h)]
        if peephole:  # i and f saw c_{t-1}
            dc_prev = dc_prev + dz[0] * peep[0] + dz[1] * peep[1]
        return jnp.where(valid, dh_prev * mask, dh), dc_prev

    dh, dc = jax.lax.fori_loop(0, t, step, (dh_ref[...], dc_ref[...]))
    dh0_ref[...] = dh
    dc0_ref[...] = dc


def backward(
    cfg: KernelConfig, r: Array, dys: Array, dh: Array, dc: Array, w_h: Array, peep: Array, lengths: Array, mask: Array
):
    """Run the backward kernel over all batch tiles.

    Args:
      r: ``[t, b, 6*d_h]`` residuals from ``forward(..., store=True)``.
      dys: ``[t, b, d_h]`` cotangent of ``ys``.
      dh, dc: ``[b, d_h]`` cotangents of the final ``(h, c)``.
      w_h: ``[d_h, 4*d_h]`` in ``cfg.compute_dtype`` (transposed here, outside the kernel).
      peep: ``[3, d_h]`` float32 (read only if ``cfg.peephole``).
      lengths, mask: as ``forward``.

    Returns:
      ``(dz: [t, b, 4*d_h], dh_0: [b, d_h], dc_0: [b, d_h])``: cotangents of ``zx`` and of the initial state.
    """
    t, b, d_h = dys.shape
    bt = cfg.block_b
    tile = pl.BlockSpec((bt, d_h), lambda i: (i, 0))
    seq = lambda width: pl.BlockSpec((t, bt, width), lambda i: (0, i, 0))  # noqa: E731
    kernel = partial(_backward_kernel, t=t, d_h=d_h, cdt=jnp.dtype(cfg.compute_dtype), peephole=cfg.peephole)
    with jax.named_scope("pallas_lstm_backward"):
        return pl.pallas_call(
            kernel,
            out_shape=(
                jax.ShapeDtypeStruct((t, b, 4 * d_h), jnp.float32),
                jax.ShapeDtypeStruct((b, d_h), jnp.float32),
                jax.ShapeDtypeStruct((b, d_h), jnp.float32),
            ),
            grid=(b // bt,),
            in_specs=[
                seq(N_RES * d_h),
                seq(d_h),
                tile,
                tile,
                pl.BlockSpec((4 * d_h, d_h), lambda i: (0, 0)),
                pl.BlockSpec((3, d_h), lambda i: (0, 0)),
                pl.BlockSpec((bt,), lambda i: (i,)),
                tile,
            ],
            out_specs=(seq(4 * d_h), tile, tile),
            interpret=cfg.interpret,
            compiler_params=_compiler_params(cfg),
            name="lstm_backward",
        )(r, dys, dh, dc, w_h.T, peep, lengths, mask)
