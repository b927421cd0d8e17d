"""Why is my scan slow? Time any step function under ``lax.scan`` against its matmul floor.

``profile_scan(step, carry, xs)`` jits ``lax.scan(step, carry, xs, unroll=u)`` for a sweep
of unroll factors and reports microseconds per step next to two floors:

* the **matmul floor**: the same step's matrix multiplications (found in its jaxpr, same
  shapes and dtypes) chained one after the other in a ``lax.scan`` with nothing else: what
  XLA needs per step for the matmuls alone;
* the **FLOP floor**: the step's matmul FLOPs at the peak rate of one large matmul on this
  machine.

Time above the matmul floor is per-step overhead (elementwise kernels, loop bookkeeping,
copies): unrolling, hoisting the input projection out of the loop (``lstm(..., hoist=k)``)
or ``lstm(..., impl="fused")`` are the levers. A matmul floor far above the FLOP floor means
the per-step matmuls are too small to run at full rate (small batch or hidden size).

>>> from functools import partial
>>> from lstm_jax.cells import init_lstm_cell, lstm_step, LSTMCarry
>>> p = init_lstm_cell(jax.random.key(0), 8, 32)
>>> step = jax.vmap(partial(lstm_step, p))              # a batch of examples per step
>>> carry = LSTMCarry(jnp.zeros((16, 32)), jnp.zeros((16, 32)))
>>> report = profile_scan(step, carry, jnp.ones((64, 16, 8)), unrolls=(1, 4), reps=3)
>>> print(report)                                       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from lstm_jax.typing import PyTree

__all__ = [
    "MatmulShape",
    "ScanTiming",
    "ScanProfile",
    "profile_scan",
    "step_matmuls",
    "peak_matmul_gflops",
    "time_call",
]


class MatmulShape(NamedTuple):
    """One ``dot_general`` of a step: operand shapes, contraction and its FLOPs."""

    lhs: tuple
    rhs: tuple
    dimension_numbers: tuple  # ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))
    dtype: str
    flops: int  # 2 * prod(output) * prod(contracted)

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.lhs))} @ {'x'.join(map(str, self.rhs))} ({self.dtype})"


class ScanTiming(NamedTuple):
    unroll: int
    us_per_step: float  # median over repetitions
    compile_s: float  # first-call lowering + compile time


class ScanProfile(NamedTuple):
    """What ``profile_scan`` measured. ``print(report)`` gives a small table."""

    steps: int
    timings: tuple  # of ScanTiming, one per unroll
    matmuls: tuple  # of MatmulShape found in one step
    floor_us_per_step: Optional[float]  # the step's matmuls alone, chained in a scan
    flops_per_step: int
    peak_gflops: Optional[float]
    flop_floor_us_per_step: Optional[float]

    @property
    def best(self) -> ScanTiming:
        return min(self.timings, key=lambda r: r.us_per_step)

    def __str__(self) -> str:
        lines = [
            f"lax.scan over {self.steps} steps; {len(self.matmuls)} matmul(s) per step, "
            f"{self.flops_per_step / 1e6:.3g} MFLOP/step"
        ]
        lines += [f"  matmul: {m}" for m in self.matmuls]
        lines.append(f"{'unroll':>6} {'us/step':>9} {'x floor':>8} {'compile s':>10}")
        for r in self.timings:
            ratio = f"{r.us_per_step / self.floor_us_per_step:8.2f}" if self.floor_us_per_step else f"{'-':>8}"
            lines.append(f"{r.unroll:>6} {r.us_per_step:9.2f} {ratio} {r.compile_s:10.2f}")
        if self.floor_us_per_step is not None:
            lines.append(f"matmul floor (the step's matmuls alone, chained): {self.floor_us_per_step:.2f} us/step")
        if self.flop_floor_us_per_step is not None:
            lines.append(
                f"FLOP floor at {self.peak_gflops:.0f} GFLOP/s peak: {self.flop_floor_us_per_step:.2f} us/step"
            )
        best = self.best
        lines.append(f"best: unroll={best.unroll} at {best.us_per_step:.2f} us/step")
        return "\n".join(lines)


# --------------------------------------------------------------------------- timing
def time_call(fn: Callable, *args, reps: int = 7, warmup: int = 1) -> list:
    """Wall-clock seconds of ``fn(*args)`` (blocked until ready) for ``reps`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - start)
    return out


def _compile(fn: Callable, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


# --------------------------------------------------------------------------- matmuls of a step
def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


def _collect_dots(jaxpr, out: list) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars)
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            contracted = math.prod(lhs.shape[i] for i in lc)
            out_size = math.prod(eqn.outvars[0].aval.shape)
            out.append(
                MatmulShape(
                    tuple(lhs.shape),
                    tuple(rhs.shape),
                    ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))),
                    str(lhs.dtype),
                    2 * out_size * contracted,
                )
            )
        for sub in _subjaxprs(eqn):
            _collect_dots(sub, out)


def step_matmuls(step: Callable, carry: PyTree, x: PyTree) -> tuple:
    """The ``dot_general``s one call ``step(carry, x)`` performs, as ``MatmulShape``s."""
    jaxpr = jax.make_jaxpr(step)(carry, x).jaxpr
    out: list = []
    _collect_dots(jaxpr, out)
    return tuple(out)


def _fit(a, shape, dtype):
    """Reshape ``a``'s leading elements to ``shape`` (tiling if it is too small)."""
    flat = a.reshape(-1).astype(dtype)
    size = math.prod(shape)
    if flat.size < size:
        flat = jnp.tile(flat, -(-size // flat.size))
    return flat[:size].reshape(shape)


def _floor_fn(matmuls: Sequence[MatmulShape]):
    """A scan body running ``matmuls`` one after the other, each fed by the previous."""

    def body(lhs0, rhs_all):
        def step(v, _):
            for m, rhs in zip(matmuls, rhs_all):
                out = jax.lax.dot_general(_fit(v, m.lhs, m.dtype), rhs, m.dimension_numbers)
                v = out
            return _fit(v, matmuls[0].lhs, matmuls[0].dtype), None

        return step

    def run(lhs0, rhs_all, length):
        return jax.lax.scan(body(lhs0, rhs_all), lhs0, None, length=length)[0]

    return run


def _matmul_floor_us(matmuls, steps: int, reps: int) -> float:
    key = jax.random.key(0)
    rhs_all = tuple(jax.random.normal(jax.random.fold_in(key, i), m.rhs, m.dtype) * 0.01 for i, m in enumerate(matmuls))
    lhs0 = jax.random.normal(key, matmuls[0].lhs, matmuls[0].dtype) * 0.01
    run = functools.partial(_floor_fn(matmuls), length=steps)
    compiled, _ = _compile(run, lhs0, rhs_all)
    return statistics.median(time_call(compiled, lhs0, rhs_all, reps=reps)) / steps * 1e6


@functools.cache
def peak_matmul_gflops(n: int = 1024, dtype: str = "float32", reps: int = 5) -> float:
    """GFLOP/s of one ``n x n @ n x n`` matmul on the default device (best of ``reps``)."""
    a = jnp.ones((n, n), dtype)
    compiled, _ = _compile(lambda a, b: a @ b, a, a)
    return 2 * n**3 / min(time_call(compiled, a, a, reps=reps)) / 1e9


# --------------------------------------------------------------------------- entry point
def profile_scan(
    step: Callable,
    carry: PyTree,
    xs: PyTree,
    *,
    unrolls: Sequence[int] = (1, 2, 4, 8),
    reps: int = 7,
    floor: bool = True,
    peak: bool = True,
) -> ScanProfile:
    """Time ``lax.scan(step, carry, xs, unroll=u)`` for each ``u`` and compare with the floors.

    Args:
      step: a scan-native ``step(carry, x) -> (carry, y)`` (ours, e.g.
        ``jax.vmap(partial(lstm_step, params))``, or your own).
      carry: initial carry.
      xs: pytree of ``[t, ...]`` inputs (``t`` = number of steps timed).
      unrolls: unroll factors to try.
      reps: timed calls per unroll (the median is reported).
      floor: also time the chain of the step's matmuls alone (needs at least one matmul).
      peak: also measure this machine's peak matmul rate for the FLOP floor.

    Returns:
      A ``ScanProfile``; ``print`` it for a table of us/step per unroll, x floor, compile s.
    """
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves:
        raise ValueError("expected xs with at least one array leaf of shape [t, ...], got an empty pytree")
    steps = int(leaves[0].shape[0])
    if steps < 1:
        raise ValueError(f"expected at least one step, got xs with leading axis {steps}")
    unrolls = tuple(unrolls)
    if not unrolls or any(not isinstance(u, int) or u < 1 for u in unrolls):
        raise ValueError(f"expected unrolls to be positive ints, got {unrolls!r}")
    x0 = jax.tree_util.tree_map(lambda a: a[0], xs)
    matmuls = step_matmuls(step, carry, x0)
    timings = []
    for u in unrolls:
        compiled, compile_s = _compile(lambda c, x, u=u: jax.lax.scan(step, c, x, unroll=u), carry, xs)
        seconds = statistics.median(time_call(compiled, carry, xs, reps=reps))
        timings.append(ScanTiming(u, seconds / steps * 1e6, compile_s))
    flops = sum(m.flops for m in matmuls)
    floor_us = _matmul_floor_us(matmuls, steps, reps) if (floor and matmuls) else None
    gflops = peak_matmul_gflops(dtype=matmuls[0].dtype if matmuls else "float32") if (peak and matmuls) else None
    flop_floor = flops / (gflops * 1e9) * 1e6 if gflops else None
    return ScanProfile(steps, tuple(timings), matmuls, floor_us, flops, gflops, flop_floor)


def _demo() -> None:  # pragma: no cover - a quick look from the command line
    from lstm_jax.cells import LSTMCarry, init_lstm_cell, lstm_step

    p = init_lstm_cell(jax.random.key(0), 16, 64)
    carry = LSTMCarry(jnp.zeros((16, 64)), jnp.zeros((16, 64)))
    print(profile_scan(jax.vmap(functools.partial(lstm_step, p)), carry, jnp.ones((128, 16, 16), np.float32)))


if __name__ == "__main__":  # pragma: no cover
    _demo()
