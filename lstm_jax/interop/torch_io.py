"""Weights to and from ``torch.nn`` LSTM/GRU/RNN modules and cells (torch imported lazily)."""

from __future__ import annotations

from typing import Any, Optional, Union

import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import GRUParams, LSTMParams, RNNParams
from lstm_jax.interop.common import _N_GATES, CellParams, _torch_nn, _torch_to_jax
from lstm_jax.layers import StackParams
from lstm_jax.typing import DType

__all__ = ["from_torch", "to_torch"]


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
