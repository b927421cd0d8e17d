"""Sequence to sequence: an attentional LSTM encoder-decoder for translation.

* ``attention``: Luong (dot, general) and Bahdanau (additive) attention of one query;
* ``model``: encoder, the pure decoder step, teacher-forced log-likelihood and loss;
* ``search``: greedy and beam search under ``lax.while_loop`` (batched with ``jax.vmap``).

The library never jits: ``jax.jit(seq2seq.beam_decode, static_argnames=(...))`` in the caller.
"""

from lstm_jax.seq2seq import attention, model, search
from lstm_jax.seq2seq.attention import (
    ATTENTIONS,
    AdditiveAttention,
    DotAttention,
    GeneralAttention,
    attend,
    attention_keys,
    init_attention,
)
from lstm_jax.seq2seq.model import (
    DecoderCarry,
    Memory,
    Seq2SeqParams,
    decoder_core,
    decoder_step,
    encode,
    init_seq2seq,
    readout,
    seq2seq_loss,
    sequence_log_prob,
    target_log_probs,
    teacher_forced,
)
from lstm_jax.seq2seq.search import (
    Translation,
    beam_decode,
    beam_search,
    decode_limit,
    greedy_decode,
    greedy_search,
    length_penalty,
)

__all__ = [
    "attention",
    "model",
    "search",
    "ATTENTIONS",
    "AdditiveAttention",
    "DotAttention",
    "GeneralAttention",
    "attend",
    "attention_keys",
    "init_attention",
    "DecoderCarry",
    "Memory",
    "Seq2SeqParams",
    "decoder_core",
    "decoder_step",
    "encode",
    "init_seq2seq",
    "readout",
    "seq2seq_loss",
    "sequence_log_prob",
    "target_log_probs",
    "teacher_forced",
    "Translation",
    "beam_decode",
    "beam_search",
    "decode_limit",
    "greedy_decode",
    "greedy_search",
    "length_penalty",
]
