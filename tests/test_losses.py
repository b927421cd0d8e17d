"""Masked losses and metrics against torch / sklearn / per-sequence NumPy loops on the unpadded data."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error

from lstm_jax import losses as L

B, T, K, V = 4, 6, 3, 5
LENGTHS = np.array([6, 1, 4, 3], np.int32)


def _padded(rng, shape, fill=np.nan):
    """Random data whose padded steps hold ``fill`` (NaN by default: must never leak)."""
    a = rng.normal(size=shape).astype(np.float32)
    for i, n in enumerate(LENGTHS):
        a[i, n:] = fill
    return a


def _valid_rows(a):
    """Concatenate the valid steps of every sequence: [sum(lengths), ...]."""
    return np.concatenate([a[i, :n] for i, n in enumerate(LENGTHS)])


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("kind", ["mse", "mae", "rmse"])
def test_regression_losses_equal_sklearn_on_unpadded_steps(rng, kind):
    pred = _padded(rng, (B, T, K), fill=0.0)
    target = _padded(rng, (B, T, K))
    got = getattr(L, kind)(pred, target, LENGTHS)
    p, y = _valid_rows(pred), _valid_rows(target)
    want = {
        "mse": mean_squared_error(y, p),
        "mae": mean_absolute_error(y, p),
        "rmse": math.sqrt(mean_squared_error(y, p)),
    }[kind]
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    np.testing.assert_allclose(float(getattr(L, kind)(pred, target, mask=mask)), want, rtol=1e-5)


def test_masked_mse_gradient_ignores_nan_padding(rng):
    pred = _padded(rng, (B, T, K), fill=0.0)
    target = _padded(rng, (B, T, K))
    grad = jax.grad(lambda p: L.mse(p, target, LENGTHS))(jnp.asarray(pred))
    assert np.isfinite(np.asarray(grad)).all()
    # oracle: d/dp mean((p - y)^2) over valid entries = 2 (p - y) / count, 0 on padding
    want = np.zeros_like(pred)
    count = LENGTHS.sum() * K
    for i, n in enumerate(LENGTHS):
        want[i, :n] = 2 * (pred[i, :n] - target[i, :n]) / count
    chex.assert_trees_all_close(grad, want, atol=1e-6)


def test_softmax_cross_entropy_equals_torch_on_valid_steps(rng):
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, size=(B, T)).astype(np.int32)
    for i, n in enumerate(LENGTHS):
        labels[i, n:] = 99  # out-of-range padding labels must be ignored
    got = L.softmax_cross_entropy(logits, labels, LENGTHS)
    want = torch.nn.functional.cross_entropy(
        torch.tensor(_valid_rows(logits)), torch.tensor(_valid_rows(labels)).long()
    )
    np.testing.assert_allclose(float(got), want.item(), rtol=1e-5)
    # many-to-one form
    got2 = L.classification_loss(logits[:, 0], labels[:, 0])
    want2 = torch.nn.functional.cross_entropy(torch.tensor(logits[:, 0]), torch.tensor(labels[:, 0]).long())
    np.testing.assert_allclose(float(got2), want2.item(), rtol=1e-5)


def test_next_token_loss_equals_per_sequence_torch_loop(rng):
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    got = L.next_token_loss(logits, tokens, LENGTHS)
    nll, count = 0.0, 0
    for i, n in enumerate(LENGTHS):
        if n < 2:
            continue
        ce = torch.nn.functional.cross_entropy(
            torch.tensor(logits[i, : n - 1]), torch.tensor(tokens[i, 1:n]).long(), reduction="sum"
        )
        nll += ce.item()
        count += n - 1
    np.testing.assert_allclose(float(got), nll / count, rtol=1e-5)
    # bits per char: the same mean measured in base 2 directly
    logp2 = np.log2(torch.softmax(torch.tensor(logits[:, :-1]), -1).numpy())
    full = -np.mean(np.take_along_axis(logp2, tokens[:, 1:, None], -1))
    np.testing.assert_allclose(float(L.bits_per_char(L.next_token_loss(logits, tokens))), full, rtol=1e-5)


def test_last_valid_equals_python_indexing(rng):
    ys = rng.normal(size=(B, T, K)).astype(np.float32)
    got = L.last_valid(ys, LENGTHS)
    want = np.stack([ys[i, n - 1] for i, n in enumerate(LENGTHS)])
    chex.assert_trees_all_close(got, want)
    chex.assert_trees_all_close(L.last_valid(ys), ys[:, -1])
    pred, target = rng.normal(size=(B, K)), rng.normal(size=(B, K))
    np.testing.assert_allclose(float(L.last_step_mse(pred, target)), mean_squared_error(target, pred), rtol=1e-5)


def test_accuracy_equals_sklearn_on_valid_steps(rng):
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, size=(B, T)).astype(np.int32)
    got = L.accuracy(logits, labels, LENGTHS)
    want = accuracy_score(_valid_rows(labels), _valid_rows(logits).argmax(-1))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    want2 = accuracy_score(labels[:, 0], logits[:, 0].argmax(-1))
    np.testing.assert_allclose(float(L.accuracy(logits[:, 0], labels[:, 0])), want2, rtol=1e-6)


def test_losses_under_jit_match_eager(rng):
    pred = _padded(rng, (B, T, K), fill=0.0)
    target = _padded(rng, (B, T, K))
    eager = L.mse(pred, target, LENGTHS)
    jitted = jax.jit(L.mse)(pred, target, jnp.asarray(LENGTHS))
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (
            lambda: L.mse(np.zeros((2, 3, 1)), np.zeros((2, 3, 2))),
            ValueError,
            r"expected mse target of shape \(2, 3, 1\)",
        ),
        (lambda: L.mse(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.array([1, 4])), ValueError, r"lengths in \[0, 3\]"),
        (
            lambda: L.mse(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.array([1, 2, 3])),
            ValueError,
            r"lengths of shape \[2\]",
        ),
        (lambda: L.mse(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.array([1.0, 2.0])), TypeError, "integer dtype"),
        (
            lambda: L.mse(np.zeros((2, 3)), np.zeros((2, 3)), np.array([1, 2]), mask=np.ones((2, 3))),
            ValueError,
            "at most one",
        ),
        (
            lambda: L.softmax_cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 4), np.int32)),
            ValueError,
            r"labels of shape \(2, 3\)",
        ),
        (lambda: L.softmax_cross_entropy(np.zeros((2, 4)), np.zeros((2,))), TypeError, "integer cross-entropy labels"),
        (lambda: L.last_valid(np.zeros((2, 3))), ValueError, r"ys of shape \[b, t, d\]"),
        (lambda: L.next_token_loss(np.zeros((2, 1, 4)), np.zeros((2, 1), np.int32)), ValueError, "t >= 2"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()
