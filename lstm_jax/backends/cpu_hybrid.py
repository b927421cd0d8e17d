"""``impl="cpu_hybrid"``: the XLA scan when a call is not differentiated, the CPU kernel when it is.

A ``jax.custom_vjp`` runs its primal function when nobody differentiates the call and its
``fwd``/``bwd`` pair when somebody does, so one call can take the fastest program for each
(``benchmarks/cpu_speed.py``): the primal is ``backends.scan`` (XLA fuses the per-step input
projection, gates and state update around its GEMM; at ``d_h < 128`` on an AVX2 CPU as fast a
forward pass as the kernel's, which wins above and on AVX-512), and ``fwd``/``bwd`` are
``jax.vjp`` of ``backends.cpu_kernel`` (the C++ recurrence with its custom backward; the
fastest train step here). Both compute the same
function (tested against each other to float rounding), so only the speed depends on the path.

Serves what ``cpu_kernel`` serves (plain float32 LSTMs on CPU, the kernel built) except a
bfloat16 ``compute_dtype`` (there the scan and the kernel round differently; ``impl="cpu_kernel"``
runs it); forward-mode AD is refused as for any custom VJP (use ``impl="scan"``).

>>> from lstm_jax.layers import init_lstm, lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> ys, state = lstm(params, jnp.ones((2, 5, 3)), impl="cpu_hybrid")  # doctest: +SKIP
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lstm_jax.backends import cpu_kernel
from lstm_jax.backends import scan as scan_backend
from lstm_jax.typing import Array

__all__ = ["run", "unsupported"]


def unsupported(params, xs, call) -> str | None:
    """Why the cpu_hybrid backend cannot run this call, or None (the reasons of ``cpu_kernel``)."""
    if call.compute_dtype is not None and jnp.dtype(call.compute_dtype) != jnp.float32:
        return (
            f"expected compute_dtype None or float32 (use impl='cpu_kernel'), got {jnp.dtype(call.compute_dtype).name}"
        )
    return cpu_kernel.unsupported(params, xs, call)


def run(params, xs: Array, call):
    """The backend entry point: ``(ys: [b, t, D*d_h], final state)`` for a ``backends.LayerCall``."""
    # the differentiable inputs are explicit arguments; lengths and the dropout key ride along
    # (no cotangent), the rest of the call is static
    static = call._replace(initial_state=None, lengths=None, dropout_key=None)

    def with_call(fn, p, x, state, lengths, key):
        return fn(p, x, static._replace(initial_state=state, lengths=lengths, dropout_key=key))

    @jax.custom_vjp
    def network(p, x, state, lengths, key):
        return with_call(scan_backend.run, p, x, state, lengths, key)

    def network_fwd(p, x, state, lengths, key):
        out, vjp = jax.vjp(lambda p, x, s: with_call(cpu_kernel.run, p, x, s, lengths, key), p, x, state)
        return out, vjp

    def network_bwd(vjp, cts):
        return (*vjp(cts), None, None)

    network.defvjp(network_fwd, network_bwd)
    return network(params, xs, call.initial_state, call.lengths, call.dropout_key)
