"""Decoding under ``lax.while_loop``: greedy and beam search, for ONE example and batched.

Both stop at ``eos`` or at a length limit tied to the source,
``limit = clip(floor(len_ratio * src_len) + len_extra, 1, max_len)``; a hypothesis that
reaches the limit without ``eos`` ends there. ``banned`` token ids (e.g. ``pad``, ``bos``)
are never produced. Scores are sums of log-probabilities; beam search ranks finished
hypotheses by the GNMT length penalty, ``log_prob / ((5 + length) / 6) ** alpha``
(Wu et al. 2016), where ``length`` counts the tokens including ``eos``.

Beam bookkeeping (as fairseq): each step takes the ``2k`` best extensions of the ``k`` alive
hypotheses; those ending in ``eos`` among the best ``k`` join the finished set (its best
``k`` kept), the best ``k`` not ending in ``eos`` stay alive; at the limit every one of the
``2k`` extensions is finished. The search ends when ``k`` hypotheses have finished. With
``k = 1`` this is exactly greedy search.

Shapes: ``T = max_len`` (static), ``s`` source positions, ``k`` beam size, ``V`` vocabulary.
Nothing here is jitted: wrap the batched functions in ``jax.jit`` with the static
arguments (``max_len``, ``beam``, ...) as ``static_argnames``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstm_jax.seq2seq.model import DecoderCarry, Memory, Seq2SeqParams, decoder_step, encode
from lstm_jax.typing import Array

__all__ = [
    "Translation",
    "length_penalty",
    "decode_limit",
    "greedy_search",
    "beam_search",
    "greedy_decode",
    "beam_decode",
]

NEG = -1e9  # the score of an empty slot (finite, so no inf - inf)


class Translation(NamedTuple):
    """Decoded hypotheses. Greedy: leaves without the ``k`` axis; batched: with a leading ``b``."""

    tokens: Array  # [k, T] int, ``pad`` after the end
    lengths: Array  # [k] tokens including eos
    scores: Array  # [k] length-penalised log-probability (greedy: the log-probability); best first
    log_probs: Array  # [k] sum of the tokens' log-probabilities
    attention: Array  # [k, T, s] attention weights of each produced token (zero after the end)


def length_penalty(length: Array, alpha: float) -> Array:
    """GNMT length penalty ``((5 + length) / 6) ** alpha``."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def decode_limit(src_len: Array, max_len: int, len_ratio: float, len_extra: int) -> Array:
    """``clip(floor(len_ratio * src_len) + len_extra, 1, max_len)`` as an int."""
    limit = jnp.floor(len_ratio * src_len.astype(jnp.float32)).astype(jnp.int32) + len_extra
    return jnp.clip(limit, 1, max_len)


def _log_probs(logits: Array, banned: tuple) -> Array:
    if banned:
        logits = logits.at[..., jnp.asarray(banned)].set(-jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def greedy_search(
    params: Seq2SeqParams,
    carry: DecoderCarry,
    memory: Memory,
    memory_mask: Array,
    limit: Array,
    *,
    bos: int,
    eos: int,
    max_len: int,
    pad: int = 0,
    banned: tuple = (),
) -> Translation:
    """Greedy decoding of ONE encoded example (``carry``, ``memory``, ``memory_mask`` from ``encode``).

    Returns a ``Translation`` without the ``k`` axis: ``tokens: [T]``, scalars, ``attention: [T, s]``.
    """
    s = memory_mask.shape[0]

    def cond(state):
        t, _, _, _, _, _, done = state
        return jnp.logical_and(t < limit, jnp.logical_not(done))

    def body(state):
        t, c, prev, tokens, attn, logp, _ = state
        c, logits, weights = decoder_step(params, c, prev, memory, memory_mask)
        lp = _log_probs(logits, banned)
        token = jnp.argmax(lp).astype(jnp.int32)
        return (t + 1, c, token, tokens.at[t].set(token), attn.at[t].set(weights), logp + lp[token], token == eos)

    init = (
        jnp.int32(0),
        carry,
        jnp.int32(bos),
        jnp.full((max_len,), pad, jnp.int32),
        jnp.zeros((max_len, s), jnp.float32),
        jnp.float32(0.0),
        jnp.bool_(False),
    )
    t, _, _, tokens, attn, logp, _ = jax.lax.while_loop(cond, body, init)
    return Translation(tokens, t, logp, logp, attn)


class _Beam(NamedTuple):
    t: Array  # step
    carry: DecoderCarry  # leaves [k, ...]
    prev: Array  # [k] last tokens
    tokens: Array  # [k, T]
    attn: Array  # [k, T, s]
    logp: Array  # [k]
    fin: Translation  # finished hypotheses, best first


def _merge_finished(fin: Translation, cand: Translation, k: int) -> Translation:
    pool = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), fin, cand)
    _, best = jax.lax.top_k(pool.scores, k)
    return jax.tree_util.tree_map(lambda a: a[best], pool)


def _beam_step(state: _Beam, params, memory, memory_mask, limit, k, alpha, eos, banned) -> _Beam:
    t = state.t
    step = jax.vmap(decoder_step, in_axes=(None, 0, 0, None, None))
    carry, logits, weights = step(params, state.carry, state.prev, memory, memory_mask)
    v = logits.shape[-1]
    cand = (state.logp[:, None] + _log_probs(logits, banned)).reshape(-1)  # [k*V]
    scores, index = jax.lax.top_k(cand, 2 * k)
    beam, token = index // v, (index % v).astype(jnp.int32)
    tokens = state.tokens[beam].at[:, t].set(token)  # [2k, T]
    attn = state.attn[beam].at[:, t].set(weights[beam])  # [2k, T, s]
    is_eos = token == eos
    last = t + 1 >= limit
    finishes = jnp.logical_or(jnp.logical_and(is_eos, jnp.arange(2 * k) < k), last)
    finishes = jnp.logical_and(finishes, scores > NEG / 2)
    length = jnp.full((2 * k,), t + 1, jnp.int32)
    norm = jnp.where(finishes, scores / length_penalty(length, alpha), NEG)
    cand_fin = Translation(tokens, length, norm, scores, attn)
    fin = _merge_finished(state.fin, cand_fin, k)
    _, alive = jax.lax.top_k(jnp.where(is_eos, 2 * NEG, scores), k)  # at most k of 2k are eos
    pick = beam[alive]
    carry = jax.tree_util.tree_map(lambda a: a[pick], carry)
    return _Beam(t + 1, carry, token[alive], tokens[alive], attn[alive], scores[alive], fin)


def beam_search(
    params: Seq2SeqParams,
    carry: DecoderCarry,
    memory: Memory,
    memory_mask: Array,
    limit: Array,
    *,
    beam: int,
    bos: int,
    eos: int,
    max_len: int,
    alpha: float = 0.6,
    pad: int = 0,
    banned: tuple = (),
) -> Translation:
    """Beam search of width ``beam`` for ONE encoded example (see the module docstring).

    Returns a ``Translation`` with ``k = beam`` finished hypotheses, best first.
    """
    if not isinstance(beam, int) or beam < 1:
        raise ValueError(f"expected beam to be a positive int, got {beam!r}")
    if params.w_out.shape[1] < 2:
        raise ValueError(f"expected a target vocabulary of at least 2 tokens, got {params.w_out.shape[1]}")
    k, s = beam, memory_mask.shape[0]
    tile = lambda a: jnp.broadcast_to(a, (k,) + a.shape)  # noqa: E731
    fin = Translation(
        jnp.full((k, max_len), pad, jnp.int32),
        jnp.zeros((k,), jnp.int32),
        jnp.full((k,), NEG, jnp.float32),
        jnp.full((k,), NEG, jnp.float32),
        jnp.zeros((k, max_len, s), jnp.float32),
    )
    init = _Beam(
        jnp.int32(0),
        jax.tree_util.tree_map(tile, carry),
        jnp.full((k,), bos, jnp.int32),
        jnp.full((k, max_len), pad, jnp.int32),
        jnp.zeros((k, max_len, s), jnp.float32),
        jnp.full((k,), NEG, jnp.float32).at[0].set(0.0),
        fin,
    )

    def cond(state: _Beam):
        n_fin = jnp.sum(state.fin.scores > NEG / 2)
        return jnp.logical_and(state.t < limit, n_fin < k)

    body = partial(
        _beam_step,
        params=params,
        memory=memory,
        memory_mask=memory_mask,
        limit=limit,
        k=k,
        alpha=alpha,
        eos=eos,
        banned=banned,
    )
    return jax.lax.while_loop(cond, body, init).fin


def _encode_and_limits(params, src, src_len, max_len, len_ratio, len_extra, impl):
    memory, carry, mask = encode(params, src, src_len, impl=impl)
    return memory, carry, mask, decode_limit(src_len, max_len, len_ratio, len_extra)


def greedy_decode(
    params: Seq2SeqParams,
    src: Array,
    src_len: Array,
    *,
    bos: int,
    eos: int,
    max_len: int,
    len_ratio: float = 1.5,
    len_extra: int = 10,
    pad: int = 0,
    banned: tuple = (),
    impl: str = "auto",
) -> Translation:
    """Greedy translations of a batch ``src: [b, s]``, ``src_len: [b]`` (jit with the keyword
    arguments static). Returns ``Translation`` with ``tokens: [b, T]``, ``attention: [b, T, s]``.

    >>> from lstm_jax.seq2seq.model import init_seq2seq
    >>> p = init_seq2seq(jax.random.key(0), 7, 9, embed=4, hidden=8)
    >>> out = greedy_decode(p, jnp.ones((2, 5), jnp.int32), jnp.array([5, 3]), bos=1, eos=2, max_len=6)
    >>> out.tokens.shape, out.attention.shape
    ((2, 6), (2, 6, 5))
    """
    memory, carry, mask, limit = _encode_and_limits(params, src, src_len, max_len, len_ratio, len_extra, impl)
    run = partial(greedy_search, params, bos=bos, eos=eos, max_len=max_len, pad=pad, banned=banned)
    return jax.vmap(run)(carry, memory, mask, limit)


def beam_decode(
    params: Seq2SeqParams,
    src: Array,
    src_len: Array,
    *,
    beam: int,
    bos: int,
    eos: int,
    max_len: int,
    alpha: float = 0.6,
    len_ratio: float = 1.5,
    len_extra: int = 10,
    pad: int = 0,
    banned: tuple = (),
    impl: str = "auto",
) -> Translation:
    """Beam-search translations of a batch: ``Translation`` with ``tokens: [b, k, T]``,
    ``scores: [b, k]`` (best first) and ``attention: [b, k, T, s]``."""
    memory, carry, mask, limit = _encode_and_limits(params, src, src_len, max_len, len_ratio, len_extra, impl)
    run = partial(
        beam_search, params, beam=beam, bos=bos, eos=eos, max_len=max_len, alpha=alpha, pad=pad, banned=banned
    )
    return jax.vmap(run)(carry, memory, mask, limit)
