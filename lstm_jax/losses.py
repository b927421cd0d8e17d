"""Masked losses and metrics for sequence models.

Every function works on a batch and returns a scalar (``last_valid`` returns per-example
outputs). Sequence losses take optional ``lengths: [b]`` (valid steps ``1..t`` per example)
or ``mask: [b, t]`` (1 = valid step); padded steps never contribute, and the mean is taken
over valid steps only, so a padded batch gives exactly the loss of its unpadded sequences
pooled together.

Shapes: ``b`` batch, ``t`` time steps, ``k`` regression targets, ``V`` vocabulary size,
``C`` classes.

>>> pred, target, lengths = jnp.ones((2, 3, 1)), jnp.zeros((2, 3, 1)), jnp.array([3, 1])
>>> float(mse(pred, target, lengths=lengths))          # pred, target: [b, t, k]
1.0
>>> logits, labels = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
>>> round(float(softmax_cross_entropy(logits, labels)), 4)   # logits: [b, t, V]: log(4)
1.3863
>>> ys = jnp.arange(12.0).reshape(2, 3, 2)
>>> last_valid(ys, lengths)[:, 0].tolist()              # [b, t, d] -> [b, d]; feature 0
[4.0, 6.0]
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.typing import Array

__all__ = [
    "sequence_mask",
    "masked_mean",
    "mse",
    "mae",
    "rmse",
    "softmax_cross_entropy",
    "last_valid",
    "last_step_mse",
    "classification_loss",
    "next_token_loss",
    "accuracy",
    "bits_per_char",
]


def _shape(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _check_lengths(lengths, b: int, t: int) -> None:
    if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
        raise TypeError(f"expected lengths to be an int array of shape [{b}], got {type(lengths).__name__}")
    if tuple(lengths.shape) != (b,):
        raise ValueError(f"expected lengths of shape [{b}], got shape {tuple(lengths.shape)}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"expected lengths with an integer dtype, got {lengths.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > t):
            raise ValueError(f"expected lengths in [0, {t}], got values in [{values.min()}, {values.max()}]")


def sequence_mask(lengths: Array, t: int) -> Array:
    """Boolean mask of valid steps. ``lengths: [b]`` -> ``[b, t]``, True where ``step < length``."""
    return jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]


def _step_mask(b: int, t: int, lengths, mask) -> Optional[Array]:
    """``[b, t]`` float mask from ``lengths`` or ``mask`` (not both), or None."""
    if lengths is not None and mask is not None:
        raise ValueError("expected at most one of lengths and mask, got both")
    if lengths is not None:
        _check_lengths(lengths, b, t)
        return sequence_mask(lengths, t)
    if mask is not None:
        if _shape(mask) != (b, t):
            raise ValueError(f"expected mask of shape [{b}, {t}], got shape {_shape(mask)}")
        return jnp.asarray(mask).astype(bool)
    return None


def _expand(mask: Array, ndim: int) -> Array:
    mask = jnp.asarray(mask).astype(bool)
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def masked_mean(values: Array, mask: Optional[Array] = None) -> Array:
    """Mean of ``values`` over entries where ``mask`` is nonzero.

    Masked-out entries are replaced by 0 before summing (``jnp.where``), so NaN/Inf in
    padding never leaks into the result.

    Args:
      values: ``[b, t, ...]`` per-entry values.
      mask: ``[b, t]`` (broadcast over trailing axes) or None (plain mean).

    Returns:
      scalar; 0 when nothing is valid (never NaN).
    """
    values = jnp.asarray(values)
    if mask is None:
        return jnp.mean(values)
    mask = jnp.broadcast_to(_expand(mask, values.ndim), values.shape)
    total = jnp.sum(jnp.where(mask, values, jnp.zeros_like(values)))
    count = jnp.sum(mask.astype(values.dtype))
    return total / jnp.maximum(count, jnp.ones_like(count))


def _check_same_shape(name: str, a, b) -> None:
    if _shape(a) != _shape(b):
        raise ValueError(f"expected {name} target of shape {_shape(a)} (same as prediction), got {_shape(b)}")


def _regression(kind: str, pred, target, lengths, mask) -> Array:
    _check_same_shape(kind, pred, target)
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    step_mask = None
    if lengths is not None or mask is not None:
        if pred.ndim < 2:
            raise ValueError(f"expected pred of shape [b, t, ...] when lengths/mask are given, got {pred.shape}")
        step_mask = _step_mask(pred.shape[0], pred.shape[1], lengths, mask)
    err = pred - target
    if step_mask is not None:  # zero the error (not the loss) so padding cannot make NaN gradients
        err = jnp.where(jnp.broadcast_to(_expand(step_mask, err.ndim), err.shape), err, jnp.zeros_like(err))
    values = jnp.abs(err) if kind == "mae" else jnp.square(err)
    return masked_mean(values, step_mask)


def mse(pred: Array, target: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None) -> Array:
    """Mean squared error over valid steps. ``pred, target: [b, t, k]`` (or any equal shapes
    without ``lengths``/``mask``) -> scalar."""
    return _regression("mse", pred, target, lengths, mask)


def mae(pred: Array, target: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None) -> Array:
    """Mean absolute error over valid steps (shapes as ``mse``) -> scalar."""
    return _regression("mae", pred, target, lengths, mask)


def rmse(pred: Array, target: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None) -> Array:
    """Root mean squared error over valid steps (shapes as ``mse``) -> scalar."""
    return jnp.sqrt(_regression("mse", pred, target, lengths, mask))


def _check_logits_labels(logits, labels, what: str) -> None:
    ls, ys = _shape(logits), _shape(labels)
    if len(ls) < 2 or ls[:-1] != ys:
        raise ValueError(f"expected {what} labels of shape {ls[:-1]} (logits shape minus the class axis), got {ys}")
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise TypeError(f"expected integer {what} labels, got {jnp.asarray(labels).dtype}")


def _token_nll(logits: Array, labels: Array, mask: Optional[Array] = None) -> Array:
    """Per-entry negative log-likelihood, ``logits: [..., V]``, ``labels: [...]`` (labels of
    masked-out entries are replaced by 0, so padding labels may be anything)."""
    if mask is not None:
        labels = jnp.where(mask, jnp.asarray(labels), 0)
    logp = jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, jnp.asarray(labels)[..., None], axis=-1)[..., 0]


def softmax_cross_entropy(
    logits: Array, labels: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None
) -> Array:
    """Mean cross-entropy (nats) over valid steps.

    Args:
      logits: ``[b, t, V]`` unnormalised scores (or ``[b, V]`` without lengths/mask).
      labels: ``[b, t]`` ints in ``[0, V)``.
      lengths: optional ``[b]``; or mask: optional ``[b, t]``.
    """
    _check_logits_labels(logits, labels, "cross-entropy")
    step_mask = None
    if lengths is not None or mask is not None:
        if len(_shape(labels)) != 2:
            raise ValueError(f"expected logits of shape [b, t, V] when lengths/mask are given, got {_shape(logits)}")
        step_mask = _step_mask(_shape(labels)[0], _shape(labels)[1], lengths, mask)
    return masked_mean(_token_nll(logits, labels, step_mask), step_mask)


def last_valid(ys: Array, lengths: Optional[Array] = None) -> Array:
    """Output at each sequence's last valid step: ``ys: [b, t, d]`` -> ``[b, d]``.

    With ``lengths=None`` that is ``ys[:, -1]``; otherwise ``ys[i, lengths[i] - 1]``.
    Use it for many-to-one models on padded batches (padded outputs of ``lstm`` are zero).
    """
    ys = jnp.asarray(ys)
    if ys.ndim < 3:
        raise ValueError(f"expected ys of shape [b, t, d], got shape {ys.shape}")
    if lengths is None:
        return ys[:, -1]
    b, t = ys.shape[:2]
    _check_lengths(lengths, b, t)
    index = jnp.clip(jnp.asarray(lengths) - 1, 0, t - 1)
    return jnp.take_along_axis(ys, index.reshape((b, 1) + (1,) * (ys.ndim - 2)), axis=1)[:, 0]


def last_step_mse(pred: Array, target: Array) -> Array:
    """Many-to-one regression loss: ``pred, target: [b, k]`` -> scalar mean squared error."""
    _check_same_shape("last_step_mse", pred, target)
    return jnp.mean(jnp.square(jnp.asarray(pred) - jnp.asarray(target)))


def classification_loss(logits: Array, labels: Array) -> Array:
    """Many-to-one classification loss: ``logits: [b, C]``, ``labels: [b]`` ints -> mean nats."""
    if len(_shape(logits)) != 2:
        raise ValueError(f"expected logits of shape [b, C], got shape {_shape(logits)}")
    return softmax_cross_entropy(logits, labels)


def next_token_loss(
    logits: Array, tokens: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None
) -> Array:
    """Language-model loss: predict ``tokens[:, 1:]`` from ``logits[:, :-1]``.

    Args:
      logits: ``[b, t, V]``, the model output after reading ``tokens[:, :s+1]`` at step ``s``.
      tokens: ``[b, t]`` ints (the model input).
      lengths: optional ``[b]`` valid lengths of ``tokens``; a sequence of length ``n`` has
        ``n - 1`` targets. Or mask: ``[b, t]`` valid tokens (a target counts when both it and
        its predecessor are valid).

    Returns:
      mean nats per predicted token (``bits_per_char`` converts).
    """
    _check_logits_labels(logits, tokens, "next-token")
    if len(_shape(tokens)) != 2 or _shape(tokens)[1] < 2:
        raise ValueError(f"expected tokens of shape [b, t] with t >= 2, got {_shape(tokens)}")
    b, t = _shape(tokens)
    step_mask = _step_mask(b, t, lengths, mask)
    if step_mask is not None:
        step_mask = jnp.logical_and(step_mask[:, 1:], step_mask[:, :-1])
    nll = _token_nll(jnp.asarray(logits)[:, :-1], jnp.asarray(tokens)[:, 1:], step_mask)
    return masked_mean(nll, step_mask)


def accuracy(logits: Array, labels: Array, lengths: Optional[Array] = None, *, mask: Optional[Array] = None) -> Array:
    """Fraction of argmax predictions equal to ``labels`` over valid entries.

    ``logits: [b, C]`` with ``labels: [b]``, or ``logits: [b, t, V]`` with ``labels: [b, t]``
    (optionally masked by ``lengths: [b]`` or ``mask: [b, t]``).
    """
    _check_logits_labels(logits, labels, "accuracy")
    hits = (jnp.argmax(jnp.asarray(logits), axis=-1) == jnp.asarray(labels)).astype(jnp.float32)
    step_mask = None
    if lengths is not None or mask is not None:
        if hits.ndim != 2:
            raise ValueError(f"expected logits of shape [b, t, V] when lengths/mask are given, got {_shape(logits)}")
        step_mask = _step_mask(hits.shape[0], hits.shape[1], lengths, mask)
    return masked_mean(hits, step_mask)


def bits_per_char(mean_nats):
    """Convert a mean cross-entropy in nats per character to bits per character."""
    return mean_nats / math.log(2.0)
