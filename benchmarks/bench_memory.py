"""First-call compile time and peak memory of an LSTM training step, per memory mode.

For each ``T`` and each of lstm_jax's implementations (the vmapped scan and the three
``impl="fused*"`` memory modes) this lowers and compiles one training step (value and
gradient of a mean-squared loss, then an Adam update) and reads XLA's buffer assignment:

* ``peak_bytes``: arguments + outputs + temporaries - aliased, from XLA's buffer assignment
  (``CompiledMemoryStats``; its ``peak_memory_in_bytes`` field is not filled in on CPU);
* ``temp_bytes``: XLA's temporaries (everything the step allocates beyond its inputs and
  outputs);
* ``residual_bytes``: what the forward pass keeps for the backward pass beyond the layer's
  inputs (read from the shapes of ``jax.vjp``'s residuals, no compute needed);
* ``hc_bytes``: the size of ``(h, c)`` for every step, the yardstick of the issue.

Nothing is executed, so ``T = 16k`` costs only its compile time.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lstm_jax

IMPLS = ("scan", "fused", "fused_recompute", "fused_checkpoint")


def _train_step(impl: str):
    opt = optax.adam(1e-3)

    def step(params, opt_state, xs, target):
        def loss(p):
            return jnp.mean((lstm_jax.lstm(p, xs, impl=impl)[0] - target) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, opt


def _residual_bytes(impl: str, params, xs) -> int:
    def vjp_of(params, xs):
        return jax.vjp(lambda p, x: lstm_jax.lstm(p, x, impl=impl), params, xs)[1]

    def nbytes(tree):
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))

    return nbytes(jax.eval_shape(vjp_of, params, xs)) - nbytes((params, xs))


def measure(t: int, b: int = 8, d: int = 64, h: int = 256, impls=IMPLS, compiler_options=None) -> list:
    """One row per implementation for sequence length ``t``."""
    params = lstm_jax.init_lstm(jax.random.key(0), d, h)
    xs = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    target = jax.ShapeDtypeStruct((b, t, h), jnp.float32)
    rows = []
    for impl in impls:
        step, opt = _train_step(impl)
        opt_state = jax.eval_shape(opt.init, params)
        start = time.perf_counter()
        compiled = jax.jit(step, compiler_options=compiler_options).lower(params, opt_state, xs, target).compile()
        compile_s = time.perf_counter() - start
        stats = compiled.memory_analysis()
        peak = (
            stats.argument_size_in_bytes
            + stats.output_size_in_bytes
            + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes
        )
        rows.append(
            {
                "impl": impl,
                "T": t,
                "B": b,
                "D": d,
                "H": h,
                "compile_s": compile_s,
                "peak_bytes": int(peak),
                "temp_bytes": int(stats.temp_size_in_bytes),
                "residual_bytes": int(_residual_bytes(impl, params, xs)),
                "hc_bytes": 2 * t * b * h * 4,
            }
        )
    return rows
