"""Pieces every batch-level backend shares: the valid-prefix reversal (time-major) and the
per-example dropout keys drawn exactly as ``layers.run_stack`` draws them under ``jax.vmap``."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lstm_jax.typing import Array, PRNGKey

__all__ = ["permute_valid_prefix", "per_example_dropout_keys", "zero_padding"]


def _reverse_index(t: int, lengths: Array) -> Array:
    steps = jnp.arange(t)[:, None]
    lengths = lengths[None]
    return jnp.where(steps < lengths, lengths - 1 - steps, steps)  # [t, b]


@jax.custom_vjp
def _permute(x: Array, index: Array) -> Array:
    return jnp.take_along_axis(x, index[:, :, None], axis=0)


def _permute_fwd(x, index):
    return _permute(x, index), index


def _permute_bwd(index, ct):
    # the valid-prefix reversal is its own inverse, so its transpose is itself (a gather,
    # not the scatter-add autodiff would emit)
    return _permute(ct, index), None


_permute.defvjp(_permute_fwd, _permute_bwd)


def zero_padding(x: Array, lengths: Optional[Array]) -> Array:
    """``x: [t, b, d]`` with the steps past ``lengths: [b]`` set to zero (``x`` itself if None).

    A batch-level backend zeroes the padding before its input projection, as the core scan does:
    NaN/Inf junk there must not reach the weight gradients through ``dW_x = sum_t x_t^T dz_t``,
    where ``dz_t = 0``.
    """
    if lengths is None:
        return x
    valid = jnp.arange(x.shape[0])[:, None] < lengths[None, :]  # [t, b]
    return jnp.where(valid[:, :, None], x, jnp.zeros_like(x))


def permute_valid_prefix(x: Array, lengths: Optional[Array]) -> Array:
    """Time-major ``reverse_valid_prefix``: ``x: [t, b, d]``, ``lengths: [b]`` or None (flip)."""
    if lengths is None:
        return jnp.flip(x, axis=0)
    return _permute(x, _reverse_index(x.shape[0], lengths))


def per_example_dropout_keys(dropout_key: PRNGKey, b: int, num_layers: int, num_directions: int):
    """Per-example keys exactly as ``layers._batched`` + ``layers.run_stack`` derive them.

    Returns ``(k_between: [b, L] keys, k_rec: [b, L, D] keys)``.
    """
    keys = jax.random.split(dropout_key, b)

    def one(key):
        layer_keys = jax.random.split(key, num_layers)
        pairs = jax.vmap(jax.random.split)(layer_keys)  # [L, 2]
        return pairs[:, 0], jax.vmap(lambda k: jax.random.split(k, num_directions))(pairs[:, 1])

    return jax.vmap(one)(keys)
