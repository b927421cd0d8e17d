"""Floors for a recurrent layer on this machine, and the FLOP counts they rest on.

* **GEMM chain**: ``T`` dependent ``(B, H) @ (H, nH)`` matmuls in a ``lax.scan`` (``n`` = 4
  gates for an LSTM, 3 for a GRU) with nothing else in the loop: the sequential part of a
  forward pass as XLA runs it. A training step has two such chains (forward and the
  ``dh @ W_h^T`` chain of the backward pass), so its chain floor is twice the forward's.
* **FLOP floor**: the layer's matmul FLOPs at the peak rate of one large matmul.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from lstm_jax.profile import peak_matmul_gflops, time_call

N_GATES = {"lstm": 4, "gru": 3}


def layer_flops(kind: str, cfg, mode: str) -> float:
    """Matmul FLOPs of one forward pass (``mode="fwd"``) or training step (``"train"``).

    Forward: ``2 T B (D + H) nH``. The backward pass does twice that (``dh = dz W_h^T``,
    ``dx = dz W_x^T``, ``dW_h``, ``dW_x``), so a training step is three forward passes.
    Elementwise work and the optimizer update are not counted.
    """
    b, t, d, h = cfg
    fwd = 2.0 * t * b * (d + h) * N_GATES[kind] * h
    return fwd if mode == "fwd" else 3.0 * fwd


def gemm_chain_ms(kind: str, cfg, reps: int = 7, jit=jax.jit) -> float:
    """Median ms of ``T`` dependent ``(B, H) @ (H, nH)`` matmuls in a ``lax.scan``."""
    b, t, d, h = cfg
    w = jax.random.normal(jax.random.key(0), (h, N_GATES[kind] * h), jnp.float32) * (0.5 / h**0.5)
    h0 = jnp.ones((b, h), jnp.float32)

    def chain(h0, w):
        def step(hh, _):
            return (hh @ w)[:, :h], None

        return jax.lax.scan(step, h0, None, length=t)[0]

    fn = jit(chain)
    return statistics.median(time_call(fn, h0, w, reps=reps)) * 1e3


def floors(kind: str, cfg, peak_gflops: float, reps: int = 7, jit=jax.jit) -> dict:
    """``{"chain_ms": {"fwd", "train"}, "flop_ms": {"fwd", "train"}}`` for one config."""
    chain = gemm_chain_ms(kind, cfg, reps=reps, jit=jit)
    flop = {mode: layer_flops(kind, cfg, mode) / (peak_gflops * 1e9) * 1e3 for mode in ("fwd", "train")}
    return {"chain_ms": {"fwd": chain, "train": 2 * chain}, "flop_ms": flop}


def peak(n: int = 1024) -> float:
    """Peak matmul GFLOP/s (``n x n @ n x n``, float32, best of 5)."""
    return peak_matmul_gflops(n, "float32", 5)
