"""An attentional encoder-decoder: source embedding + (bi)LSTM encoder masked by the source
lengths, a pure decoder step with Luong or Bahdanau attention (and Luong's input feeding),
and the teacher-forced log-likelihood and label-smoothed loss, the decoder run under
``lax.scan``.

Shapes: ``b`` batch, ``s`` source positions, ``T`` target positions, ``V_s``/``V_t``
vocabularies, ``e`` embedding size, ``d_m`` memory features (``D * d_enc``), ``d`` decoder
units. Token id conventions (``pad``, ``bos``, ``eos``) belong to the caller; the model only
reads ids and lengths.

The decoder step is ``decoder_step(params, carry, prev_token, memory, memory_mask) ->
(carry, logits, attention)`` for ONE example; ``jax.vmap`` batches it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lstm_jax.cells import LSTMCarry, LSTMParams, init_lstm_cell, lstm_step
from lstm_jax.keys import as_key
from lstm_jax.layers import StackParams, dropout_mask, init_lstm, lstm
from lstm_jax.seq2seq.attention import AdditiveAttention, AttentionParams, attend, attention_keys, init_attention
from lstm_jax.typing import Array, PRNGKey

__all__ = [
    "Seq2SeqParams",
    "Memory",
    "DecoderCarry",
    "init_seq2seq",
    "encode",
    "decoder_core",
    "readout",
    "decoder_step",
    "teacher_forced",
    "target_log_probs",
    "sequence_log_prob",
    "seq2seq_loss",
]


class Seq2SeqParams(NamedTuple):
    """Parameters of the attentional encoder-decoder."""

    src_embed: Array  # [V_s, e]
    encoder: StackParams  # LSTM stack over the source embeddings
    bridge_w: Array  # [d_m, L_dec * 2 * d]: encoder final state -> decoder initial (h, c)
    bridge_b: Array  # [L_dec * 2 * d]
    tgt_embed: Array  # [V_t, e]
    decoder: tuple  # L_dec LSTMParams; layer 0 reads [e] (+ [d] fed back, or + [d_m] context)
    attention: AttentionParams
    w_combine: Array  # [d + d_m, d]: attentional vector tanh(W [h; context])
    w_out: Array  # [d, V_t]
    b_out: Array  # [V_t]


class Memory(NamedTuple):
    """The encoded source of one example (leaves gain a leading ``b`` when batched)."""

    values: Array  # [s, d_m] encoder outputs (zero at padding)
    keys: Array  # [s, d_k] attention keys of the values


class DecoderCarry(NamedTuple):
    """Decoder state of one example."""

    layers: tuple  # L_dec LSTMCarry(h: [d], c: [d])
    feed: Array  # [d] the previous attentional vector (input feeding)


def init_seq2seq(
    key: PRNGKey,
    src_vocab: int,
    tgt_vocab: int,
    *,
    embed: int = 256,
    hidden: int = 256,
    enc_layers: int = 1,
    dec_layers: int = 1,
    bidirectional: bool = True,
    attention: str = "general",
    input_feeding: bool = True,
) -> Seq2SeqParams:
    """Initialise an encoder-decoder (encoder ``hidden`` units per direction, decoder ``hidden``).

    ``attention``: ``"dot"`` (needs ``d_m == hidden``, i.e. a unidirectional encoder),
    ``"general"`` or ``"bahdanau"``. ``input_feeding`` (Luong) feeds the previous attentional
    vector to the first decoder layer; with ``"bahdanau"`` the context computed from the
    previous state is fed instead, and ``input_feeding`` is ignored.

    >>> p = init_seq2seq(jax.random.key(0), 11, 13, embed=8, hidden=16)
    >>> p.w_out.shape
    (16, 13)
    """
    ks = jax.random.split(as_key(key), 8 + dec_layers)
    normal = jax.nn.initializers.normal(0.1)
    lecun = jax.nn.initializers.lecun_normal()
    d_m = (2 if bidirectional else 1) * hidden
    if attention == "bahdanau":
        extra = d_m
    else:
        extra = hidden if input_feeding else 0
    decoder = tuple(
        init_lstm_cell(ks[8 + layer], embed + extra if layer == 0 else hidden, hidden) for layer in range(dec_layers)
    )
    return Seq2SeqParams(
        src_embed=normal(ks[0], (src_vocab, embed), jnp.float32),
        encoder=init_lstm(ks[1], embed, hidden, num_layers=enc_layers, bidirectional=bidirectional),
        bridge_w=lecun(ks[2], (d_m, dec_layers * 2 * hidden), jnp.float32),
        bridge_b=jnp.zeros((dec_layers * 2 * hidden,), jnp.float32),
        tgt_embed=normal(ks[3], (tgt_vocab, embed), jnp.float32),
        decoder=decoder,
        attention=init_attention(ks[4], attention, d_m, hidden),
        w_combine=lecun(ks[5], (hidden + d_m, hidden), jnp.float32),
        w_out=lecun(ks[6], (hidden, tgt_vocab), jnp.float32),
        b_out=jnp.zeros((tgt_vocab,), jnp.float32),
    )


def _check_ids(name: str, ids, lengths) -> None:
    if not hasattr(ids, "ndim") or ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"expected {name} to be an int array [b, t], got {getattr(ids, 'shape', type(ids))}")
    if lengths is None or tuple(lengths.shape) != (ids.shape[0],) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        got = None if lengths is None else (tuple(lengths.shape), lengths.dtype)
        raise ValueError(f"expected {name} lengths as ints of shape [{ids.shape[0]}], got {got}")


def encode(
    params: Seq2SeqParams,
    src: Array,
    src_len: Array,
    *,
    impl: str = "auto",
    dropout: float = 0.0,
    dropout_key: Optional[PRNGKey] = None,
) -> tuple[Memory, DecoderCarry, Array]:
    """Encode a batch of sources.

    Args:
      params: ``Seq2SeqParams``.
      src: ``[b, s]`` int ids (anything past ``src_len`` is ignored).
      src_len: ``[b]`` ints in ``[1, s]``.
      impl: recurrent backend of the encoder (``lstm_jax.layers.lstm``).
      dropout: rate on the source embeddings and the memory, only with ``dropout_key``.
      dropout_key: PRNG key, or None for no dropout.

    Returns:
      ``(memory, carry, mask)``: ``Memory`` with leaves ``[b, s, ...]``, the decoders'
      initial ``DecoderCarry`` (leaves ``[b, ...]``) and the source mask ``[b, s]`` bool.
    """
    _check_ids("src", src, src_len)
    mask = jnp.arange(src.shape[1])[None, :] < src_len[:, None]
    x = params.src_embed[src]
    use_dropout = dropout_key is not None and dropout > 0.0
    if use_dropout:
        k_in, k_out = jax.random.split(as_key(dropout_key, "dropout_key"))
        x = x * dropout_mask(k_in, dropout, x.shape, x.dtype)
    ys, state = lstm(params.encoder, x, lengths=src_len, impl=impl)
    if use_dropout:
        ys = ys * dropout_mask(k_out, dropout, ys.shape, ys.dtype)
    final = state.h[:, -1].reshape(src.shape[0], -1)  # [b, D*d_enc]
    z = final @ params.bridge_w
    init = jnp.tanh(z + jnp.broadcast_to(params.bridge_b, z.shape))
    d = params.w_out.shape[0]
    parts = init.reshape(src.shape[0], len(params.decoder), 2, d)
    layers = tuple(LSTMCarry(parts[:, layer, 0], parts[:, layer, 1]) for layer in range(len(params.decoder)))
    carry = DecoderCarry(layers, jnp.zeros((src.shape[0], d), jnp.float32))
    keys = jax.vmap(attention_keys, in_axes=(None, 0))(params.attention, ys)
    return Memory(ys, keys), carry, mask


def _first_input(params: Seq2SeqParams, carry: DecoderCarry, emb: Array, context_prev) -> Array:
    first: LSTMParams = params.decoder[0]
    d_in, e, d = first.w_x.shape[0], emb.shape[-1], params.w_out.shape[0]
    if context_prev is not None:
        return jnp.concatenate([emb, context_prev])
    if d_in == e + d:
        return jnp.concatenate([emb, carry.feed])
    if d_in == e:
        return emb
    raise ValueError(f"expected decoder input size {e} or {e + d} (input feeding), got {d_in}")


def decoder_core(
    params: Seq2SeqParams, carry: DecoderCarry, prev_token: Array, memory: Memory, memory_mask: Array
) -> tuple[DecoderCarry, Array, Array]:
    """One decoder step of ONE example up to the attentional vector (no output layer).

    Args:
      carry: ``DecoderCarry``.
      prev_token: scalar int, the previous target token (``bos`` first).
      memory: ``Memory(values: [s, d_m], keys: [s, d_k])``.
      memory_mask: ``[s]`` bool.

    Returns:
      ``(carry, h_tilde: [d], attention: [s])``.
    """
    emb = params.tgt_embed[prev_token]
    additive = isinstance(params.attention, AdditiveAttention)
    context_prev = None
    if additive:  # Bahdanau: attend with the previous state, feed the context
        context_prev, weights = attend(params.attention, carry.layers[-1].h, memory.keys, memory.values, memory_mask)
    inp = _first_input(params, carry, emb, context_prev)
    layers = []
    for cell, c in zip(params.decoder, carry.layers):
        c, inp = lstm_step(cell, c, inp)
        layers.append(c)
    if context_prev is not None:
        context = context_prev
    else:  # Luong: attend with the new state
        context, weights = attend(params.attention, inp, memory.keys, memory.values, memory_mask)
    h_tilde = jnp.tanh(jnp.concatenate([inp, context]) @ params.w_combine)
    return DecoderCarry(tuple(layers), h_tilde), h_tilde, weights


def readout(params: Seq2SeqParams, h_tilde: Array) -> Array:
    """Output logits: ``h_tilde: [..., d] -> [..., V_t]``."""
    z = h_tilde @ params.w_out
    return z + jnp.broadcast_to(params.b_out, z.shape)


def decoder_step(
    params: Seq2SeqParams, carry: DecoderCarry, prev_token: Array, memory: Memory, memory_mask: Array
) -> tuple[DecoderCarry, Array, Array]:
    """One decoder step of ONE example: ``(carry, logits: [V_t], attention: [s])``.

    See ``decoder_core`` for the arguments; ``logits = readout(params, h_tilde)``.
    """
    carry, h_tilde, weights = decoder_core(params, carry, prev_token, memory, memory_mask)
    return carry, readout(params, h_tilde), weights


def teacher_forced(
    params: Seq2SeqParams, carry: DecoderCarry, tgt_in: Array, memory: Memory, memory_mask: Array
) -> tuple[Array, Array]:
    """The decoder of ONE example fed the reference tokens, under ``lax.scan``.

    ``tgt_in: [T]`` (``bos`` then the reference) -> ``(h_tilde: [T, d], attention: [T, s])``.
    """

    def body(c, token):
        c, h_tilde, weights = decoder_core(params, c, token, memory, memory_mask)
        return c, (h_tilde, weights)

    _, (h_tilde, weights) = jax.lax.scan(body, carry, tgt_in)
    return h_tilde, weights


def target_log_probs(
    params: Seq2SeqParams,
    batch: dict,
    *,
    impl: str = "auto",
    dropout: float = 0.0,
    dropout_key: Optional[PRNGKey] = None,
) -> tuple[Array, Array]:
    """Teacher-forced log-probabilities of a batch.

    ``batch``: ``src [b, s]``, ``src_len [b]``, ``tgt_in [b, T]`` (``bos`` + reference),
    ``tgt_out [b, T]`` (reference + ``eos``), ``tgt_len [b]`` (tokens of ``tgt_out``).

    Returns:
      ``(log_probs: [b, T, V_t], target_mask: [b, T] bool)``.
    """
    _check_ids("tgt_in", batch["tgt_in"], batch["tgt_len"])
    k_enc = k_out = None
    if dropout_key is not None and dropout > 0.0:
        k_enc, k_out = jax.random.split(as_key(dropout_key, "dropout_key"))
    memory, carry, mask = encode(params, batch["src"], batch["src_len"], impl=impl, dropout=dropout, dropout_key=k_enc)
    h_tilde, _ = jax.vmap(teacher_forced, in_axes=(None, 0, 0, 0, 0))(params, carry, batch["tgt_in"], memory, mask)
    if k_out is not None:
        h_tilde = h_tilde * dropout_mask(k_out, dropout, h_tilde.shape, h_tilde.dtype)
    log_probs = jax.nn.log_softmax(readout(params, h_tilde), axis=-1)
    t = batch["tgt_in"].shape[1]
    return log_probs, jnp.arange(t)[None, :] < batch["tgt_len"][:, None]


def sequence_log_prob(params: Seq2SeqParams, batch: dict, *, impl: str = "auto") -> Array:
    """``log p(reference | source)`` per example, ``[b]``: the sum over the valid target tokens."""
    log_probs, tmask = target_log_probs(params, batch, impl=impl)
    picked = jnp.take_along_axis(log_probs, batch["tgt_out"][..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(tmask, picked, 0.0), axis=-1)


def seq2seq_loss(
    params: Seq2SeqParams,
    batch: dict,
    rng: Optional[PRNGKey] = None,
    *,
    label_smoothing: float = 0.0,
    dropout: float = 0.0,
    impl: str = "auto",
) -> tuple[Array, dict]:
    """Label-smoothed cross-entropy per target token, for ``lstm_jax.train`` (``rng=None``: no dropout).

    The target distribution is ``(1 - label_smoothing) * onehot + label_smoothing / V_t``.
    Returns ``(loss, {"nll": mean nats per token, "tokens": number of target tokens})``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"expected label_smoothing in [0, 1), got {label_smoothing}")
    log_probs, tmask = target_log_probs(params, batch, impl=impl, dropout=dropout, dropout_key=rng)
    picked = jnp.take_along_axis(log_probs, batch["tgt_out"][..., None], axis=-1)[..., 0]
    smooth = (1.0 - label_smoothing) * picked + label_smoothing * jnp.mean(log_probs, axis=-1)
    n = jnp.maximum(jnp.sum(tmask), 1).astype(jnp.float32)
    loss = -jnp.sum(jnp.where(tmask, smooth, 0.0)) / n
    nll = -jnp.sum(jnp.where(tmask, picked, 0.0)) / n
    return loss, {"nll": nll, "tokens": n}
