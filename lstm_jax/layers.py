"""Networks of cells: multi-layer stacks, bidirectional layers, inter-layer and variational
recurrent dropout, and the batched public entry points ``lstm``, ``gru`` and ``rnn``.

A network's parameters are a ``StackParams`` whose ``layers[l][d]`` holds the cell params of
layer ``l`` and direction ``d`` (0 forward, 1 backward). Everything about the network's shape
is read from that pytree, so params hold only arrays and nothing needs to be static.

State layout (documented once, used everywhere):

* per example: every leaf of a state is ``[L, D, d]``;
* batched (``lstm``, ``gru``, ``rnn``): ``[b, L, D, d]``.

For an LSTM the state is ``LSTMCarry(h: [b, L, D, d_out], c: [b, L, D, d_h])``; for GRU and
RNN it is the array ``h: [b, L, D, d_h]``. ``final_state.h[:, -1, 0]`` is the last layer's
forward state at each sequence's last valid step; ``final_state.h[:, -1, 1]`` is the backward
direction's state after it has read the sequence back to its first step.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import backends
from lstm_jax.backends import LayerCall
from lstm_jax.cells import (
    GRU_CELL,
    LSTM_CELL,
    RNN_CELL,
    CellDef,
    GRUParams,
    LSTMParams,
    RNNParams,
    init_gru_cell,
    init_lstm_cell,
    init_rnn_cell,
)
from lstm_jax.keys import as_key
from lstm_jax.scan import scan_cell
from lstm_jax.typing import Array, DType, PRNGKey, PyTree

__all__ = [
    "StackParams",
    "init_lstm",
    "init_gru",
    "init_rnn",
    "zero_state",
    "run_stack",
    "lstm",
    "gru",
    "rnn",
    "cell_of",
    "dropout_mask",
    "stack_states",
]


class StackParams(NamedTuple):
    """Parameters of a (possibly multi-layer, possibly bidirectional) recurrent network."""

    layers: tuple  # layers[l][d]: cell params (LSTMParams | GRUParams | RNNParams) of layer l, direction d

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_directions(self) -> int:
        return len(self.layers[0])


_CELL_OF_PARAMS = {LSTMParams: LSTM_CELL, GRUParams: GRU_CELL, RNNParams: RNN_CELL}


def cell_of(params: StackParams) -> CellDef:
    """The ``CellDef`` matching the cell params inside ``params``."""
    if not isinstance(params, StackParams) or not params.layers or not params.layers[0]:
        raise TypeError(f"expected StackParams with at least one layer, got {type(params).__name__}")
    kind = type(params.layers[0][0])
    if kind not in _CELL_OF_PARAMS:
        raise TypeError(f"expected LSTMParams, GRUParams or RNNParams cells, got {kind.__name__}")
    return _CELL_OF_PARAMS[kind]


# --------------------------------------------------------------------------- init
def _init_stack(key, input_size, num_layers, bidirectional, d_out, init_cell) -> StackParams:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"expected num_layers to be a positive int, got {num_layers!r}")
    num_directions = 2 if bidirectional else 1
    keys = jax.random.split(as_key(key), num_layers * num_directions).reshape(num_layers, num_directions)
    layers = []
    for layer in range(num_layers):
        d_in = input_size if layer == 0 else num_directions * d_out
        layers.append(tuple(init_cell(keys[layer, d], d_in) for d in range(num_directions)))
    return StackParams(tuple(layers))


def init_lstm(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    peephole: bool = False,
    layer_norm: bool = False,
    forget_bias: float = 1.0,
    dtype: DType = jnp.float32,
) -> StackParams:
    """Initialise an LSTM network (see ``cells.init_lstm_cell`` for the per-cell scheme).

    Layer ``l > 0`` takes ``D * d_out`` inputs (``D`` = 2 if bidirectional).

    >>> params = init_lstm(jax.random.key(0), 3, 16, num_layers=2, bidirectional=True)
    >>> ys, state = lstm(params, jnp.ones((4, 10, 3)))
    >>> ys.shape, state.h.shape
    ((4, 10, 32), (4, 2, 2, 16))
    """

    def init_cell(k, d_in):
        return init_lstm_cell(
            k,
            d_in,
            hidden_size,
            proj_size=proj_size,
            peephole=peephole,
            layer_norm=layer_norm,
            forget_bias=forget_bias,
            dtype=dtype,
        )

    if not isinstance(proj_size, int) or proj_size < 0 or (hidden_size and proj_size >= hidden_size):
        raise ValueError(
            f"expected 0 <= proj_size < hidden_size, got proj_size={proj_size!r}, hidden_size={hidden_size!r}"
        )
    return _init_stack(key, input_size, num_layers, bidirectional, proj_size or hidden_size, init_cell)


def init_gru(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: DType = jnp.float32,
) -> StackParams:
    """Initialise a GRU network (PyTorch's GRU equations; see ``cells.init_gru_cell``)."""
    return _init_stack(
        key,
        input_size,
        num_layers,
        bidirectional,
        hidden_size,
        lambda k, d_in: init_gru_cell(k, d_in, hidden_size, dtype=dtype),
    )


def init_rnn(
    key: PRNGKey,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype: DType = jnp.float32,
) -> StackParams:
    """Initialise a tanh-RNN network (see ``cells.init_rnn_cell``)."""
    return _init_stack(
        key,
        input_size,
        num_layers,
        bidirectional,
        hidden_size,
        lambda k, d_in: init_rnn_cell(k, d_in, hidden_size, dtype=dtype),
    )


# --------------------------------------------------------------------------- per example
def stack_states(states: list, num_layers: int, num_directions: int, axis: int = 0) -> PyTree:
    """Stack per-(layer, direction) states, listed layer-major, into leaves ``[..., L, D, d]``.

    ``axis`` is where the ``L, D`` axes go: 0 for one example (``[L, D, d]``), 1 after a batch
    axis (``[b, L, D, d]``).
    """

    def stack(*leaves):
        stacked = jnp.stack(leaves, axis=axis)
        shape = stacked.shape
        return stacked.reshape(shape[:axis] + (num_layers, num_directions) + shape[axis + 1 :])

    return jax.tree_util.tree_map(stack, *states)


def zero_state(params: StackParams) -> PyTree:
    """Zero state of ONE example: every leaf ``[L, D, d]``."""
    cell = cell_of(params)
    carries = [cell.zero_carry(p) for layer in params.layers for p in layer]
    return stack_states(carries, params.num_layers, params.num_directions)


def dropout_mask(key: PRNGKey, rate: float, shape, dtype) -> Array:
    """Inverted-dropout multiplier: 0 with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _cast_floats(tree: PyTree, dtype: Optional[DType]) -> PyTree:
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def run_stack(
    params: StackParams,
    xs: Array,
    *,
    length: Optional[Array] = None,
    initial_state: Optional[PyTree] = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    variational_dropout: bool = False,
    dropout_key: Optional[PRNGKey] = None,
    unroll: int = 1,
    hoist: int = 0,
    compute_dtype: Optional[DType] = None,
) -> tuple[Array, PyTree]:
    """Run a whole network over ONE example.

    Args:
      params: ``StackParams`` (any cell kind).
      xs: ``[t, d_in]``.
      length: optional scalar int, valid steps (``1 <= length <= t``); see ``scan`` for semantics.
      initial_state: state with leaves ``[L, D, d]``; zeros if None.
      dropout: rate of dropout on each layer's output before the next layer (not after the
        last layer, as in ``torch.nn.LSTM``).
      recurrent_dropout: rate of variational dropout on ``h`` inside the recurrence: one mask
        per sequence, layer and direction, sampled outside the scan (Gal & Ghahramani 2016).
      variational_dropout: if True the inter-layer dropout mask is also shared across time.
      dropout_key: PRNG key; with None the network is deterministic (no dropout at all).
      unroll: scan unroll factor.
      hoist: input projection chunk size (see ``scan.scan_cell``).
      compute_dtype: e.g. ``jnp.bfloat16``: weights and inputs are cast to it for the
        matmuls; the carry and ``ys`` stay in float32.

    Returns:
      ``(ys: [t, D*d_out], final_state)`` with final-state leaves ``[L, D, d]``.
    """
    cell = cell_of(params)
    params = _cast_floats(params, compute_dtype)
    state = zero_state(params) if initial_state is None else initial_state
    use_dropout = dropout_key is not None
    if use_dropout:
        layer_keys = jax.random.split(as_key(dropout_key, "dropout_key"), params.num_layers)
    finals = []
    inputs = xs
    for l, layer in enumerate(params.layers):
        if use_dropout:
            k_between, k_rec = jax.random.split(layer_keys[l])
            rec_keys = jax.random.split(k_rec, len(layer))
        if l > 0 and use_dropout and dropout > 0.0:
            shape = (1, inputs.shape[-1]) if variational_dropout else inputs.shape
            inputs = inputs * dropout_mask(k_between, dropout, shape, inputs.dtype)
        outputs = []
        for d, cell_params in enumerate(layer):
            carry0 = jax.tree_util.tree_map(lambda s: s[l, d], state)
            mask = None
            if use_dropout and recurrent_dropout > 0.0:
                h0 = carry0.h if cell is LSTM_CELL else carry0
                mask = dropout_mask(rec_keys[d], recurrent_dropout, h0.shape, h0.dtype)
            final, ys = scan_cell(
                cell,
                cell_params,
                carry0,
                inputs,
                length=length,
                reverse=(d == 1),
                unroll=unroll,
                recurrent_mask=mask,
                hoist=hoist,
            )
            outputs.append(ys)
            finals.append(final)
        inputs = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
    return inputs, stack_states(finals, params.num_layers, params.num_directions)


# --------------------------------------------------------------------------- validation
def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _validate(params: StackParams, xs, lengths, initial_state) -> None:
    """Trace-time checks of the batched API's inputs; messages read 'expected ..., got ...'."""
    cell = cell_of(params)
    first = params.layers[0][0]
    d_in = first.w_x.shape[0]
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"expected xs to be an array of shape [b, t, {d_in}], got {type(xs).__name__}")
    if xs.ndim != 3:
        raise ValueError(f"expected xs of shape [b, t, {d_in}] (rank 3), got shape {tuple(xs.shape)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"expected xs with a floating dtype, got {xs.dtype}")
    b, t, d = xs.shape
    if d != d_in:
        raise ValueError(f"expected xs of shape [b, t, {d_in}] (input_size {d_in}), got shape {tuple(xs.shape)}")
    if t < 1 or b < 1:
        raise ValueError(f"expected xs with at least one example and one time step, got shape {tuple(xs.shape)}")
    if lengths is not None:
        if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
            raise TypeError(f"expected lengths to be an int array of shape [{b}], got {type(lengths).__name__}")
        if tuple(lengths.shape) != (b,):
            raise ValueError(f"expected lengths of shape [{b}] (one per example), got shape {tuple(lengths.shape)}")
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"expected lengths with an integer dtype, got {lengths.dtype}")
        if _is_concrete(lengths):
            values = np.asarray(lengths)
            if values.min() < 1 or values.max() > t:
                raise ValueError(
                    f"expected lengths in [1, {t}] (t = xs.shape[1]), got values in [{values.min()}, {values.max()}]"
                )
    if initial_state is not None:
        expected = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct((b,) + a.shape, a.dtype), jax.eval_shape(zero_state, params)
        )
        exp_leaves, exp_def = jax.tree_util.tree_flatten(expected)
        got_leaves, got_def = jax.tree_util.tree_flatten(initial_state)
        kind = "LSTMCarry(h, c)" if cell is LSTM_CELL else "an array h"
        if exp_def != got_def:  # type: ignore[operator]
            raise TypeError(f"expected initial_state to be {kind}, got {type(initial_state).__name__}")
        for e, g in zip(exp_leaves, got_leaves):
            if tuple(g.shape) != tuple(e.shape):
                shapes = [tuple(x.shape) for x in exp_leaves]
                raise ValueError(
                    f"expected initial_state leaves of shapes {shapes} ([b, L, D, d]), "
                    f"got {[tuple(x.shape) for x in got_leaves]}"
                )


# --------------------------------------------------------------------------- batched API
IMPLS = ("auto",) + backends.names()


def _batched(params: StackParams, xs: Array, *, impl: str = "auto", **options) -> tuple[Array, PyTree]:
    """Validate a batched call and hand it to the backend ``impl`` (see ``lstm_jax.backends``)."""
    _validate(params, xs, options.get("lengths"), options.get("initial_state"))
    for name in ("dropout", "recurrent_dropout"):
        if not 0.0 <= options.get(name, 0.0) < 1.0:
            raise ValueError(f"expected {name} in [0, 1), got {options[name]}")
    # checked here, not in each backend: the kernel backends ignore both, yet bad values must fail
    if options.get("hoist", 0) < 0:
        raise ValueError(f"expected hoist >= 0, got {options['hoist']}")
    unroll = options.get("unroll", 1)
    if not isinstance(unroll, bool) and unroll < 1:
        raise ValueError(f"expected unroll >= 1, got {unroll}")
    if options.get("dropout_key") is not None:
        options["dropout_key"] = as_key(options["dropout_key"], "dropout_key")
    return backends.run(impl, params, xs, LayerCall(**options))


_BATCHED_DOC = """Run a {kind} network over a batch: ``jax.vmap`` of ``run_stack``.

    Args:
      params: from ``init_{name}`` (or ``interop.from_torch``).
      xs: ``[b, t, d_in]`` floating inputs.
      lengths: optional ``[b]`` ints in ``[1, t]``: past its length a sequence's carry is
        frozen and its outputs are exactly zero; the final state is the state at the last
        valid step; the backward direction reads only the valid prefix, reversed.
      initial_state: {state} with leaves ``[b, L, D, d]``; zeros if None.
      dropout, recurrent_dropout, variational_dropout, dropout_key: see ``run_stack``;
        without ``dropout_key`` the call is deterministic. Each example gets its own masks.
      unroll: scan unroll factor.
      hoist: input projection chunk size (0 = inside each step; see ``scan.scan_cell``).
      compute_dtype: optional matmul dtype (e.g. ``jnp.bfloat16``); carry and ``ys`` stay float32.
      impl: the backend (``lstm_jax.backends``). ``"auto"`` (default): ``backends.choose``, the
        first backend of ``backends.AUTO_ORDER`` for the platform that supports the call and
        whose ``backends.AUTO_WHEN`` rule holds -- on CPU, for plain float32 LSTMs when the
        C++ kernel is built, ``"cpu_kernel"`` if a layer has ``d_h >= 128`` or the CPU has AVX-512
        and ``"cpu_hybrid"`` otherwise, else ``"fused"`` for plain LSTMs, else ``"scan"``; forward-mode AD (``jax.jvp``) needs ``impl="scan"``.
        ``"scan"``: ``jax.vmap`` of the
        per-example scan, differentiated by autodiff. ``"fused"``: plain LSTMs only, the
        batch-level custom-VJP layer of ``lstm_jax.backends.fused`` (same results, faster
        training); ``"fused_recompute"`` and ``"fused_checkpoint"`` are its memory-saving
        modes. ``"pallas"``: the time loop inside one Pallas kernel (plain or peephole LSTMs).
        ``"cudnn"``: plain float32 LSTMs on a GPU, no dropout. ``"parallel"``: research mode,
        parallel-in-time Newton iterations. A backend that cannot serve the call raises ``ValueError`` naming
        the reason and the backends that can.

    Returns:
      ``(ys: [b, t, D*d_out], final_state)``, final-state leaves ``[b, L, D, d]``.

    Raises:
      ValueError: at trace time for a wrong rank or feature size, ``lengths`` of the wrong
        shape or out of ``[1, t]`` (checked when ``lengths`` is concrete), an
        ``initial_state`` of the wrong shape, a dropout rate outside ``[0, 1)``, or an
        ``impl`` that cannot serve the call.
      TypeError: for a non-array or non-floating ``xs``, integer-free ``lengths``, an
        ``initial_state`` of the wrong kind, or a ``dropout_key`` that is not a PRNG key.
    """


def _entry_point(cell: CellDef, kind: str, state: str):
    def entry(
        params: StackParams,
        xs: Array,
        *,
        lengths: Optional[Array] = None,
        initial_state: Optional[PyTree] = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        variational_dropout: bool = False,
        dropout_key: Optional[PRNGKey] = None,
        unroll: int = 1,
        hoist: int = 0,
        compute_dtype: Optional[DType] = None,
        impl: str = "auto",
    ) -> tuple[Array, PyTree]:
        got = cell_of(params)
        if got is not cell:
            raise TypeError(f"expected {cell.name.upper()} params for {cell.name}(), got {got.name.upper()} params")
        return _batched(
            params,
            xs,
            impl=impl,
            lengths=lengths,
            initial_state=initial_state,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            variational_dropout=variational_dropout,
            dropout_key=dropout_key,
            unroll=unroll,
            hoist=hoist,
            compute_dtype=compute_dtype,
        )

    entry.__name__ = entry.__qualname__ = cell.name
    entry.__doc__ = _BATCHED_DOC.format(kind=kind, name=cell.name, state=state)
    return entry


lstm = _entry_point(LSTM_CELL, "LSTM", "``LSTMCarry(h, c)``")
gru = _entry_point(GRU_CELL, "GRU", "an array ``h``")
rnn = _entry_point(RNN_CELL, "tanh-RNN", "an array ``h``")
