"""Parity with PyTorch: ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (and their cells) through
``interop.from_torch``, checked on outputs, final states and gradients (torch autograd), with
variable lengths against ``pack_padded_sequence(enforce_sorted=False)``; ``to_torch``
round-trips.

Layouts: our final states are ``[b, L, D, d]``; torch's ``h_n``/``c_n`` are ``[L*D, b, d]``
with index ``l*D + d``. Run with ``-s`` to print the largest errors measured.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lstm_jax  # noqa: E402
from lstm_jax import interop  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # torch's oneDNN path does not do LSTM projections and says so; its fallback is what we test.
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning"
)

torch.set_num_threads(1)

B, T, D_IN, D_H = 4, 7, 5, 6
LENGTHS = np.array([1, T, 3, 5])  # includes 1 and t, unsorted
TOL_FWD, TOL_GRAD = 1e-5, 1e-4

MAX_ERR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    print("\nlargest |ours - torch| per quantity:")
    for name, err in sorted(MAX_ERR.items()):
        print(f"  {name:24s} {err:.2e}")


def _close(what: str, got, want, tol: float) -> None:
    """Record the max abs error under ``what`` and assert it is within ``tol``."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    chex.assert_equal_shape([got, want])
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    MAX_ERR[what] = max(MAX_ERR.get(what, 0.0), err)
    chex.assert_trees_all_close(got, want, atol=tol, rtol=0.0)


def _np(t) -> np.ndarray:
    return t.detach().numpy()


def _state_to_torch(s: np.ndarray) -> np.ndarray:
    """Ours ``[b, L, D, d]`` -> torch ``[L*D, b, d]``."""
    b, L, D, d = s.shape
    return np.ascontiguousarray(np.transpose(s, (1, 2, 0, 3)).reshape(L * D, b, d))


def _state_from_torch(s: np.ndarray, L: int, D: int) -> np.ndarray:
    """Torch ``[L*D, b, d]`` -> ours ``[b, L, D, d]``."""
    _, b, d = s.shape
    return np.transpose(s.reshape(L, D, b, d), (2, 0, 1, 3))


def _torch_grads(module, kind: str) -> dict[str, np.ndarray]:
    """Torch autograd results mapped to our names ``l{l}d{d}.field`` (written out here, not
    via interop, so the mapping itself is under test too)."""
    D = 2 if module.bidirectional else 1
    out = {}
    for l in range(module.num_layers):
        for d in range(D):
            sfx = f"l{l}" + ("_reverse" if d else "")
            g = lambda name: getattr(module, f"{name}_{sfx}").grad  # noqa: E731
            key = f"l{l}d{d}"
            out[f"{key}.w_x"] = _np(g("weight_ih")).T
            out[f"{key}.w_h"] = _np(g("weight_hh")).T
            if module.bias:
                if kind == "gru":
                    out[f"{key}.b_x"] = _np(g("bias_ih"))
                    out[f"{key}.b_h"] = _np(g("bias_hh"))
                else:  # b = bias_ih + bias_hh, so both have the same gradient as b
                    np.testing.assert_allclose(_np(g("bias_ih")), _np(g("bias_hh")), atol=1e-5)
                    out[f"{key}.b"] = _np(g("bias_ih"))
            if kind == "lstm" and module.proj_size > 0:
                out[f"{key}.w_proj"] = _np(g("weight_hr")).T
    return out


def _our_grads(grad_params: lstm_jax.StackParams) -> dict[str, np.ndarray]:
    out = {}
    for l, layer in enumerate(grad_params.layers):
        for d, cell in enumerate(layer):
            for field, value in cell._asdict().items():
                if value is not None:
                    out[f"l{l}d{d}.{field}"] = np.asarray(value)
    return out


def _make_torch(kind: str, num_layers: int, bidirectional: bool, proj_size: int = 0, bias: bool = True, seed=0):
    torch.manual_seed(seed)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=True)
    if kind == "lstm":
        return torch.nn.LSTM(D_IN, D_H, proj_size=proj_size, **kw)
    if kind == "gru":
        return torch.nn.GRU(D_IN, D_H, **kw)
    return torch.nn.RNN(D_IN, D_H, nonlinearity="tanh", **kw)


def _check_against_torch(
    kind: str, module, *, packed: bool, hoist: int = 0, unroll: int = 1, grads: bool = True, tag: str = ""
):
    """Forward (outputs, final states) and, if ``grads``, gradients (inputs, initial state,
    all weights)."""
    L, D = module.num_layers, 2 if module.bidirectional else 1
    d_out = module.proj_size if kind == "lstm" and module.proj_size else D_H
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(B, T, D_IN)).astype(np.float32)
    w_y = rng.normal(size=(B, T, D * d_out)).astype(np.float32)
    w_h = rng.normal(size=(B, L, D, d_out)).astype(np.float32)
    w_c = rng.normal(size=(B, L, D, D_H)).astype(np.float32)
    h0 = rng.normal(size=(B, L, D, d_out)).astype(np.float32) if packed else None
    c0 = rng.normal(size=(B, L, D, D_H)).astype(np.float32) if packed else None
    lengths = LENGTHS if packed else None

    # ---- torch
    x_t = torch.tensor(xs, requires_grad=True)
    hx = None
    if packed:
        h0_t = torch.tensor(_state_to_torch(h0), requires_grad=True)
        c0_t = torch.tensor(_state_to_torch(c0), requires_grad=True)
        hx = (h0_t, c0_t) if kind == "lstm" else h0_t
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
    else:
        inp = x_t
    out, state_t = module(inp, hx)
    if packed:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_t, c_t = state_t if kind == "lstm" else (state_t, None)
    loss_t = (out * torch.tensor(w_y)).sum() + (h_t * torch.tensor(_state_to_torch(w_h))).sum()
    if kind == "lstm":
        loss_t = loss_t + (c_t * torch.tensor(_state_to_torch(w_c))).sum()
    module.zero_grad()
    loss_t.backward()

    # ---- ours
    params = interop.from_torch(module)
    run = {"lstm": lstm_jax.lstm, "gru": lstm_jax.gru, "rnn": lstm_jax.rnn}[kind]
    init = None
    if packed:
        init = lstm_jax.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)) if kind == "lstm" else jnp.asarray(h0)

    def loss_fn(params, xs, init):
        ys, final = run(
            params,
            xs,
            lengths=None if lengths is None else jnp.asarray(lengths),
            initial_state=init,
            hoist=hoist,
            unroll=unroll,
        )
        h = final.h if kind == "lstm" else final
        loss = jnp.sum(ys * w_y) + jnp.sum(h * w_h)
        if kind == "lstm":
            loss = loss + jnp.sum(final.c * w_c)
        return loss, (ys, final)

    if grads:
        grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True))
        (loss, (ys, final)), (g_params, g_xs, g_init) = grad_fn(params, jnp.asarray(xs), init)
    else:
        loss, (ys, final) = jax.jit(loss_fn)(params, jnp.asarray(xs), init)

    name = f"{kind}{tag}"
    _close(f"{name} outputs", ys, _np(out), TOL_FWD)
    h = final.h if kind == "lstm" else final
    _close(f"{name} h_n", h, _state_from_torch(_np(h_t), L, D), TOL_FWD)
    if kind == "lstm":
        _close(f"{name} c_n", final.c, _state_from_torch(_np(c_t), L, D), TOL_FWD)
    _close(f"{name} loss", loss, _np(loss_t), 1e-4)
    if not grads:
        return
    _close(f"{name} grad xs", g_xs, _np(x_t.grad), TOL_GRAD)
    if packed:
        gh = g_init.h if kind == "lstm" else g_init
        _close(f"{name} grad h0", gh, _state_from_torch(_np(h0_t.grad), L, D), TOL_GRAD)
        if kind == "lstm":
            _close(f"{name} grad c0", g_init.c, _state_from_torch(_np(c0_t.grad), L, D), TOL_GRAD)
    ours, theirs = _our_grads(g_params), _torch_grads(module, kind)
    if not module.bias:  # torch has no bias to differentiate; ours are zeros that stay unused
        ours = {k: v for k, v in ours.items() if not k.split(".")[1].startswith("b")}
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        _close(f"{name} grad weights", ours[key], theirs[key], TOL_GRAD)


# (config, packed): every config runs once, "full" (no lengths, zero initial state) or
# "packed" (lengths with 1 and t, random initial state); each run checks outputs, final
# states and gradients. Together they cover num_layers 1 and 3, both directions, proj_size,
# bias=False, with and without lengths (proj_size with lengths: the hoist/unroll tests below).
LSTM_CASES = {
    "L1-nobias-full": (dict(num_layers=1, bidirectional=False, bias=False), False),
    "L1-bi-proj-full": (dict(num_layers=1, bidirectional=True, proj_size=3), False),
    "L3-bi-packed": (dict(num_layers=3, bidirectional=True), True),
}
GRU_CASES = {
    "L1-nobias-full": (dict(num_layers=1, bidirectional=False, bias=False), False),
    "L3-bi-packed": (dict(num_layers=3, bidirectional=True), True),
}
RNN_CASES = {
    "L1-bi-packed": (dict(num_layers=1, bidirectional=True), True),
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
def test_lstm_matches_torch(case):
    config, packed = LSTM_CASES[case]
    _check_against_torch("lstm", _make_torch("lstm", **config), packed=packed)


@pytest.mark.parametrize("case", list(GRU_CASES))
def test_gru_matches_torch(case):
    config, packed = GRU_CASES[case]
    _check_against_torch("gru", _make_torch("gru", **config), packed=packed)


@pytest.mark.parametrize("case", list(RNN_CASES))
def test_rnn_matches_torch(case):
    config, packed = RNN_CASES[case]
    _check_against_torch("rnn", _make_torch("rnn", **config), packed=packed)


# (hoist, unroll) = (0, 1) is the default, run above; these cover every other value of hoist
# in {0, 4, t} and unroll in {1, 3}. hoist=4 leaves a remainder chunk (T=7), as does unroll=3.
# Gradients are checked on the chunked path (hoist=4, unroll=1), the one with its own masking
# code; unrolled and hoisted compiles of a gradient are slow, so the others check the forward.
@pytest.mark.parametrize("hoist, unroll", [(0, 3), (4, 1), (4, 3), (T, 1)])
def test_lstm_hoist_unroll_match_torch(hoist, unroll):
    module = _make_torch("lstm", num_layers=1, bidirectional=True, proj_size=4, seed=3)
    _check_against_torch(
        "lstm", module, packed=True, hoist=hoist, unroll=unroll, grads=(hoist, unroll) == (4, 1), tag=" hoist/unroll"
    )


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_single_cells_match_torch(kind):
    torch.manual_seed(5)
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
    cell = cls(D_IN, D_H)
    params = interop.from_torch(cell)
    step = {"lstm": lstm_jax.lstm_step, "gru": lstm_jax.gru_step, "rnn": lstm_jax.rnn_step}[kind]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, D_IN)).astype(np.float32)
    h = rng.normal(size=(B, D_H)).astype(np.float32)
    c = rng.normal(size=(B, D_H)).astype(np.float32)
    if kind == "lstm":
        h_t, c_t = cell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
        carry, y = jax.vmap(step, in_axes=(None, 0, 0))(params, lstm_jax.LSTMCarry(jnp.asarray(h), jnp.asarray(c)), x)
        _close("cells h", carry.h, _np(h_t), TOL_FWD)
        _close("cells c", carry.c, _np(c_t), TOL_FWD)
    else:
        h_t = cell(torch.tensor(x), torch.tensor(h))
        carry, y = jax.vmap(step, in_axes=(None, 0, 0))(params, jnp.asarray(h), x)
        _close("cells h", carry, _np(h_t), TOL_FWD)
    _close("cells h", y, _np(h_t), TOL_FWD)


_JIT_RUN = {"lstm": jax.jit(lstm_jax.lstm), "gru": jax.jit(lstm_jax.gru), "rnn": jax.jit(lstm_jax.rnn)}


def _random_cell(kind: str, rng, d_in: int, proj: int = 0):
    """Random cell params built directly in numpy: every entry nonzero, so a lost, doubled or
    transposed weight shows."""
    n = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    d_out = proj or D_H
    r = lambda *shape: jnp.asarray(rng.normal(scale=0.5, size=shape).astype(np.float32))  # noqa: E731
    if kind == "lstm":
        w_proj = r(D_H, proj) if proj else None
        return lstm_jax.LSTMParams(r(d_in, 4 * D_H), r(d_out, 4 * D_H), r(4 * D_H), w_proj=w_proj)
    if kind == "gru":
        return lstm_jax.GRUParams(r(d_in, n * D_H), r(D_H, n * D_H), r(n * D_H), r(n * D_H))
    return lstm_jax.RNNParams(r(d_in, D_H), r(D_H, D_H), r(D_H))


def _random_stack(kind: str, num_layers: int, num_directions: int, proj: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    d_out = proj or D_H
    return lstm_jax.StackParams(
        tuple(
            tuple(
                _random_cell(kind, rng, D_IN if l == 0 else num_directions * d_out, proj) for _ in range(num_directions)
            )
            for l in range(num_layers)
        )
    )


@pytest.mark.parametrize("kind, batch_first", [("lstm", True), ("lstm", False), ("gru", True), ("rnn", False)])
def test_to_torch_round_trip(kind, batch_first):
    params = {
        "lstm": lambda: _random_stack("lstm", 2, 2, proj=3),
        "gru": lambda: _random_stack("gru", 1, 2),
        "rnn": lambda: _random_stack("rnn", 2, 1),
    }[kind]()
    module = interop.to_torch(params, batch_first=batch_first)
    assert module.batch_first is batch_first
    back = interop.from_torch(module)
    chex.assert_trees_all_equal_structs(back, params)
    chex.assert_trees_all_equal(back, params)  # exact: b goes into bias_ih, zeros into bias_hh

    xs = np.random.default_rng(0).normal(size=(B, T, D_IN)).astype(np.float32)
    ys, final = _JIT_RUN[kind](params, jnp.asarray(xs))
    x_t = torch.tensor(xs if batch_first else np.ascontiguousarray(xs.transpose(1, 0, 2)))
    with torch.no_grad():
        out, state_t = module(x_t)
    out = _np(out) if batch_first else _np(out).transpose(1, 0, 2)
    _close("to_torch outputs", ys, out, TOL_FWD)
    h_t = state_t[0] if kind == "lstm" else state_t
    L, D = params.num_layers, params.num_directions
    _close("to_torch h_n", final.h if kind == "lstm" else final, _state_from_torch(_np(h_t), L, D), TOL_FWD)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_to_torch_single_cell_round_trip(kind):
    params = _random_cell(kind, np.random.default_rng(4), D_IN)
    module = interop.to_torch(params)
    expected = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind]
    assert type(module) is expected
    chex.assert_trees_all_equal(interop.from_torch(module), params)


def test_bias_false_gives_zero_biases():
    module = _make_torch("lstm", num_layers=2, bidirectional=False, bias=False)
    params = interop.from_torch(module)
    for layer in params.layers:
        chex.assert_trees_all_equal(layer[0].b, jnp.zeros((4 * D_H,), jnp.float32))
