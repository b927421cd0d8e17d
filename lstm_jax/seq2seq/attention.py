"""Attention of one decoder query over the encoder memory of ONE example: Luong's dot and
general scores and Bahdanau's additive score, masked by the source length.

The kind of attention is the type of its params (``DotAttention``, ``GeneralAttention``,
``AdditiveAttention``), so params hold only arrays. Keys are computed once per source
(``attention_keys``), not at every decoder step.

Shapes: ``s`` source positions, ``d_m`` memory features (``D * d_enc``), ``d_q`` query
features (the decoder's hidden size), ``d_a`` additive-attention units.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import jax
import jax.numpy as jnp

from lstm_jax.keys import as_key
from lstm_jax.typing import Array, PRNGKey

__all__ = [
    "DotAttention",
    "GeneralAttention",
    "AdditiveAttention",
    "AttentionParams",
    "ATTENTIONS",
    "init_attention",
    "attention_keys",
    "attend",
]


class DotAttention(NamedTuple):
    """Luong dot score ``q . m_j`` (needs ``d_q == d_m``); no parameters."""


class GeneralAttention(NamedTuple):
    """Luong general score ``q . (W m_j)``."""

    w: Array  # [d_m, d_q]


class AdditiveAttention(NamedTuple):
    """Bahdanau additive score ``v . tanh(W_q q + W_k m_j)``."""

    w_q: Array  # [d_q, d_a]
    w_k: Array  # [d_m, d_a]
    v: Array  # [d_a]


AttentionParams = Union[DotAttention, GeneralAttention, AdditiveAttention]
ATTENTIONS = ("dot", "general", "bahdanau")


def init_attention(key: PRNGKey, kind: str, memory_size: int, query_size: int, *, units: int = 0) -> AttentionParams:
    """Initialise attention of ``kind`` (``"dot"``, ``"general"`` or ``"bahdanau"``).

    Args:
      key: PRNG key.
      kind: one of ``ATTENTIONS``.
      memory_size: ``d_m``.
      query_size: ``d_q``.
      units: ``d_a`` for ``"bahdanau"`` (0: ``d_q``).
    """
    init = jax.nn.initializers.lecun_normal()
    k1, k2, k3 = jax.random.split(as_key(key), 3)
    if kind == "dot":
        if memory_size != query_size:
            raise ValueError(
                f"expected memory_size == query_size for dot attention, got {memory_size} and {query_size}"
            )
        return DotAttention()
    if kind == "general":
        return GeneralAttention(init(k1, (memory_size, query_size), jnp.float32))
    if kind == "bahdanau":
        d_a = units or query_size
        return AdditiveAttention(
            init(k1, (query_size, d_a), jnp.float32),
            init(k2, (memory_size, d_a), jnp.float32),
            jax.random.normal(k3, (d_a,), jnp.float32) / jnp.sqrt(jnp.float32(d_a)),
        )
    raise ValueError(f"expected attention kind in {ATTENTIONS}, got {kind!r}")


def attention_keys(params: AttentionParams, memory: Array) -> Array:
    """What the scores compare the query with, once per source.

    ``memory: [s, d_m]`` -> keys ``[s, d_q]`` (dot, general) or ``[s, d_a]`` (additive).
    """
    if isinstance(params, DotAttention):
        return memory
    if isinstance(params, GeneralAttention):
        return memory @ params.w
    if isinstance(params, AdditiveAttention):
        return memory @ params.w_k
    raise TypeError(f"expected DotAttention, GeneralAttention or AdditiveAttention, got {type(params).__name__}")


def attend(params: AttentionParams, query: Array, keys: Array, memory: Array, mask: Array) -> tuple[Array, Array]:
    """Attention weights of ``query`` over the valid memory positions and their context vector.

    Args:
      params: attention params (their type selects the score).
      query: ``[d_q]``.
      keys: ``[s, d_k]`` from ``attention_keys``.
      memory: ``[s, d_m]``.
      mask: ``[s]`` bool, True at valid source positions (at least one).

    Returns:
      ``(context: [d_m], weights: [s])``; weights are exactly zero where ``mask`` is False.
    """
    if isinstance(params, AdditiveAttention):
        scores = jnp.tanh(keys + (query @ params.w_q)[None, :]) @ params.v
    else:
        scores = keys @ query
    scores = jnp.where(mask, scores, -jnp.inf)
    weights = jax.nn.softmax(scores)
    weights = jnp.where(mask, weights, 0.0)
    return weights @ memory, weights
