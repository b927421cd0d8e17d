"""Weight interop with PyTorch, Flax and Keras: copy a peer's weights into lstm_jax params
(and, for PyTorch, back out again).

Every mapping here is exact (no approximation): the peers compute the same equations as
``lstm_jax.cells`` once their weights are laid out our way.

* ``from_torch(module)``: ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` -> ``StackParams``;
  ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` -> one cell's params.
* ``to_torch(params)``: ``StackParams`` -> a new ``torch.nn.LSTM`` / ``GRU`` / ``RNN``; one
  cell's params -> a ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``.
* ``from_flax(params_or_module)``: flax linen / NNX ``LSTMCell``, ``OptimizedLSTMCell`` and
  ``GRUCell`` -> ``LSTMParams`` / ``GRUParams``.
* ``from_keras(layer)``: a Keras 3 ``LSTM`` / ``GRU`` (``reset_after=True``) / ``SimpleRNN``
  layer -> ``StackParams`` with one layer and one direction.

Weight layout (ours vs theirs), ``n`` gates stacked on the last axis:

=========================  ==============================  ===============================
ours                        torch                           keras / flax
=========================  ==============================  ===============================
``w_x: [d_in, n*d_h]``      ``weight_ih.T``                 ``kernel`` (per-gate for linen)
``w_h: [d_out, n*d_h]``     ``weight_hh.T``                 ``recurrent_kernel`` / ``h*``
``b: [4*d_h]`` (LSTM)       ``bias_ih + bias_hh``           ``bias``
``w_proj: [d_h, d_out]``    ``weight_hr.T``                 --
=========================  ==============================  ===============================

PyTorch, Flax and Keras are imported only inside these functions; none is a dependency of
lstm_jax. Nothing is jitted. Parameters keep the peer's floating dtype unless ``dtype`` is
given. Dropout settings of the peer modules are not weights and are not copied: pass
``dropout=...`` to ``lstm()`` instead.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import GRUParams, LSTMParams, RNNParams
from lstm_jax.layers import StackParams
from lstm_jax.typing import Array, DType

__all__ = ["from_torch", "to_torch", "from_flax", "from_keras"]

CellParams = Union[LSTMParams, GRUParams, RNNParams]
_N_GATES = {LSTMParams: 4, GRUParams: 3, RNNParams: 1}


# --------------------------------------------------------------------------- helpers
def _torch_to_jax(tensor, dtype: Optional[DType]) -> Array:
    """A torch tensor as a jax array, keeping its floating dtype unless ``dtype`` is given."""
    import torch

    t = tensor.detach().cpu()
    target = dtype
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through float32
        t = t.float()
        target = jnp.bfloat16 if dtype is None else dtype
    a = jnp.asarray(t.numpy())
    return a if target is None else a.astype(target)


def _jax_of(a, dtype: Optional[DType]) -> Array:
    if hasattr(a, "value") and not isinstance(a, (np.ndarray, jax.Array)):
        a = a.value
    a = jnp.asarray(a)
    return a if dtype is None else a.astype(dtype)


def _torch_nn():
    """``torch.nn``, or None if torch was never imported (then the argument cannot be a torch
    module, and torch need not be imported just to say so)."""
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.nn


# --------------------------------------------------------------------------- torch -> ours
def _torch_cell_params(kind: str, w_ih, w_hh, b_ih, b_hh, w_hr, dtype) -> CellParams:
    """Map one torch (layer, direction) weight set to our cell params."""
    w_x = _torch_to_jax(w_ih, dtype).T
    w_h = _torch_to_jax(w_hh, dtype).T
    zeros = jnp.zeros((w_x.shape[1],), w_x.dtype)
    bx = zeros if b_ih is None else _torch_to_jax(b_ih, dtype)
    bh = zeros if b_hh is None else _torch_to_jax(b_hh, dtype)
    if kind == "lstm":
        w_proj = None if w_hr is None else _torch_to_jax(w_hr, dtype).T
        return LSTMParams(w_x=w_x, w_h=w_h, b=bx + bh, w_proj=w_proj)
    if kind == "gru":
        return GRUParams(w_x=w_x, w_h=w_h, b_x=bx, b_h=bh)
    return RNNParams(w_x=w_x, w_h=w_h, b=bx + bh)


def from_torch(module: Any, *, dtype: Optional[DType] = None) -> Union[StackParams, CellParams]:
    """Copy the weights of a PyTorch recurrent module into lstm_jax params.

    Supported: ``torch.nn.LSTM`` (any ``num_layers``, ``bidirectional``, ``proj_size``,
    ``bias``), ``torch.nn.GRU``, ``torch.nn.RNN`` with ``nonlinearity='tanh'``, and the
    single cells ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``. ``batch_first`` and
    ``dropout`` are not weights and are ignored (our batched API is always batch-first).

    Mapping per layer ``l`` and direction ``d`` (suffix ``_reverse`` for ``d = 1``):
    ``w_x = weight_ih_l{l}.T``, ``w_h = weight_hh_l{l}.T``; LSTM and RNN ``b = bias_ih + bias_hh``
    (zeros when ``bias=False``); GRU ``b_x = bias_ih``, ``b_h = bias_hh``; LSTM projection
    ``w_proj = weight_hr_l{l}.T``.

    Args:
      module: the torch module.
      dtype: optional dtype for the copied arrays; default keeps the module's dtype (float64
        becomes float32 unless ``jax_enable_x64`` is on).

    Returns:
      ``StackParams`` whose ``layers[l][d]`` are ``LSTMParams`` (``w_x: [d_in, 4*d_h]``,
      ``w_h: [d_out, 4*d_h]``, ``b: [4*d_h]``, ``w_proj: [d_h, d_out]`` or None),
      ``GRUParams`` or ``RNNParams``; for a single cell module, that cell's params.

    Raises:
      TypeError: ``module`` is not one of the supported torch modules.
      ValueError: an ``RNN``/``RNNCell`` with ``nonlinearity='relu'``.

    >>> import torch, jax.numpy as jnp, lstm_jax
    >>> torch_lstm = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    >>> params = from_torch(torch_lstm)
    >>> ys, state = lstm_jax.lstm(params, jnp.ones((4, 10, 3)))  # == torch_lstm(torch.ones(4, 10, 3))
    >>> ys.shape, state.h.shape  # state.h[:, l, d] == h_n[l * D + d]
    ((4, 10, 8), (4, 2, 1, 8))
    """
    nn = _torch_nn()
    if nn is None or not isinstance(module, nn.Module):
        raise TypeError(
            "expected a torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell module, "
            f"got {type(module).__module__}.{type(module).__name__}"
        )
    if isinstance(module, (nn.RNN, nn.RNNCell)) and module.nonlinearity != "tanh":
        raise ValueError(
            f"expected a torch {type(module).__name__} with nonlinearity='tanh' (lstm_jax's RNN cell is "
            f"tanh only), got nonlinearity={module.nonlinearity!r}"
        )
    cell_kinds = {nn.LSTMCell: "lstm", nn.GRUCell: "gru", nn.RNNCell: "rnn"}
    for cls, kind in cell_kinds.items():
        if isinstance(module, cls):
            return _torch_cell_params(
                kind, module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh, None, dtype
            )
    stack_kinds = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
    kind = next((k for cls, k in stack_kinds.items() if isinstance(module, cls)), None)  # type: ignore[assignment]
    if kind is None:
        raise TypeError(
            "expected a torch.nn.LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell module, "
            f"got {type(module).__module__}.{type(module).__name__}"
        )
    num_directions = 2 if module.bidirectional else 1
    layers = []
    for layer in range(module.num_layers):
        cells = []
        for direction in range(num_directions):
            sfx = f"l{layer}" + ("_reverse" if direction == 1 else "")
            get = lambda name: getattr(module, f"{name}_{sfx}", None)  # noqa: E731
            w_hr = get("weight_hr") if kind == "lstm" and getattr(module, "proj_size", 0) > 0 else None
            b_ih, b_hh = (get("bias_ih"), get("bias_hh")) if module.bias else (None, None)
            cells.append(_torch_cell_params(kind, get("weight_ih"), get("weight_hh"), b_ih, b_hh, w_hr, dtype))
        layers.append(tuple(cells))
    return StackParams(tuple(layers))


# --------------------------------------------------------------------------- ours -> torch
def _cell_kind(cell) -> type:
    if type(cell) not in _N_GATES:
        raise TypeError(f"expected LSTMParams, GRUParams or RNNParams cells, got {type(cell).__name__}")
    return type(cell)


def _check_torch_representable(cell: CellParams, where: str) -> None:
    if isinstance(cell, LSTMParams):
        if cell.w_peep is not None:
            raise ValueError(
                f"expected LSTM params without peephole weights (torch.nn.LSTM has no peephole "
                f"connections), got {where}.w_peep of shape {tuple(cell.w_peep.shape)}"
            )
        if cell.ln is not None:
            raise ValueError(
                f"expected LSTM params without LayerNorm gains (torch.nn.LSTM has no LayerNorm-LSTM), got {where}.ln"
            )


def _expect_shape(where: str, a, shape: tuple) -> None:
    got = None if a is None else tuple(a.shape)
    if got != shape:
        raise ValueError(f"expected {where} of shape {shape}, got {got}")


def _check_cell_shapes(cell: CellParams, where: str, d_in: int, d_h: int, d_out: int, proj: bool) -> None:
    n = _N_GATES[type(cell)]
    _expect_shape(f"{where}.w_x", cell.w_x, (d_in, n * d_h))
    _expect_shape(f"{where}.w_h", cell.w_h, (d_out, n * d_h))
    if isinstance(cell, GRUParams):
        _expect_shape(f"{where}.b_x", cell.b_x, (n * d_h,))
        _expect_shape(f"{where}.b_h", cell.b_h, (n * d_h,))
    else:
        _expect_shape(f"{where}.b", cell.b, (n * d_h,))
    if isinstance(cell, LSTMParams):
        if proj:
            _expect_shape(f"{where}.w_proj", cell.w_proj, (d_h, d_out))
        elif cell.w_proj is not None:
            raise ValueError(
                f"expected {where}.w_proj None like layers[0][0].w_proj, got shape {tuple(cell.w_proj.shape)}"
            )


def _torch_dtype(dtype):
    import torch

    table = {
        jnp.dtype(jnp.float16): torch.float16,
        jnp.dtype(jnp.bfloat16): torch.bfloat16,
        jnp.dtype(jnp.float32): torch.float32,
        jnp.dtype(jnp.float64): torch.float64,
    }
    if jnp.dtype(dtype) not in table:
        raise TypeError(f"expected floating params (float16/bfloat16/float32/float64), got {dtype}")
    return table[jnp.dtype(dtype)]


def _copy_into(param, a, transpose: bool) -> None:
    """Copy jax array ``a`` (transposed if asked) into torch parameter ``param`` in place."""
    import torch

    if tuple(param.shape) != (tuple(a.shape)[::-1] if transpose else tuple(a.shape)):
        raise ValueError(f"expected an array for a torch parameter of shape {tuple(param.shape)}, got {a.shape}")
    arr = np.array(jnp.asarray(a, jnp.float32) if a.dtype == jnp.bfloat16 else a)  # writable copy
    if transpose:
        arr = np.ascontiguousarray(arr.T)
    with torch.no_grad():
        param.copy_(torch.tensor(arr, dtype=param.dtype))


def _fill_torch_cell(dst, cell: CellParams, sfx: str) -> None:
    """Write one cell's params into torch parameters ``weight_ih{sfx}`` etc. of ``dst``."""
    _copy_into(getattr(dst, f"weight_ih{sfx}"), cell.w_x, True)
    _copy_into(getattr(dst, f"weight_hh{sfx}"), cell.w_h, True)
    if isinstance(cell, GRUParams):
        _copy_into(getattr(dst, f"bias_ih{sfx}"), cell.b_x, False)
        _copy_into(getattr(dst, f"bias_hh{sfx}"), cell.b_h, False)
    else:  # torch sums the two biases: put ours in bias_ih, zeros in bias_hh
        _copy_into(getattr(dst, f"bias_ih{sfx}"), cell.b, False)
        _copy_into(getattr(dst, f"bias_hh{sfx}"), jnp.zeros_like(cell.b), False)
    if isinstance(cell, LSTMParams) and cell.w_proj is not None:
        _copy_into(getattr(dst, f"weight_hr{sfx}"), cell.w_proj, True)


def to_torch(params: Union[StackParams, CellParams], *, batch_first: bool = True):
    """A new PyTorch module computing the same function as ``params``.

    ``StackParams`` of LSTM/GRU/RNN cells become ``torch.nn.LSTM`` / ``GRU`` / ``RNN``
    (``bias=True``, ``bidirectional`` if there are two directions, ``proj_size`` from
    ``w_proj``); a single ``LSTMParams`` / ``GRUParams`` / ``RNNParams`` becomes a
    ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell``. The LSTM/RNN bias ``b`` goes into
    ``bias_ih`` and ``bias_hh`` is zero, so ``from_torch(to_torch(p))`` gives ``p`` back.
    The module's dtype follows ``w_x`` (float16/bfloat16/float32/float64).

    Args:
      params: ``StackParams`` (``layers[l][d]``: ``w_x: [d_in, n*d_h]``, ``w_h: [d_out, n*d_h]``)
        or one cell's params.
      batch_first: ``batch_first`` of the new stacked module (ignored for single cells).

    Returns:
      The torch module (in training mode, as torch creates it; it has no dropout).

    Raises:
      ValueError: peephole or LayerNorm LSTM params (torch cannot represent them), an LSTM
        cell with a projection (``torch.nn.LSTMCell`` has no ``proj_size``), or shapes that
        do not form a consistent stack.
      TypeError: anything other than lstm_jax params.

    >>> import torch, jax, lstm_jax
    >>> params = lstm_jax.init_lstm(jax.random.key(0), 3, 8, bidirectional=True)
    >>> torch_lstm = to_torch(params)
    >>> ys_torch, (h_n, c_n) = torch_lstm(torch.ones(4, 10, 3))  # == lstm_jax.lstm(params, jnp.ones((4, 10, 3)))
    >>> tuple(ys_torch.shape), tuple(h_n.shape)
    ((4, 10, 16), (2, 4, 8))
    """
    import torch

    nn = torch.nn
    if isinstance(params, (LSTMParams, GRUParams, RNNParams)):
        _check_torch_representable(params, "params")
        kind = type(params)
        n = _N_GATES[kind]
        d_in, d_h = params.w_x.shape[0], params.w_x.shape[-1] // n
        if kind is LSTMParams and params.w_proj is not None:  # type: ignore[union-attr]
            raise ValueError(
                "expected LSTMParams without w_proj (torch.nn.LSTMCell has no proj_size; wrap the cell in "
                f"StackParams(((params,),)) to get a torch.nn.LSTM), got w_proj of shape {tuple(params.w_proj.shape)}"  # type: ignore[union-attr]
            )
        _check_cell_shapes(params, "params", d_in, d_h, d_h, False)
        cls = {LSTMParams: nn.LSTMCell, GRUParams: nn.GRUCell, RNNParams: nn.RNNCell}[kind]
        extra = {"nonlinearity": "tanh"} if kind is RNNParams else {}
        module = cls(d_in, d_h, bias=True, dtype=_torch_dtype(params.w_x.dtype), **extra)
        _fill_torch_cell(module, params, "")
        return module
    if not isinstance(params, StackParams):
        raise TypeError(f"expected StackParams or LSTMParams/GRUParams/RNNParams, got {type(params).__name__}")
    if not params.layers or not params.layers[0]:
        raise ValueError("expected StackParams with at least one layer and one direction, got an empty stack")
    first = params.layers[0][0]
    kind = _cell_kind(first)
    n = _N_GATES[kind]
    num_directions = len(params.layers[0])
    if num_directions not in (1, 2):
        raise ValueError(f"expected 1 or 2 directions per layer, got {num_directions}")
    d_in0, d_h = first.w_x.shape[0], first.w_x.shape[-1] // n
    proj = kind is LSTMParams and first.w_proj is not None
    d_out = first.w_proj.shape[-1] if proj else d_h
    for l, layer in enumerate(params.layers):
        if len(layer) != num_directions:
            raise ValueError(f"expected {num_directions} directions in every layer, got {len(layer)} in layer {l}")
        for d, cell in enumerate(layer):
            where = f"layers[{l}][{d}]"
            if type(cell) is not kind:
                raise TypeError(f"expected {kind.__name__} in every layer, got {type(cell).__name__} at {where}")
            _check_torch_representable(cell, where)
            d_in = d_in0 if l == 0 else num_directions * d_out
            _check_cell_shapes(cell, where, d_in, d_h, d_out, proj)
    cls = {LSTMParams: nn.LSTM, GRUParams: nn.GRU, RNNParams: nn.RNN}[kind]
    extra = {"proj_size": d_out if proj else 0} if kind is LSTMParams else {}  # type: ignore[dict-item]
    if kind is RNNParams:
        extra = {"nonlinearity": "tanh"}
    module = cls(
        d_in0,
        d_h,
        num_layers=params.num_layers,
        bias=True,
        batch_first=batch_first,
        bidirectional=num_directions == 2,
        dtype=_torch_dtype(first.w_x.dtype),
        **extra,
    )
    for l, layer in enumerate(params.layers):
        for d, cell in enumerate(layer):
            _fill_torch_cell(module, cell, f"_l{l}" + ("_reverse" if d == 1 else ""))
    return module


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


# --------------------------------------------------------------------------- keras -> ours
def from_keras(layer: Any, *, dtype: Optional[DType] = None) -> StackParams:
    """Copy a Keras 3 recurrent layer's weights into lstm_jax ``StackParams`` (1 layer, 1 direction).

    Supported: ``keras.layers.LSTM`` (``kernel [d_in, 4*d_h]`` with gates i, f, c, o = ours,
    ``recurrent_kernel [d_h, 4*d_h]``, ``bias [4*d_h]``), ``keras.layers.GRU`` with
    ``reset_after=True`` (Keras' default, which is PyTorch's GRU; Keras orders the gates
    z, r, h and they are reordered to our r, z, n; ``bias [2, 3*d_h]`` = input and recurrent
    biases), and ``keras.layers.SimpleRNN`` with tanh. The layer must be built, use the
    default activations (tanh, and sigmoid for the gates) and not run backwards.
    ``use_bias=False`` gives zero biases. Dropout rates are not weights and are not copied.

    Keras returns the final state as ``[h, c]`` with shapes ``[b, d_h]``; ours is
    ``LSTMCarry(h, c)`` with ``[b, L=1, D=1, d_h]``.

    Args:
      layer: the Keras layer.
      dtype: optional dtype of the returned arrays.

    Returns:
      ``StackParams(((cell,),))`` with an ``LSTMParams``, ``GRUParams`` or ``RNNParams`` cell.

    >>> import keras, numpy as np, jax.numpy as jnp, lstm_jax  # KERAS_BACKEND=jax
    >>> layer = keras.layers.LSTM(8, return_sequences=True)
    >>> ys_keras = layer(np.ones((4, 10, 3), np.float32))
    >>> ys, state = lstm_jax.lstm(from_keras(layer), jnp.ones((4, 10, 3)))  # ys == ys_keras
    >>> ys.shape
    (4, 10, 8)
    """
    if "keras" not in sys.modules:
        raise TypeError(f"expected a keras.layers.LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
    import keras

    kinds = {keras.layers.LSTM: "LSTM", keras.layers.GRU: "GRU", keras.layers.SimpleRNN: "SimpleRNN"}
    name = next((n for cls, n in kinds.items() if isinstance(layer, cls)), None)
    if name is None:
        raise TypeError(f"expected a keras.layers.LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
    if not layer.built:
        raise ValueError(
            f"expected a built keras {name} layer (call it once or use .build(input_shape)), got an unbuilt one"
        )
    if layer.go_backwards:
        raise ValueError(f"expected a keras {name} with go_backwards=False, got go_backwards=True")
    cell = layer.cell
    if cell.activation is not keras.activations.tanh:
        raise ValueError(f"expected a keras {name} with activation='tanh', got {cell.activation!r}")
    if name != "SimpleRNN" and cell.recurrent_activation is not keras.activations.sigmoid:
        raise ValueError(
            f"expected a keras {name} with recurrent_activation='sigmoid', got {cell.recurrent_activation!r}"
        )
    w_x = _jax_of(cell.kernel, dtype)
    w_h = _jax_of(cell.recurrent_kernel, dtype)
    cols = w_h.shape[-1]
    if name == "GRU":
        if not cell.reset_after:
            raise ValueError(
                "expected a keras GRU with reset_after=True (the PyTorch/cuDNN convention lstm_jax uses), "
                "got reset_after=False"
            )
        if cell.use_bias:
            bias = _jax_of(cell.bias, dtype)
            b_x, b_h = bias[0], bias[1]
        else:
            b_x = b_h = jnp.zeros((cols,), w_x.dtype)

        def zrh_to_rzn(a):  # keras gate order z, r, h -> ours r, z, n
            z, r, h = jnp.split(a, 3, axis=-1)
            return jnp.concatenate([r, z, h], axis=-1)

        params = GRUParams(w_x=zrh_to_rzn(w_x), w_h=zrh_to_rzn(w_h), b_x=zrh_to_rzn(b_x), b_h=zrh_to_rzn(b_h))
    else:
        b = _jax_of(cell.bias, dtype) if cell.use_bias else jnp.zeros((cols,), w_x.dtype)
        params = (LSTMParams if name == "LSTM" else RNNParams)(w_x=w_x, w_h=w_h, b=b)  # type: ignore[assignment]
    return StackParams(((params,),))
