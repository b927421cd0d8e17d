"""``lstm_jax.profile``: matmul discovery, the floor's chain, and the report (not timings)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import LSTMCarry, init_lstm_cell, lstm_step
from lstm_jax.profile import (
    MatmulShape,
    ScanProfile,
    _floor_fn,
    peak_matmul_gflops,
    profile_scan,
    step_matmuls,
)

B, D, H, T = 3, 4, 8, 6


def _lstm_batch_step():
    p = init_lstm_cell(jax.random.key(0), D, H)
    return jax.vmap(partial(lstm_step, p)), LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H)))


def test_step_matmuls_finds_the_two_lstm_matmuls_with_their_flops():
    step, carry = _lstm_batch_step()
    mats = step_matmuls(step, carry, jnp.ones((B, D)))
    assert sorted((m.lhs, m.rhs) for m in mats) == sorted([((B, D), (D, 4 * H)), ((B, H), (H, 4 * H))])
    # 2 * B * (D + H) * 4H multiply-adds, counted by hand
    assert sum(m.flops for m in mats) == 2 * B * (D + H) * 4 * H
    assert all(m.dtype == "float32" for m in mats)


def test_step_matmuls_looks_inside_nested_jit_and_custom_vjp():
    w = jnp.ones((5, 7))

    @jax.custom_vjp
    def inner(x):
        return jax.jit(lambda x: x @ w)(x)

    inner.defvjp(lambda x: (inner(x), None), lambda _, g: (g @ w.T,))
    mats = step_matmuls(lambda c, x: (c, inner(x)), 0.0, jnp.ones((2, 5)))
    assert [(m.lhs, m.rhs) for m in mats] == [((2, 5), (5, 7))]


def test_floor_chain_equals_a_numpy_loop_of_the_same_matmuls():
    mats = (
        MatmulShape((2, 3), (3, 8), (((1,), (0,)), ((), ())), "float32", 0),
        MatmulShape((2, 4), (4, 8), (((1,), (0,)), ((), ())), "float32", 0),
    )
    rng = np.random.default_rng(0)
    rhs = tuple(rng.standard_normal(m.rhs).astype(np.float32) * 0.3 for m in mats)
    v0 = rng.standard_normal((2, 3)).astype(np.float32)
    got = jax.jit(partial(_floor_fn(mats), length=3))(jnp.asarray(v0), tuple(map(jnp.asarray, rhs)))
    v = v0
    for _ in range(3):  # each matmul's input: the previous output's leading elements, reshaped
        for m, r in zip(mats, rhs):
            v = v.reshape(-1)[: np.prod(m.lhs)].reshape(m.lhs) @ r
        v = v.reshape(-1)[:6].reshape(2, 3)
    np.testing.assert_allclose(np.asarray(got), v, rtol=1e-5, atol=1e-6)


def test_profile_scan_reports_every_unroll_and_both_floors():
    step, carry = _lstm_batch_step()
    report = profile_scan(step, carry, jnp.ones((T, B, D)), unrolls=(1, 3), reps=2, peak=False)
    assert isinstance(report, ScanProfile)
    assert [r.unroll for r in report.timings] == [1, 3]
    assert all(r.us_per_step > 0 and r.compile_s > 0 for r in report.timings)
    assert report.steps == T and len(report.matmuls) == 2
    assert report.floor_us_per_step > 0 and report.flop_floor_us_per_step is None
    assert report.best in report.timings
    text = str(report)
    assert "unroll" in text and "matmul floor" in text and f"best: unroll={report.best.unroll}" in text


def test_profile_scan_of_a_step_without_matmuls_and_bad_arguments():
    report = profile_scan(lambda c, x: (c + x, c * x), jnp.zeros(3), jnp.ones((4, 3)), unrolls=(2,), reps=1)
    assert report.matmuls == () and report.floor_us_per_step is None and report.flops_per_step == 0
    assert "unroll" in str(report)
    with pytest.raises(ValueError, match="expected unrolls to be positive ints"):
        profile_scan(lambda c, x: (c, x), jnp.zeros(3), jnp.ones((4, 3)), unrolls=(0,))
    with pytest.raises(ValueError, match="expected xs with at least one array leaf"):
        profile_scan(lambda c, x: (c, x), jnp.zeros(3), ())


def test_peak_matmul_rate_is_a_positive_number():
    assert peak_matmul_gflops(64, "float32", 2) > 0
