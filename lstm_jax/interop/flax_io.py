"""Weights from flax cells (linen variables or NNX modules)."""

from __future__ import annotations

import sys
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from lstm_jax.cells import GRUParams, LSTMParams
from lstm_jax.interop.common import _jax_of
from lstm_jax.typing import Array, DType

__all__ = ["from_flax"]


# --------------------------------------------------------------------------- flax -> ours
_FLAX_LSTM_KEYS = ("ii", "if", "ig", "io", "hi", "hf", "hg", "ho")
_FLAX_GRU_KEYS = ("ir", "iz", "in", "hr", "hz", "hn")


def _flax_param_dict(params_or_module) -> tuple[dict, Optional[tuple]]:
    """A plain nested dict of arrays from a flax module or params, plus the module's
    ``(gate_fn, activation_fn)`` if a module was given."""
    fns = None
    obj = params_or_module
    if "flax" in sys.modules:
        from flax import linen, nnx

        if isinstance(obj, nnx.Module):
            fns = (getattr(obj, "gate_fn", None), getattr(obj, "activation_fn", None))
            obj = nnx.to_pure_dict(nnx.state(obj, nnx.Param))
        elif isinstance(obj, linen.Module):
            if obj.scope is None:
                raise TypeError(
                    f"expected a flax cell's params (variables['params'] from .init) or a bound module, "
                    f"got an unbound linen {type(obj).__name__}"
                )
            fns = (getattr(obj, "gate_fn", None), getattr(obj, "activation_fn", None))
            obj = obj.variables
        elif isinstance(obj, nnx.State):
            obj = nnx.to_pure_dict(obj)
    if not hasattr(obj, "keys") or not hasattr(obj, "__getitem__"):
        raise TypeError(
            "expected a flax LSTMCell/OptimizedLSTMCell/GRUCell params dict or NNX module, "
            f"got {type(params_or_module).__name__}"
        )
    if "params" in obj and len(obj.keys()) == 1:
        obj = obj["params"]
    if not hasattr(obj, "keys"):
        raise TypeError(f"expected a dict of flax cell params, got {type(obj).__name__} under 'params'")
    d = {k: obj[k] for k in obj.keys()}
    if "if_" in d:  # NNX LSTMCell renames the python keyword
        d["if"] = d.pop("if_")
    return d, fns


def _dense(d: dict, name: str, field: str):
    sub = d[name]
    if not hasattr(sub, "keys") or "kernel" not in sub:
        raise ValueError(f"expected flax params {name!r} to hold a 'kernel', got {type(sub).__name__}")
    return sub.get(field) if hasattr(sub, "get") else (sub[field] if field in sub else None)


def _concat_dense(d: dict, names: tuple, dtype) -> tuple[Array, Array]:
    """Concatenate the kernels (and biases, zeros if absent) of per-gate Dense layers."""
    kernels = [_jax_of(_dense(d, k, "kernel"), dtype) for k in names]
    rows, cols = kernels[0].shape
    for name, k in zip(names, kernels):
        if k.ndim != 2 or k.shape != (rows, cols):
            raise ValueError(
                f"expected flax params {name!r}.kernel of shape {(rows, cols)} like {names[0]!r}, got {tuple(k.shape)}"
            )
    biases = []
    for name, k in zip(names, kernels):
        b = _dense(d, name, "bias")
        b = jnp.zeros((cols,), k.dtype) if b is None else _jax_of(b, dtype)
        if b.shape != (cols,):
            raise ValueError(f"expected flax params {name!r}.bias of shape {(cols,)}, got {tuple(b.shape)}")
        biases.append(b)
    return jnp.concatenate(kernels, axis=-1), jnp.concatenate(biases, axis=-1)


def _fused_dense(d: dict, name: str, dtype) -> tuple[Array, Optional[Array]]:
    kernel = _jax_of(_dense(d, name, "kernel"), dtype)
    if kernel.ndim != 2:
        raise ValueError(f"expected flax params {name!r}.kernel of rank 2, got shape {tuple(kernel.shape)}")
    bias = _dense(d, name, "bias")
    bias = jnp.zeros((kernel.shape[1],), kernel.dtype) if bias is None else _jax_of(bias, dtype)
    if bias.shape != (kernel.shape[1],):
        raise ValueError(f"expected flax params {name!r}.bias of shape {(kernel.shape[1],)}, got {tuple(bias.shape)}")
    return kernel, bias


def from_flax(
    params_or_module: Any, *, kind: Optional[str] = None, dtype: Optional[DType] = None
) -> Union[LSTMParams, GRUParams]:
    """Copy a flax recurrent cell's weights into lstm_jax cell params.

    Supported (flax 0.12):

    * linen ``LSTMCell`` / ``OptimizedLSTMCell`` params (Dense layers ``ii, if, ig, io``
      without bias on the input and ``hi, hf, hg, ho`` with bias on ``h``), and the NNX
      ``LSTMCell`` (same names, ``if_``) -> ``LSTMParams``;
    * NNX ``OptimizedLSTMCell`` (fused ``dense_i: [d_in, 4*d_h]``, ``dense_h: [d_h, 4*d_h]`` + bias,
      gates i, f, g, o) -> ``LSTMParams``;
    * linen ``GRUCell`` (``ir, iz, in`` with bias; ``hr, hz`` without, ``hn`` with) and NNX
      ``GRUCell`` (fused ``dense_i`` with bias, ``dense_h`` without) -> ``GRUParams``. Flax's GRU
      is PyTorch's GRU (the reset gate multiplies ``W_hn h + b_hn``), so the mapping is exact:
      ``b_x = [b_ir, b_iz, b_in]``, ``b_h = [0, 0, b_hn]``.

    Flax's carry is ``(c, h)``; ours is ``LSTMCarry(h, c)``: swap when passing states across.

    Args:
      params_or_module: the cell's params (``variables`` or ``variables['params']`` from
        ``cell.init``, a plain dict or ``FrozenDict``), an ``nnx.State``, an NNX cell module, or
        a bound linen cell. For modules the gate/activation functions are checked to be
        sigmoid/tanh (a params dict cannot say; non-default functions would not map).
      kind: ``"lstm"`` or ``"gru"`` to insist on a kind; ``None`` detects it from the names.
      dtype: optional dtype of the returned arrays.

    Returns:
      ``LSTMParams(w_x: [d_in, 4*d_h], w_h: [d_h, 4*d_h], b: [4*d_h])`` or
      ``GRUParams(w_x: [d_in, 3*d_h], w_h: [d_h, 3*d_h], b_x: [3*d_h], b_h: [3*d_h])``.

    >>> import jax, jax.numpy as jnp, lstm_jax
    >>> from flax import linen as nn
    >>> cell = nn.OptimizedLSTMCell(8)
    >>> variables = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1), (3,)), jnp.ones(3))
    >>> params = lstm_jax.StackParams(((from_flax(variables),),))
    >>> ys, state = lstm_jax.lstm(params, jnp.ones((4, 10, 3)))  # == nn.RNN(cell).apply(variables, ...)
    >>> ys.shape
    (4, 10, 8)
    """
    if kind not in (None, "lstm", "gru"):
        raise ValueError(f"expected kind None, 'lstm' or 'gru', got {kind!r}")
    d, fns = _flax_param_dict(params_or_module)
    if fns is not None:
        gate_fn, activation_fn = fns
        if gate_fn is not None and gate_fn is not jax.nn.sigmoid:
            raise ValueError(f"expected a flax cell with gate_fn=sigmoid, got gate_fn={gate_fn!r}")
        if activation_fn is not None and activation_fn is not jnp.tanh:
            raise ValueError(f"expected a flax cell with activation_fn=tanh, got activation_fn={activation_fn!r}")
    keys = set(d.keys())
    if keys == set(_FLAX_LSTM_KEYS):
        detected = "lstm"
        w_x, b_x = _concat_dense(d, _FLAX_LSTM_KEYS[:4], dtype)
        w_h, b_h = _concat_dense(d, _FLAX_LSTM_KEYS[4:], dtype)
    elif keys == set(_FLAX_GRU_KEYS):
        detected = "gru"
        w_x, b_x = _concat_dense(d, _FLAX_GRU_KEYS[:3], dtype)
        w_h, b_h = _concat_dense(d, _FLAX_GRU_KEYS[3:], dtype)
    elif keys == {"dense_i", "dense_h"}:
        w_x, b_x = _fused_dense(d, "dense_i", dtype)  # type: ignore[assignment]
        w_h, b_h = _fused_dense(d, "dense_h", dtype)  # type: ignore[assignment]
        rows, cols = w_h.shape
        if cols not in (3 * rows, 4 * rows):
            raise ValueError(
                f"expected flax 'dense_h'.kernel of shape [d_h, 4*d_h] (LSTM) or [d_h, 3*d_h] (GRU), "
                f"got {tuple(w_h.shape)}"
            )
        detected = "lstm" if cols == 4 * rows else "gru"
    else:
        raise ValueError(
            f"expected flax cell params with keys {sorted(_FLAX_LSTM_KEYS)} (LSTMCell/OptimizedLSTMCell), "
            f"{sorted(_FLAX_GRU_KEYS)} (GRUCell) or ['dense_h', 'dense_i'] (NNX OptimizedLSTMCell/GRUCell), "
            f"got {sorted(keys)}"
        )
    if kind is not None and kind != detected:
        raise ValueError(f"expected flax {kind.upper()} cell params (kind={kind!r}), got {detected.upper()} params")
    n = 4 if detected == "lstm" else 3
    d_h = w_h.shape[0]
    if w_h.shape != (d_h, n * d_h) or w_x.shape[1] != n * d_h:
        raise ValueError(
            f"expected flax {detected.upper()} kernels [d_in, {n}*d_h] and [d_h, {n}*d_h] with d_h={d_h}, "
            f"got input kernel {tuple(w_x.shape)} and hidden kernel {tuple(w_h.shape)}"
        )
    if detected == "lstm":
        return LSTMParams(w_x=w_x, w_h=w_h, b=b_x + b_h)
    return GRUParams(w_x=w_x, w_h=w_h, b_x=b_x, b_h=b_h)
