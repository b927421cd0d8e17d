"""impl="pallas" against the reference impl="scan": outputs, final states and gradients.

On CPU every kernel runs in Pallas interpret mode (chosen automatically), so shapes are tiny.
The GPU test (``-k gpu``) runs the real (Triton) lowering and is skipped elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import backends
from lstm_jax.backends import LayerCall, pallas
from lstm_jax.cells import LSTMCarry
from lstm_jax.layers import init_gru, init_lstm, lstm

F32_TOL = {"atol": 1e-5, "rtol": 1e-5}
ON_GPU = jax.default_backend() == "gpu"


def _problem(b, t, d_in, d_h, num_layers, bidirectional, lengths, seed=0, peephole=False):
    keys = jax.random.split(jax.random.key(seed), 7)
    params = init_lstm(keys[0], d_in, d_h, num_layers=num_layers, bidirectional=bidirectional, peephole=peephole)
    if peephole:  # initialised at zero: make them matter
        leaves, tree = jax.tree_util.tree_flatten(params, is_leaf=lambda x: hasattr(x, "w_peep"))
        peeps = jax.random.normal(keys[6], (len(leaves), 3, d_h))
        params = jax.tree_util.tree_unflatten(tree, [c._replace(w_peep=p) for c, p in zip(leaves, peeps)])
    xs = jax.random.normal(keys[1], (b, t, d_in))
    shape = (b, num_layers, 2 if bidirectional else 1, d_h)
    state = LSTMCarry(0.5 * jax.random.normal(keys[2], shape), 0.5 * jax.random.normal(keys[3], shape))
    cts = (jax.random.normal(keys[4], (b, t, shape[2] * d_h)), jax.random.normal(keys[5], (2,) + shape))
    if lengths is not None:
        lengths = jnp.asarray(lengths, jnp.int32)
        pad = jnp.arange(t)[None, :, None] >= lengths[:, None, None]
        xs = jnp.where(pad, jnp.nan, xs)  # junk in the padding must not reach outputs or gradients
    return params, xs, state, lengths, cts


def _run(impl, params, xs, state, call_kwargs, options):
    call = LayerCall(initial_state=state, **call_kwargs)
    if impl == "pallas":
        return pallas.run(params, xs, call, **options)
    return backends.run(impl, params, xs, call)


def _loss_and_grads(impl, params, xs, state, cts, call_kwargs, options=None):
    def loss(p, x, s):
        ys, final = _run(impl, p, x, s, call_kwargs, options or {})
        return jnp.sum(ys * cts[0]) + jnp.sum(final.h * cts[1][0]) + jnp.sum(final.c * cts[1][1]), (ys, final)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)


def _assert_tree_close(a, b, **tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, x.dtype, y.shape, y.dtype)
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


CASES = {
    # name: (b, t, num_layers, bidirectional, lengths, call kwargs, block_b, peephole)
    "one_layer_full_length": (2, 5, 1, False, None, {}, None, False),
    "bidirectional_lengths_1_and_t_three_programs": (5, 6, 1, True, [6, 1, 3, 6, 2], {}, 2, False),
    "peephole_bidirectional_lengths": (3, 5, 1, True, [5, 1, 3], {}, 2, True),
    "two_layers_bi_dropout_padded_tile": (
        3,
        5,
        2,
        True,
        [5, 1, 4],
        {"dropout": 0.3, "recurrent_dropout": 0.25, "variational_dropout": True, "dropout_key": jax.random.key(7)},
        2,
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_scan_outputs_states_and_gradients(case):
    b, t, num_layers, bi, lengths, kwargs, block_b, peephole = CASES[case]
    params, xs, state, lengths, cts = _problem(b, t, 3, 4, num_layers, bi, lengths, peephole=peephole)
    kwargs = dict(kwargs, lengths=lengths)
    (_, (ys_ref, fin_ref)), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, (ys, fin)), g = _loss_and_grads("pallas", params, xs, state, cts, kwargs, {"block_b": block_b})
    _assert_tree_close(ys, ys_ref, **F32_TOL)
    _assert_tree_close(fin, fin_ref, **F32_TOL)
    if lengths is not None:  # exact zeros past each length
        assert not np.any(np.asarray(ys)[np.arange(t)[None, :] >= np.asarray(lengths)[:, None]])
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))
    _assert_tree_close(g, g_ref, **F32_TOL)  # params, inputs (NaN where padded, as scan), initial state


def test_public_entry_point_defaults_and_shapes():
    params, xs, _, _, _ = _problem(2, 4, 3, 4, 1, True, None)
    ys, state = lstm(params, xs, impl="pallas")
    ys_ref, state_ref = lstm(params, xs, impl="scan")
    assert ys.shape == (2, 4, 8) and ys.dtype == jnp.float32 and state.c.shape == (2, 1, 2, 4)
    _assert_tree_close((ys, state), (ys_ref, state_ref), **F32_TOL)


def test_bf16_compute_close_to_scan():
    """bfloat16 matmul operands (f32 accumulation and carry): outputs within 2e-2, gradients within 5e-2 relative."""
    params, xs, state, lengths, cts = _problem(3, 5, 3, 4, 1, True, [5, 2, 1])
    kwargs = {"lengths": lengths, "compute_dtype": jnp.bfloat16}
    (_, (ys_ref, fin_ref)), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
    (_, (ys, fin)), g = _loss_and_grads("pallas", params, xs, state, cts, kwargs)
    _assert_tree_close((ys, fin), (ys_ref, fin_ref), atol=2e-2, rtol=2e-2)
    for a, r in zip(jax.tree_util.tree_leaves((g[0], g[2])), jax.tree_util.tree_leaves((g_ref[0], g_ref[2]))):
        assert a.dtype == r.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(a - r))) <= 5e-2 * (1.0 + float(jnp.max(jnp.abs(r))))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda k: init_lstm(k, 3, 4, layer_norm=True), "ln"),
        (lambda k: init_lstm(k, 3, 4, proj_size=2), "w_proj"),
        (lambda k: init_gru(k, 3, 4), "GRUParams"),
        (lambda k: init_lstm(k, 3, 4, dtype=jnp.bfloat16), "only float32 weights"),
    ],
)
def test_unsupported_cells_are_refused_with_a_reason(make, match):
    params = make(jax.random.key(0))
    xs = jnp.ones((2, 3, 3))
    assert match in pallas.unsupported(params, xs, LayerCall())
    if match != "GRUParams":  # lstm() itself rejects GRU params
        with pytest.raises(ValueError, match="impl='pallas' cannot run this call.*backends that can: scan"):
            lstm(params, xs, impl="pallas")
    assert backends.choose(params, xs, LayerCall()) != "pallas"


def test_compute_dtype_and_gpu_sizes():
    params = init_lstm(jax.random.key(0), 3, 4)
    assert "float16" in pallas.unsupported(params, jnp.ones((1, 2, 3)), LayerCall(compute_dtype=jnp.float16))
    assert pallas._gpu_reason(64, "float32") is None and pallas._gpu_reason(128, "bfloat16") is None
    for d_h, cdt in [(128, "float32"), (256, "bfloat16"), (48, "float32"), (8, "float32")]:
        assert f"got d_h={d_h}" in pallas._gpu_reason(d_h, cdt)
    with pytest.raises(ValueError, match="expected block_b to be a positive int, got 0"):
        pallas.run(params, jnp.ones((1, 2, 3)), LayerCall(), block_b=0)


@pytest.mark.skipif(not ON_GPU, reason="needs a GPU: runs the real Triton lowering of the Pallas kernels")
@pytest.mark.parametrize(
    "d_h, compute_dtype, peephole", [(64, None, False), (32, None, True), (128, jnp.bfloat16, False)]
)
def test_gpu_lowering_matches_scan(d_h, compute_dtype, peephole):
    """The kernels as compiled for the GPU against scan, both at full float32 matmul precision."""
    b, t = 37, 23  # 3 tiles of 16 with a padded one
    lengths = [t, 1, *np.random.default_rng(0).integers(1, t + 1, b - 2)]
    params, xs, state, lengths, cts = _problem(b, t, 16, d_h, 2, True, lengths, peephole=peephole)
    kwargs = {
        "lengths": lengths,
        "compute_dtype": compute_dtype,
        "recurrent_dropout": 0.2,
        "dropout": 0.1,
        "dropout_key": jax.random.key(3),
    }
    assert pallas.unsupported(params, xs, LayerCall(**kwargs)) is None
    with jax.default_matmul_precision("highest"):
        (_, out_ref), g_ref = _loss_and_grads("scan", params, xs, state, cts, kwargs)
        (_, out), g = _loss_and_grads("pallas", params, xs, state, cts, kwargs)
    # f32: outputs 1e-5; gradients summed over 37 x 23 steps 1e-4. bf16 operands: 3e-2 / 1e-1.
    tol = F32_TOL if compute_dtype is None else {"atol": 3e-2, "rtol": 3e-2}
    grad_tol = {"atol": 1e-4, "rtol": 1e-4} if compute_dtype is None else {"atol": 1e-1, "rtol": 1e-1}
    _assert_tree_close(out, out_ref, **tol)
    _assert_tree_close(g, g_ref, **grad_tol)
