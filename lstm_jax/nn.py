"""Flax modules over the pure layers: NNX ``LSTM``, ``GRU``, ``RNN`` and linen ``LSTMLinen``,
``GRULinen``, ``RNNLinen``.

These are thin wrappers: the math is ``lstm_jax.layers.lstm/gru/rnn`` and the parameters
are created by ``lstm_jax.layers.init_lstm/init_gru/init_rnn``. Both kinds of module hold
exactly the ``StackParams`` pytree those functions use, so you can move between the module
and the pure functions at any time.

NNX
---
The module's ``params`` attribute is a ``StackParams`` whose leaves are ``nnx.Param``:

>>> from flax import nnx
>>> model = LSTM(3, 16, num_layers=2, dropout=0.1, rngs=nnx.Rngs(0))
>>> ys, state = model(jnp.ones((4, 10, 3)))           # training mode: dropout on
>>> ys, state = model(jnp.ones((4, 10, 3)), deterministic=True)
>>> params = model.pure_params()                      # StackParams of plain arrays
>>> ys2, _ = lstm(params, jnp.ones((4, 10, 3)))       # same as the deterministic call
>>> model2 = LSTM.from_params(params, rngs=nnx.Rngs(1))   # a module around given params
>>> model.load_params(params)                          # overwrite the values in place

``model.eval()`` / ``model.train()`` (and ``nnx.view(model, deterministic=...)``) switch
dropout off/on, as for ``nnx.Dropout``. Dropout keys come from the ``dropout`` stream of the
``rngs`` given to the constructor (forked at construction, as ``nnx.Dropout`` does).

linen
-----
The variables are ``{"params": {"stack": StackParams}}``; ``input_size`` is read from the
first input at ``init`` time, as for ``nn.Dense``:

>>> import flax.linen as nn
>>> module = LSTMLinen(16, num_layers=2, dropout=0.1)
>>> variables = module.init(jax.random.key(0), jnp.ones((4, 10, 3)))
>>> ys, state = module.apply(variables, jnp.ones((4, 10, 3)))        # deterministic
>>> ys, state = module.apply(variables, jnp.ones((4, 10, 3)), deterministic=False,
...                          rngs={"dropout": jax.random.key(1)})
>>> params = from_linen_variables(variables)          # -> StackParams
>>> variables = to_linen_variables(params)            # -> {"params": {"stack": params}}

Call signature of every module: ``module(xs [b, t, d_in], *, lengths=None,
initial_state=None, deterministic=None) -> (ys [b, t, D*d_out], final_state)`` with the
final-state layout of ``lstm_jax.layers`` (leaves ``[b, L, D, d]``).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as linen
import jax
import jax.numpy as jnp
from flax import nnx

from lstm_jax.cells import GRU_CELL, LSTM_CELL, RNN_CELL
from lstm_jax.layers import StackParams, cell_of, gru, init_gru, init_lstm, init_rnn, lstm, rnn
from lstm_jax.typing import Array, DType, PyTree

__all__ = [
    "LSTM",
    "GRU",
    "RNN",
    "LSTMLinen",
    "GRULinen",
    "RNNLinen",
    "to_linen_variables",
    "from_linen_variables",
    "stack_config",
]


# --------------------------------------------------------------------------- shared helpers
def stack_config(params: StackParams) -> dict:
    """Read the constructor arguments of a network off its ``StackParams``.

    Returns a dict with ``input_size``, ``hidden_size``, ``num_layers``, ``bidirectional`` and
    ``dtype``, plus ``proj_size``, ``peephole`` and ``layer_norm`` for an LSTM.

    >>> stack_config(init_lstm(jax.random.key(0), 3, 8, proj_size=4))["proj_size"]
    4
    """
    cell = cell_of(params)
    first = params.layers[0][0]
    n_gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell.name]
    config = dict(
        input_size=int(first.w_x.shape[0]),
        hidden_size=int(first.w_x.shape[-1]) // n_gates,
        num_layers=params.num_layers,
        bidirectional=params.num_directions == 2,
        dtype=first.w_x.dtype,
    )
    if cell is LSTM_CELL:
        config.update(
            proj_size=0 if first.w_proj is None else int(first.w_proj.shape[-1]),
            peephole=first.w_peep is not None,
            layer_norm=first.ln is not None,
        )
    return config


def _check_same_structure(expected: PyTree, got: PyTree, what: str) -> None:
    """Raise unless ``got`` has the tree structure, shapes and dtypes of ``expected``."""
    exp_leaves, exp_def = jax.tree_util.tree_flatten(expected)
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    if exp_def != got_def:  # type: ignore[operator]
        raise TypeError(f"expected {what} with structure {exp_def}, got {got_def}")
    exp = [(tuple(a.shape), jnp.dtype(a.dtype)) for a in exp_leaves]
    have = [(tuple(a.shape), jnp.dtype(a.dtype)) for a in got_leaves]
    if exp != have:
        raise ValueError(f"expected {what} with leaf shapes/dtypes {exp}, got {have}")


_KINDS = {
    "lstm": (LSTM_CELL, init_lstm, lstm),
    "gru": (GRU_CELL, init_gru, gru),
    "rnn": (RNN_CELL, init_rnn, rnn),
}


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _apply(module, params: StackParams, xs, lengths, initial_state, dropout_key) -> tuple[Array, PyTree]:
    """The pure function of ``module``'s kind with ``module``'s options (NNX and linen alike)."""
    _, _, fn = _KINDS[module._kind]
    return fn(
        params,
        xs,
        lengths=lengths,
        initial_state=initial_state,
        dropout=module.dropout,
        recurrent_dropout=module.recurrent_dropout,
        variational_dropout=module.variational_dropout,
        dropout_key=dropout_key,
        unroll=module.unroll,
        hoist=module.hoist,
        compute_dtype=module.compute_dtype,
        impl=module.impl,
    )


# --------------------------------------------------------------------------- NNX
class _RecurrentNNX(nnx.Module):
    """Shared body of the NNX modules; subclasses fix ``_kind`` and the init options."""

    _kind: str = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        variational_dropout: bool = False,
        dtype: DType = jnp.float32,
        compute_dtype: Optional[DType] = None,
        unroll: int = 1,
        hoist: int = 0,
        impl: str = "auto",
        deterministic: bool = False,
        rngs: Optional[nnx.Rngs] = None,
        _params: Optional[StackParams] = None,
        **cell_options: Any,
    ):
        if _params is None:
            if rngs is None:
                raise ValueError("expected rngs=nnx.Rngs(...) to initialise the parameters, got None")
            _, init_fn, _ = _KINDS[self._kind]
            _params = init_fn(
                rngs["params"](),
                input_size,
                hidden_size,
                num_layers=num_layers,
                bidirectional=bidirectional,
                dtype=dtype,
                **cell_options,
            )
        self._setup(
            _params,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            variational_dropout=variational_dropout,
            compute_dtype=compute_dtype,
            unroll=unroll,
            hoist=hoist,
            impl=impl,
            deterministic=deterministic,
            rngs=rngs,
        )

    def _setup(
        self,
        params: StackParams,
        *,
        dropout: float,
        recurrent_dropout: float,
        variational_dropout: bool,
        compute_dtype: Optional[DType],
        unroll: int,
        hoist: int,
        impl: str,
        deterministic: bool,
        rngs: Optional[nnx.Rngs],
    ) -> None:
        for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"expected {name} in [0, 1), got {rate}")
        cell, _, _ = _KINDS[self._kind]
        if cell_of(params) is not cell:
            raise TypeError(f"expected {cell.name.upper()} params, got {cell_of(params).name.upper()} params")
        self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, params))
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.variational_dropout = variational_dropout
        self.compute_dtype = compute_dtype
        self.unroll = unroll
        self.hoist = hoist
        self.impl = impl
        self.deterministic = deterministic
        if dropout > 0.0 or recurrent_dropout > 0.0:
            if rngs is None:
                raise ValueError(
                    "expected rngs (an nnx.Rngs with a 'dropout' or default stream) when dropout > 0, got None"
                )
            self.rngs = rngs["dropout"].fork()
        else:
            self.rngs = nnx.data(None)

    # -- pure params in and out -------------------------------------------------
    def pure_params(self) -> StackParams:
        """The module's parameters as a ``StackParams`` of plain arrays (usable with ``lstm_jax.lstm``)."""
        return jax.tree_util.tree_map(lambda v: v.get_value(), self.params, is_leaf=_is_variable)

    def load_params(self, params: StackParams) -> None:
        """Overwrite the parameter values in place with ``params`` (same structure, shapes, dtypes)."""
        _check_same_structure(self.pure_params(), params, "params")
        jax.tree_util.tree_map(lambda v, a: v.set_value(a), self.params, params, is_leaf=_is_variable)

    @classmethod
    def from_params(cls, params: StackParams, **kwargs):
        """Wrap existing ``StackParams`` of this module's cell kind (sizes and cell options are read from it).

        ``kwargs``: the non-shape options (``dropout``, ``recurrent_dropout``,
        ``variational_dropout``, ``compute_dtype``, ``unroll``, ``hoist``, ``impl``, ``deterministic``,
        ``rngs``). ``rngs`` is only needed when dropout is used.
        """
        return cls(**stack_config(params), **kwargs, _params=params)

    def set_view(self, deterministic: Optional[bool] = None):
        """Used by ``nnx.view``: ``deterministic=True`` switches dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    # -- forward ------------------------------------------------------------------
    def __call__(
        self,
        xs: Array,
        *,
        lengths: Optional[Array] = None,
        initial_state: Optional[PyTree] = None,
        deterministic: Optional[bool] = None,
    ) -> tuple[Array, PyTree]:
        """Run the network: ``xs: [b, t, d_in]`` -> ``(ys: [b, t, D*d_out], final_state)``.

        Args:
          xs: ``[b, t, d_in]`` floating inputs.
          lengths: optional ``[b]`` ints in ``[1, t]`` (masking semantics of ``lstm_jax.lstm``).
          initial_state: optional state with leaves ``[b, L, D, d]``; zeros if None.
          deterministic: overrides the module's ``deterministic`` attribute; True = no dropout.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        use_dropout = not deterministic and (self.dropout > 0.0 or self.recurrent_dropout > 0.0)
        key = self.rngs() if use_dropout else None
        return _apply(self, self.pure_params(), xs, lengths, initial_state, key)


_NNX_ARGS = """
    Args:
      input_size: ``d_in``.
      hidden_size: ``d_h``.
      num_layers: ``L``.
      bidirectional: two directions (``D = 2``), outputs concatenated.{extra}
      dropout: inter-layer dropout rate (not after the last layer).
      recurrent_dropout: variational dropout rate on ``h`` inside the recurrence.
      variational_dropout: share the inter-layer mask across time steps.
      dtype: parameter dtype.
      compute_dtype: optional matmul dtype (e.g. ``jnp.bfloat16``); carry and outputs stay float32.
      unroll, hoist: passed to the scan (see ``lstm_jax.scan.scan_cell``).
      impl: the backend passed to the pure function (default ``"auto"``; see ``lstm_jax.lstm``).
      deterministic: default for ``__call__``; True = no dropout. ``model.eval()`` sets it.
      rngs: ``nnx.Rngs``; ``params`` (or default) stream initialises the weights, the
        ``dropout`` (or default) stream is forked for dropout keys.
"""


class LSTM(_RecurrentNNX):
    __doc__ = (
        "NNX LSTM network over ``lstm_jax.lstm``; ``self.params`` is a ``StackParams`` of ``nnx.Param``.\n"
        + _NNX_ARGS.format(extra="\n      proj_size, peephole, layer_norm, forget_bias: cell options of ``init_lstm``.")
    )
    _kind = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        proj_size: int = 0,
        peephole: bool = False,
        layer_norm: bool = False,
        forget_bias: float = 1.0,
        **options: Any,
    ):
        cell_options: dict[str, Any] = dict(
            proj_size=proj_size, peephole=peephole, layer_norm=layer_norm, forget_bias=forget_bias
        )
        super().__init__(input_size, hidden_size, **options, **cell_options)


class GRU(_RecurrentNNX):
    __doc__ = (
        "NNX GRU network (PyTorch's equations) over ``lstm_jax.gru``; ``self.params`` is a "
        "``StackParams`` of ``nnx.Param``.\n" + _NNX_ARGS.format(extra="")
    )
    _kind = "gru"


class RNN(_RecurrentNNX):
    __doc__ = (
        "NNX tanh-RNN network over ``lstm_jax.rnn``; ``self.params`` is a ``StackParams`` of "
        "``nnx.Param``.\n" + _NNX_ARGS.format(extra="")
    )
    _kind = "rnn"


# --------------------------------------------------------------------------- linen
def to_linen_variables(params: StackParams) -> dict:
    """``StackParams`` -> the variables dict of ``LSTMLinen``/``GRULinen``/``RNNLinen``."""
    cell_of(params)  # type check
    return {"params": {"stack": params}}


def from_linen_variables(variables) -> StackParams:
    """Variables dict of a linen module of this file -> its ``StackParams``."""
    try:
        params = variables["params"]["stack"]
    except (KeyError, TypeError):
        raise TypeError(
            f"expected a variables dict {{'params': {{'stack': StackParams}}}}, got {type(variables).__name__}"
        ) from None
    cell_of(params)
    return params


class _RecurrentLinen(linen.Module):
    """Shared body of the linen modules; subclasses fix ``_kind`` and add cell options."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    variational_dropout: bool = False
    dtype: Any = jnp.float32
    compute_dtype: Any = None
    unroll: int = 1
    hoist: int = 0
    impl: str = "auto"
    deterministic: Optional[bool] = None

    _kind = ""

    def _cell_options(self) -> dict:
        return {}

    @linen.compact
    def __call__(self, xs, *, lengths=None, initial_state=None, deterministic: Optional[bool] = None):
        if not hasattr(xs, "shape") or xs.ndim != 3:
            raise ValueError(
                f"expected xs of shape [b, t, d_in] (rank 3), got {getattr(xs, 'shape', type(xs).__name__)}"
            )
        _, init_fn, _ = _KINDS[self._kind]

        def init(key):
            return init_fn(
                key,
                int(xs.shape[-1]),
                self.hidden_size,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                dtype=self.dtype,
                **self._cell_options(),
            )

        params = self.param("stack", init)
        if deterministic is None:
            deterministic = True if self.deterministic is None else self.deterministic
        use_dropout = not deterministic and (self.dropout > 0.0 or self.recurrent_dropout > 0.0)
        key = self.make_rng("dropout") if use_dropout else None
        return _apply(self, params, xs, lengths, initial_state, key)


_LINEN_DOC = """linen {kind} network over ``lstm_jax.{name}``; variables ``{{"params": {{"stack": StackParams}}}}``.

    ``input_size`` is taken from ``xs`` at ``init``. Attributes as the NNX ``{cls}`` module
    (``hidden_size``, ``num_layers``, ``bidirectional``,{extra} ``dropout``, ``recurrent_dropout``,
    ``variational_dropout``, ``dtype``, ``compute_dtype``, ``unroll``, ``hoist``, ``impl``);
    ``deterministic`` may be set as an attribute or passed to ``__call__`` (the call argument wins;
    if neither is given the module is deterministic, i.e. no dropout). Dropout keys come from the
    ``"dropout"`` rng collection.
    ``__call__(xs [b, t, d_in], *, lengths=None, initial_state=None, deterministic=None)
    -> (ys, final_state)``. Convert with ``to_linen_variables`` / ``from_linen_variables``.
    """


class LSTMLinen(_RecurrentLinen):
    __doc__ = _LINEN_DOC.format(
        kind="LSTM", name="lstm", cls="LSTM", extra=" ``proj_size``, ``peephole``, ``layer_norm``, ``forget_bias``,"
    )
    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False
    forget_bias: float = 1.0

    _kind = "lstm"

    def _cell_options(self) -> dict:
        return dict(
            proj_size=self.proj_size, peephole=self.peephole, layer_norm=self.layer_norm, forget_bias=self.forget_bias
        )


class GRULinen(_RecurrentLinen):
    __doc__ = _LINEN_DOC.format(kind="GRU", name="gru", cls="GRU", extra="")
    _kind = "gru"


class RNNLinen(_RecurrentLinen):
    __doc__ = _LINEN_DOC.format(kind="tanh-RNN", name="rnn", cls="RNN", extra="")
    _kind = "rnn"
