"""Ways of running a recurrent network over a batch, behind one signature and one registry.

``lstm(params, xs, impl=...)`` (and ``gru``, ``rnn``) hands the call to a backend. Every
backend is one module of this package with two functions of one signature:

* ``unsupported(params, xs, call) -> str | None``: why it cannot serve this call (None: it can);
* ``run(params, xs, call, **options) -> (ys: [b, t, D*d_out], final_state)``, leaves ``[b, L, D, d]``,

where ``params`` is a ``layers.StackParams``, ``xs: [b, t, d_in]`` and ``call`` a ``LayerCall``
holding everything else the caller asked for (lengths, initial state, dropout, unroll, ...).
All backends have the semantics of the ``"scan"`` backend, the reference they are tested
against: past ``lengths[i]`` the carry is frozen and outputs are zero, the final state is the
state at the last valid step, the backward direction reads the valid prefix reversed, and
dropout masks are those ``layers.run_stack`` draws from the same key.

The registry maps an ``impl`` name to ``(module, fixed options)``; modules are imported on
first use, so a backend with heavy or platform-specific imports costs nothing until used.
``impl="auto"`` is the policy function ``choose``: per platform, the first backend of
``AUTO_ORDER`` that supports the call. A new backend adds a module and a ``register`` line.

>>> from lstm_jax.layers import init_lstm
>>> params = init_lstm(jax.random.key(0), 3, 8)
>>> names()[:2]
('scan', 'fused')
>>> choose(params, jnp.ones((2, 5, 3)), LayerCall(), platform="gpu")
'fused'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.typing import Array, DType, PRNGKey, PyTree

__all__ = [
    "AUTO_ORDER",
    "AUTO_WHEN",
    "Backend",
    "LayerCall",
    "choose",
    "get",
    "names",
    "register",
    "resolve",
    "run",
    "describe",
]


class LayerCall(NamedTuple):
    """Everything one batched network call asked for besides ``params`` and ``xs``."""

    lengths: Optional[Array] = None  # [b] int, valid steps per example
    initial_state: Optional[PyTree] = None  # leaves [b, L, D, d]
    dropout: float = 0.0  # between layers
    recurrent_dropout: float = 0.0  # variational, on h inside the recurrence
    variational_dropout: bool = False  # inter-layer mask shared across time
    dropout_key: Optional[PRNGKey] = None  # None: deterministic
    unroll: int = 1
    hoist: int = 0
    compute_dtype: Optional[DType] = None

    @property
    def uses_dropout(self) -> bool:
        return self.dropout_key is not None and (self.dropout > 0.0 or self.recurrent_dropout > 0.0)


class Backend(NamedTuple):
    """A registry entry: ``lstm_jax.backends.<module>`` run with fixed keyword ``options``."""

    name: str
    module: str
    options: tuple  # ((keyword, value), ...)
    summary: str


_REGISTRY: dict[str, Backend] = {}


def register(name: str, module: str, summary: str, **options: Any) -> None:
    """Add (or replace) the backend ``name``: module ``lstm_jax.backends.<module>`` with ``options``."""
    _REGISTRY[name] = Backend(name, module, tuple(sorted(options.items())), summary)


register("scan", "scan", "jax.vmap of the per-example lax.scan; every cell and option; autodiff (jvp and grad)")
register(
    "fused",
    "fused",
    "plain LSTMs: batch-level custom VJP storing gate derivatives (fastest training on CPU)",
    memory="gates",
)
register(
    "fused_recompute", "fused", "as fused, stores only (h, c) per step and recomputes the gates", memory="recompute"
)
register(
    "fused_checkpoint", "fused", "as fused, stores (h, c) every ~sqrt(t) steps: O(sqrt(t)) memory", memory="checkpoint"
)
register("cudnn", "cudnn", "plain float32 LSTMs on a CUDA/ROCm GPU: one jax.experimental.rnn (cuDNN) call per network")
register(
    "parallel",
    "parallel",
    "research: plain LSTMs evaluated parallel in time (quasi-DEER Newton iterations, "
    "associative scan), sequential fallback",
)
register(
    "pallas", "pallas", "plain/peephole LSTMs: time loop inside one Pallas kernel (Triton on GPU, interpret on CPU)"
)
register(
    "cpu_kernel",
    "cpu_kernel",
    "plain float32 LSTMs on CPU: the recurrence in a C++ XLA FFI kernel (packed GEMM + fused gates), custom VJP",
)
register(
    "cpu_hybrid",
    "cpu_hybrid",
    "plain float32 LSTMs on CPU: the XLA scan when not differentiated, the cpu_kernel forward and "
    "backward when differentiated (one custom VJP)",
)

# impl="auto": per platform, the first of these that supports the call (see ``choose``).
# CPU: the fused custom VJP trains faster than autodiff through scan and forwards as fast
# (benchmarks/run.py); every other call falls back to scan.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    # CPU (2-core machines, benchmarks/cpu_speed.py): the kernel trains 1.3-2.3x faster than
    # fused/scan; its forward (input projection fused into the recurrent GEMM) beats the XLA scan
    # at d_h = 256, and at d_h = 64 too on an AVX-512 CPU (16-float vectors: 1.04 against 1.37 ms
    # at small, 14.8 against 19.3 at long), while on AVX2 it ties it there, where cpu_hybrid (scan
    # forward, kernel training) is picked. cpu_kernel also serves a bfloat16 compute_dtype (mixed
    # precision) at any d_h.
    "cpu": ("cpu_kernel", "cpu_hybrid", "fused", "scan"),
    # GPU: "cudnn" is not first (yet): jax.experimental.rnn copies seq_lengths to the host and
    # synchronises on every call (no CUDA-graph capture) and public reports put it at 27-47 us/step
    # against ~8-10 us for lax.scan; benchmarks/gpu.py measures both -- put "cudnn" first only if it wins.
    # "parallel" is research mode and never picked by "auto".
    "gpu": ("fused", "scan"),
    "tpu": ("fused", "scan"),
}


def _max_hidden(params) -> int:
    return max((int(p.w_h.shape[0]) for layer in params.layers for p in layer if hasattr(p, "w_h")), default=0)


def _kernel_rule(params, xs, call: LayerCall) -> bool:
    from lstm_jax.backends import cpu_build

    mixed = call.compute_dtype is not None and jnp.dtype(call.compute_dtype) == jnp.dtype(jnp.bfloat16)
    return mixed or _max_hidden(params) >= 128 or cpu_build.avx512()


# Where a backend in AUTO_ORDER is picked only for some shapes: name -> (rule(params, xs, call), why).
AUTO_WHEN: dict[str, tuple[Callable[..., bool], str]] = {
    "cpu_kernel": (_kernel_rule, "d_h >= 128, an AVX-512 CPU or a bfloat16 compute_dtype (measured faster there)"),
}
_AUTO_DEFAULT = ("scan",)


def names() -> tuple[str, ...]:
    """The registered backend names, in registration order (``"auto"`` is not one of them)."""
    return tuple(_REGISTRY)


def get(name: str) -> Backend:
    """The registry entry for ``name``; ``ValueError`` naming the valid names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"expected impl in {('auto',) + names()}, got {name!r}")
    return _REGISTRY[name]


def _module(backend: Backend):
    return importlib.import_module(f"lstm_jax.backends.{backend.module}")


def unsupported(name: str, params, xs, call: LayerCall) -> Optional[str]:
    """Why backend ``name`` cannot run this call, or None if it can."""
    return _module(get(name)).unsupported(params, xs, call)


def _platform() -> str:
    return jax.default_backend()


def choose(params, xs, call: LayerCall, platform: Optional[str] = None) -> str:
    """The backend ``impl="auto"`` runs: the first of ``AUTO_ORDER[platform]`` that supports the call
    and whose ``AUTO_WHEN`` rule, if it has one, holds.

    Today, for plain LSTMs (no peephole, LayerNorm, projection or separate ``compute_dtype``): on
    CPU, for float32 weights when the C++ kernel is built, ``"cpu_kernel"`` when some layer has
    ``d_h >= 128`` or the CPU has AVX-512, and ``"cpu_hybrid"`` (XLA scan forward, kernel
    forward + backward when differentiated) otherwise, else ``"fused"``; on GPU and TPU ``"fused"``. A bfloat16
    ``compute_dtype`` on CPU: ``"cpu_kernel"`` (mixed precision).
    Every other call: ``"scan"``. ``platform`` defaults to
    ``jax.default_backend()``.
    """
    order = AUTO_ORDER.get(platform or _platform(), _AUTO_DEFAULT)
    for name in order:
        rule = AUTO_WHEN.get(name)
        if rule is not None and not rule[0](params, xs, call):
            continue
        if unsupported(name, params, xs, call) is None:
            return name
    return "scan"


def resolve(impl: str, params, xs, call: LayerCall) -> str:
    """``impl`` itself if it can run the call, ``choose(...)`` for ``"auto"``.

    Raises:
      ValueError: for an unknown name, or a backend that cannot serve the call, naming the
        reason and the backends that could.
    """
    if impl == "auto":
        return choose(params, xs, call)
    reason = unsupported(impl, params, xs, call)
    if reason is not None:
        able = [n for n in names() if n != impl and unsupported(n, params, xs, call) is None]
        raise ValueError(f"impl={impl!r} cannot run this call: {reason}; backends that can: {', '.join(able)}")
    return impl


def run(impl: str, params, xs: Array, call: LayerCall) -> tuple[Array, PyTree]:
    """Run the network ``params`` over ``xs: [b, t, d_in]`` with backend ``impl`` (or ``"auto"``).

    Raises:
      TypeError: forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) of a
        backend with a custom VJP, naming ``impl="scan"`` as the way to do it.
    """
    backend = get(resolve(impl, params, xs, call))
    try:
        return _module(backend).run(params, xs, call, **dict(backend.options))
    except TypeError as e:
        if "forward-mode" not in str(e):
            raise
        raise TypeError(
            f"impl={impl!r} ran backend {backend.name!r}, a custom VJP, which supports reverse-mode "
            "differentiation (jax.grad, jax.vjp) only; use impl='scan' for forward-mode AD (jax.jvp, "
            "jax.jacfwd, jax.hessian)"
        ) from e


def describe() -> str:
    """A markdown table of the registered backends and the ``auto`` order per platform."""
    rows = ["| impl | module | what it is |", "|---|---|---|"]
    rows += [f"| `{b.name}` | `backends.{b.module}` | {b.summary} |" for b in _REGISTRY.values()]
    rows += ["", '| platform | `impl="auto"` tries, in order |', "|---|---|"]
    when = lambda n: f"{n} (if {AUTO_WHEN[n][1]})" if n in AUTO_WHEN else n  # noqa: E731
    rows += [f"| {p} | {', '.join(map(when, order))} |" for p, order in AUTO_ORDER.items()]
    return "\n".join(rows)
