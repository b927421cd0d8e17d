"""``lstm_jax.interop``: bad inputs give clear errors (messages matched), dtypes and
structure of the mapped params, lazy imports. Numerical parity with the peers lives in
``test_parity_torch.py`` and ``test_parity_flax_keras.py``."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")

import lstm_jax  # noqa: E402
from lstm_jax import interop  # noqa: E402

D_IN, D_H = 3, 4


def _lstm_cell(d_in=D_IN, d_h=D_H, **kw) -> lstm_jax.LSTMParams:
    z = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    return lstm_jax.LSTMParams(z(d_in, 4 * d_h), z(d_h, 4 * d_h), z(4 * d_h), **kw)


# --------------------------------------------------------------------------- imports
def test_importing_interop_imports_no_peer():
    code = "import sys, lstm_jax.interop; print(sorted(m for m in ('torch', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------- from_torch
@pytest.mark.parametrize("bad", [object(), "lstm", None])
def test_from_torch_rejects_non_modules(bad):
    match = r"expected a torch\.nn\.LSTM, GRU, RNN, LSTMCell, GRUCell or RNNCell module, got"
    with pytest.raises(TypeError, match=match):
        interop.from_torch(bad)


def test_from_torch_rejects_other_torch_modules():
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.LSTM.*got torch\.nn\.modules\.linear\.Linear"):
        interop.from_torch(torch.nn.Linear(3, 4))


@pytest.mark.parametrize(
    "module", [torch.nn.RNN(3, 4, nonlinearity="relu"), torch.nn.RNNCell(3, 4, nonlinearity="relu")]
)
def test_from_torch_rejects_relu_rnn(module):
    match = r"expected a torch RNN(Cell)? with nonlinearity='tanh'.*got nonlinearity='relu'"
    with pytest.raises(ValueError, match=match):
        interop.from_torch(module)


def test_from_torch_structure_and_dtype():
    torch.manual_seed(0)
    module = torch.nn.LSTM(D_IN, 6, num_layers=2, bidirectional=True, proj_size=2).double()
    params = interop.from_torch(module, dtype=jnp.float32)
    assert params.num_layers == 2 and params.num_directions == 2
    cell = params.layers[1][1]
    chex.assert_shape([cell.w_x, cell.w_h, cell.b, cell.w_proj], [(4, 24), (2, 24), (24,), (6, 2)])
    chex.assert_type([cell.w_x, cell.w_h, cell.b, cell.w_proj], jnp.float32)
    assert cell.w_peep is None and cell.ln is None
    # the mapping, written out: w_x = weight_ih.T, b = bias_ih + bias_hh, w_proj = weight_hr.T
    np.testing.assert_allclose(cell.w_x, module.weight_ih_l1_reverse.detach().numpy().T, rtol=1e-6)
    np.testing.assert_allclose(
        cell.b, (module.bias_ih_l1_reverse + module.bias_hh_l1_reverse).detach().numpy(), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(cell.w_proj, module.weight_hr_l1_reverse.detach().numpy().T, rtol=1e-6)


def test_bfloat16_round_trip_through_torch():
    params = lstm_jax.StackParams(
        (
            (
                _lstm_cell()._replace(
                    w_x=jnp.arange(4 * D_H * D_IN, dtype=jnp.bfloat16).reshape(D_IN, 4 * D_H) / 7,
                    w_h=jnp.ones((D_H, 4 * D_H), jnp.bfloat16),
                    b=jnp.full((4 * D_H,), -0.5, jnp.bfloat16),
                ),
            ),
        )
    )
    module = interop.to_torch(params)
    assert module.weight_ih_l0.dtype == torch.bfloat16
    back = interop.from_torch(module)
    chex.assert_type(back.layers[0][0].w_x, jnp.bfloat16)
    chex.assert_trees_all_equal(back, params)


# --------------------------------------------------------------------------- to_torch
def test_to_torch_rejects_peephole():
    params = lstm_jax.StackParams(((_lstm_cell(w_peep=jnp.zeros((3, D_H))),),))
    match = r"expected LSTM params without peephole weights .*got layers\[0\]\[0\]\.w_peep of shape \(3, 4\)"
    with pytest.raises(ValueError, match=match):
        interop.to_torch(params)
    with pytest.raises(ValueError, match=r"without peephole weights.*got params\.w_peep"):
        interop.to_torch(params.layers[0][0])


def test_to_torch_rejects_layer_norm():
    ones = lambda n: jnp.ones((n,), jnp.float32)  # noqa: E731
    ln = lstm_jax.LSTMLayerNorm(ones(4 * D_H), ones(4 * D_H), ones(D_H), ones(D_H))
    params = lstm_jax.StackParams(((_lstm_cell(ln=ln),),))
    with pytest.raises(ValueError, match=r"expected LSTM params without LayerNorm gains.*got layers\[0\]\[0\]\.ln"):
        interop.to_torch(params)


def test_to_torch_rejects_projected_single_cell():
    cell = _lstm_cell(d_h=D_H)._replace(w_h=jnp.zeros((2, 4 * D_H)), w_proj=jnp.zeros((D_H, 2)))
    with pytest.raises(ValueError, match=r"expected LSTMParams without w_proj \(torch\.nn\.LSTMCell has no proj_size"):
        interop.to_torch(cell)


@pytest.mark.parametrize("bad", [None, "params", {"w_x": 1}, (1, 2)])
def test_to_torch_rejects_non_params(bad):
    with pytest.raises(TypeError, match=r"expected StackParams or LSTMParams/GRUParams/RNNParams, got"):
        interop.to_torch(bad)


def test_to_torch_rejects_empty_stack():
    with pytest.raises(ValueError, match=r"expected StackParams with at least one layer"):
        interop.to_torch(lstm_jax.StackParams(()))


def test_to_torch_rejects_mismatched_layer_input_size():
    # layer 1 must take D * d_out = 4 inputs; give it 5
    params = lstm_jax.StackParams(((_lstm_cell(),), (_lstm_cell(d_in=5),)))
    with pytest.raises(ValueError, match=r"expected layers\[1\]\[0\]\.w_x of shape \(4, 16\), got \(5, 16\)"):
        interop.to_torch(params)


def test_to_torch_rejects_mismatched_hidden_and_bias_shapes():
    params = lstm_jax.StackParams(((_lstm_cell()._replace(w_h=jnp.zeros((D_H, 12))),),))
    with pytest.raises(ValueError, match=r"expected layers\[0\]\[0\]\.w_h of shape \(4, 16\), got \(4, 12\)"):
        interop.to_torch(params)
    params = lstm_jax.StackParams(((_lstm_cell()._replace(b=jnp.zeros((15,))),),))
    with pytest.raises(ValueError, match=r"expected layers\[0\]\[0\]\.b of shape \(16,\), got \(15,\)"):
        interop.to_torch(params)


def test_to_torch_rejects_mixed_stacks():
    z = jnp.zeros
    gru = lstm_jax.GRUParams(z((D_H, 3 * D_H)), z((D_H, 3 * D_H)), z(3 * D_H), z(3 * D_H))
    with pytest.raises(TypeError, match=r"expected LSTMParams in every layer, got GRUParams at layers\[1\]\[0\]"):
        interop.to_torch(lstm_jax.StackParams(((_lstm_cell(),), (gru,))))
    with pytest.raises(ValueError, match=r"expected 2 directions in every layer, got 1 in layer 1"):
        interop.to_torch(lstm_jax.StackParams(((_lstm_cell(), _lstm_cell()), (_lstm_cell(d_in=8),))))
    proj = _lstm_cell()._replace(w_h=jnp.zeros((2, 4 * D_H)), w_proj=jnp.zeros((D_H, 2)))
    with pytest.raises(ValueError, match=r"expected layers\[1\]\[0\]\.w_proj of shape \(4, 2\), got None"):
        interop.to_torch(lstm_jax.StackParams(((proj,), (_lstm_cell(d_in=2)._replace(w_h=jnp.zeros((2, 16))),))))


# --------------------------------------------------------------------------- from_flax
def test_from_flax_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"expected flax cell params with keys .*got \['dense', 'kernel'\]"):
        interop.from_flax({"dense": {}, "kernel": np.zeros((3, 4))})


def test_from_flax_rejects_mismatched_gate_kernels():
    names = ("ii", "if", "ig", "io", "hi", "hf", "hg", "ho")
    params = {k: {"kernel": np.zeros((D_IN if k[0] == "i" else D_H, D_H), np.float32)} for k in names}
    params["if"] = {"kernel": np.zeros((D_IN, D_H + 1), np.float32)}
    match = r"expected flax params 'if'\.kernel of shape \(3, 4\) like 'ii', got \(3, 5\)"
    with pytest.raises(ValueError, match=match):
        interop.from_flax({"params": params})


def test_from_flax_rejects_bad_fused_shapes():
    bad_ratio = {"dense_i": {"kernel": np.zeros((D_IN, 10))}, "dense_h": {"kernel": np.zeros((D_H, 10))}}
    match = (
        r"expected flax 'dense_h'\.kernel of shape \[d_h, 4\*d_h\] \(LSTM\) or \[d_h, 3\*d_h\] \(GRU\), got \(4, 10\)"
    )
    with pytest.raises(ValueError, match=match):
        interop.from_flax(bad_ratio)
    bad_input = {"dense_i": {"kernel": np.zeros((D_IN, 16))}, "dense_h": {"kernel": np.zeros((D_H, 12))}}
    match = r"expected flax GRU kernels \[d_in, 3\*d_h\] and \[d_h, 3\*d_h\] with d_h=4, got input kernel \(3, 16\)"
    with pytest.raises(ValueError, match=match):
        interop.from_flax(bad_input)
    bad_bias = {
        "dense_i": {"kernel": np.zeros((D_IN, 16))},
        "dense_h": {"kernel": np.zeros((D_H, 16)), "bias": np.zeros(4)},
    }
    with pytest.raises(ValueError, match=r"expected flax params 'dense_h'\.bias of shape \(16,\), got \(4,\)"):
        interop.from_flax(bad_bias)


def test_from_flax_kind_is_checked():
    lstm_params = {"dense_i": {"kernel": np.zeros((D_IN, 16))}, "dense_h": {"kernel": np.zeros((D_H, 16))}}
    with pytest.raises(ValueError, match=r"expected flax GRU cell params \(kind='gru'\), got LSTM params"):
        interop.from_flax(lstm_params, kind="gru")
    with pytest.raises(ValueError, match=r"expected kind None, 'lstm' or 'gru', got 'rnn'"):
        interop.from_flax(lstm_params, kind="rnn")
    assert isinstance(interop.from_flax(lstm_params, kind="lstm"), lstm_jax.LSTMParams)


@pytest.mark.parametrize("bad", [None, 3, np.zeros(4)])
def test_from_flax_rejects_non_dicts(bad):
    match = r"expected a flax LSTMCell/OptimizedLSTMCell/GRUCell params dict or NNX module, got"
    with pytest.raises(TypeError, match=match):
        interop.from_flax(bad)


def test_from_flax_rejects_unbound_linen_module():
    from flax import linen

    match = r"expected a flax cell's params .* or a bound module, got an unbound linen LSTMCell"
    with pytest.raises(TypeError, match=match):
        interop.from_flax(linen.LSTMCell(D_H))


def test_from_flax_rejects_non_default_activations():
    from flax import nnx

    cell = nnx.eval_shape(lambda: nnx.LSTMCell(D_IN, D_H, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"expected a flax cell with gate_fn=sigmoid, got gate_fn="):
        interop.from_flax(cell)
    cell = nnx.eval_shape(lambda: nnx.GRUCell(D_IN, D_H, activation_fn=jax.nn.relu, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"expected a flax cell with activation_fn=tanh, got activation_fn="):
        interop.from_flax(cell)


def test_from_flax_linen_gru_bias_layout():
    """Flax linen GRU: b_x = [b_ir, b_iz, b_in], b_h = [0, 0, b_hn] (the reset gate multiplies b_hn)."""
    rng = np.random.default_rng(0)
    p = {
        k: {"kernel": rng.normal(size=(D_IN if k[0] == "i" else D_H, D_H)).astype(np.float32)}
        for k in ("ir", "iz", "in", "hr", "hz", "hn")
    }
    for k in ("ir", "iz", "in", "hn"):
        p[k]["bias"] = rng.normal(size=(D_H,)).astype(np.float32)
    params = interop.from_flax(p)
    assert isinstance(params, lstm_jax.GRUParams)
    np.testing.assert_array_equal(params.b_x, np.concatenate([p["ir"]["bias"], p["iz"]["bias"], p["in"]["bias"]]))
    np.testing.assert_array_equal(params.b_h, np.concatenate([np.zeros(2 * D_H), p["hn"]["bias"]]))
    w_h = np.concatenate([p["hr"]["kernel"], p["hz"]["kernel"], p["hn"]["kernel"]], axis=1)
    np.testing.assert_array_equal(params.w_h, w_h)


# --------------------------------------------------------------------------- from_keras
@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def _built(layer, keras):
    with jax.numpy_rank_promotion("allow"):  # keras' own jax code broadcasts implicitly
        layer.build((2, 5, D_IN))
    return layer


def test_from_keras_rejects_other_layers(keras):
    with pytest.raises(TypeError, match=r"expected a keras\.layers\.LSTM, GRU or SimpleRNN layer, got Dense"):
        interop.from_keras(keras.layers.Dense(3))
    with pytest.raises(TypeError, match=r"expected a keras\.layers\.LSTM, GRU or SimpleRNN layer, got object"):
        interop.from_keras(object())


def test_from_keras_rejects_unbuilt(keras):
    with pytest.raises(ValueError, match=r"expected a built keras LSTM layer .*got an unbuilt one"):
        interop.from_keras(keras.layers.LSTM(D_H))


_ZEROS = dict(kernel_initializer="zeros", recurrent_initializer="zeros")


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda k: k.layers.LSTM(D_H, activation="relu", **_ZEROS),
            r"expected a keras LSTM with activation='tanh', got",
        ),
        (
            lambda k: k.layers.LSTM(D_H, recurrent_activation="hard_sigmoid", **_ZEROS),
            r"expected a keras LSTM with recurrent_activation='sigmoid', got",
        ),
        (
            lambda k: k.layers.LSTM(D_H, go_backwards=True, **_ZEROS),
            r"expected a keras LSTM with go_backwards=False, got go_backwards=True",
        ),
        (
            lambda k: k.layers.GRU(D_H, reset_after=False, **_ZEROS),
            r"expected a keras GRU with reset_after=True .*got reset_after=False",
        ),
        (
            lambda k: k.layers.SimpleRNN(D_H, activation="relu", **_ZEROS),
            r"expected a keras SimpleRNN with activation='tanh', got",
        ),
    ],
    ids=["activation", "recurrent_activation", "go_backwards", "reset_after", "simple_rnn_relu"],
)
def test_from_keras_rejects_unmappable_settings(keras, make, match):
    with pytest.raises(ValueError, match=match):
        interop.from_keras(_built(make(keras), keras))


def test_from_keras_gru_gate_reordering(keras):
    """Keras GRU gates are z, r, h; ours r, z, n."""
    layer = _built(keras.layers.GRU(D_H, **_ZEROS), keras)
    rng = np.random.default_rng(0)
    kernel, recurrent, bias = (rng.normal(size=np.shape(w)).astype(np.float32) for w in layer.get_weights())
    layer.set_weights([kernel, recurrent, bias])
    params = interop.from_keras(layer).layers[0][0]
    z, r, h = np.split(kernel, 3, axis=-1)
    np.testing.assert_array_equal(params.w_x, np.concatenate([r, z, h], axis=-1))
    z, r, h = np.split(bias[1], 3)
    np.testing.assert_array_equal(params.b_h, np.concatenate([r, z, h]))
