"""The cuDNN backend: packing and semantics on CPU through ``jax.experimental.rnn.lstm_ref``
(``cudnn.reference_kernel``) against the scan backend; the real cuDNN call on a GPU only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import backends
from lstm_jax.backends import LayerCall, cudnn
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import init_lstm, lstm

ON_GPU = jax.default_backend() == "gpu"
needs_gpu = pytest.mark.skipif(not ON_GPU, reason=f"cuDNN needs a CUDA GPU, default backend is {jax.default_backend()}")

B, T, D_IN, H = 3, 7, 4, 5


def _setup(num_layers, bidirectional, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = init_lstm(k1, D_IN, H, num_layers=num_layers, bidirectional=bidirectional)
    xs = jax.random.normal(k2, (B, T, D_IN))
    nd = 2 if bidirectional else 1
    state = LSTMCarry(jax.random.normal(k3, (B, num_layers, nd, H)), jax.random.normal(k4, (B, num_layers, nd, H)))
    return params, xs, state


def _ref(params, xs, lengths=None, initial_state=None):
    return cudnn.cudnn_stack(params, xs, lengths=lengths, initial_state=initial_state, kernel=cudnn.reference_kernel)


def _scan(params, xs, lengths=None, initial_state=None):
    with jax.default_matmul_precision("highest"):
        return lstm(params, xs, lengths=lengths, initial_state=initial_state, impl="scan")


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


def test_pack_weights_matches_unpack():
    from jax.experimental import rnn

    params, _, _ = _setup(2, True)
    flat = cudnn.pack_weights(params)
    assert flat.shape == (rnn.get_num_params_in_lstm(D_IN, H, 2, True),) and flat.dtype == jnp.float32
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, D_IN, H, 2, True)
    for i, p in enumerate(p for layer in params.layers for p in layer):
        np.testing.assert_array_equal(w_ih[i], p.w_x.T)
        np.testing.assert_array_equal(w_hh[i], p.w_h.T)
        np.testing.assert_array_equal(b_ih[i], p.b)
        np.testing.assert_array_equal(b_hh[i], np.zeros_like(p.b))


def test_state_layout_roundtrip():
    s = jnp.arange(2 * 3 * 2 * 4.0).reshape(2, 3, 2, 4)  # [b, L, D, H]
    packed = cudnn.pack_state(s)
    assert packed.shape == (6, 2, 4)
    np.testing.assert_array_equal(packed[1 * 2 + 1, 0], s[0, 1, 1])  # pseudo-layer l*D + d
    np.testing.assert_array_equal(cudnn.unpack_state(packed, 3, 2), s)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("lengths", [None, [1, T, 4]])
@pytest.mark.parametrize("with_state", [False, True])
def test_reference_path_matches_scan(num_layers, bidirectional, lengths, with_state):
    params, xs, state = _setup(num_layers, bidirectional)
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    state = state if with_state else None
    ys, final = _ref(params, xs, lengths, state)
    ys_s, final_s = _scan(params, xs, lengths, state)
    assert ys.shape == ys_s.shape == (B, T, (2 if bidirectional else 1) * H) and ys.dtype == jnp.float32
    _close((ys, final), (ys_s, final_s))
    if lengths is not None:
        assert float(jnp.abs(ys[0, 1:]).max()) == 0.0  # zero past length 1


def test_reference_path_grads_match_scan_with_nan_padding():
    params, xs, state = _setup(2, True)
    lengths = jnp.asarray([1, T, 4], jnp.int32)
    xs = xs.at[0, 3:].set(jnp.nan)  # junk in the padding must not reach the gradients

    def loss(fn):
        def f(p, x, s):
            ys, fin = fn(p, x, lengths, s)
            return jnp.sum(ys**2) + jnp.sum(fin.h * fin.c)

        return jax.grad(f, argnums=(0, 1, 2))

    g_ref = loss(_ref)(params, xs, state)
    g_scan = loss(_scan)(params, xs, state)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g_ref))
    _close(g_ref, g_scan, tol=1e-4)


def test_unsupported_reasons():
    params, xs, _ = _setup(1, False)
    assert cudnn.unsupported(params, xs, LayerCall(), platform="cpu") == "cuDNN needs a CUDA/ROCm GPU, platform is cpu"
    assert cudnn.unsupported(params, xs, LayerCall(), platform="gpu") is None
    call = LayerCall(dropout=0.5, dropout_key=jax.random.key(0))
    assert "expected no dropout" in cudnn.unsupported(params, xs, call, platform="gpu")
    assert cudnn.unsupported(params, xs, LayerCall(dropout=0.5), platform="gpu") is None  # no key: deterministic
    peep = init_lstm(jax.random.key(1), D_IN, H, peephole=True)
    assert "w_peep" in cudnn.unsupported(peep, xs, LayerCall(), platform="gpu")
    f64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), params)
    assert "float32 only" in cudnn.unsupported(f64, xs, LayerCall(), platform="gpu")
    bf = LayerCall(compute_dtype=jnp.bfloat16)
    assert "compute_dtype" in cudnn.unsupported(params, xs, bf, platform="gpu")


@pytest.mark.skipif(ON_GPU, reason="checks the refusal on a machine without a GPU")
def test_refused_on_cpu_and_never_auto():
    params, xs, _ = _setup(1, False)
    with pytest.raises(ValueError, match="cuDNN needs a CUDA/ROCm GPU, platform is"):
        lstm(params, xs, impl="cudnn")
    assert backends.choose(params, xs, LayerCall()) != "cudnn"


@needs_gpu
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("ragged", [False, True])
def test_gpu_cudnn_matches_scan(num_layers, bidirectional, ragged):
    params, xs, state = _setup(num_layers, bidirectional)
    lengths = jnp.asarray([1, T, 4], jnp.int32) if ragged else None

    def f(impl):
        def loss(p, x, s):
            with jax.default_matmul_precision("highest"):
                ys, fin = lstm(p, x, lengths=lengths, initial_state=s, impl=impl)
            return jnp.sum(ys**2) + jnp.sum(fin.h * fin.c), (ys, fin)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    (_, out_c), g_c = f("cudnn")(params, xs, state)
    (_, out_s), g_s = f("scan")(params, xs, state)
    _close(out_c, out_s)
    _close(g_c, g_s)
