"""Connectionist temporal classification: the loss (``optax.ctc_loss`` masked by frame and
label lengths), greedy decoding (traceable, jit it) and prefix beam search (host side, with
optional shallow fusion of a character language model).

Shapes: ``b`` batch, ``t`` frames, ``k`` classes (index ``blank`` is the blank), ``n`` labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax.typing import Array

__all__ = ["ctc_loss", "greedy_decode", "collapse", "prefix_beam_search"]

_NEG_INF = -float("inf")


def ctc_loss(logits: Array, lengths: Array, labels: Array, label_lengths: Array, *, blank: int = 0) -> Array:
    """Per-example CTC negative log-likelihood ``-log p(labels | x)``.

    Args:
      logits: ``[b, t, k]`` unnormalised scores; frames at or past ``lengths[i]`` are ignored.
      lengths: ``[b]`` valid frames; labels: ``[b, n]`` int ids (never ``blank``);
      label_lengths: ``[b]`` valid labels (entries past them are ignored).
    Returns:
      ``[b]`` float32 losses (nats per utterance).
    """
    if logits.ndim != 3 or labels.ndim != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits [b, t, k] and labels [b, n], got {logits.shape} and {labels.shape}")
    t, n = logits.shape[1], labels.shape[1]
    logit_pad = (jnp.arange(t)[None, :] >= lengths[:, None]).astype(jnp.float32)
    label_pad = (jnp.arange(n)[None, :] >= label_lengths[:, None]).astype(jnp.float32)
    return optax.ctc_loss(logits.astype(jnp.float32), logit_pad, labels, label_pad, blank_id=blank)


def greedy_decode(log_probs: Array, length: Array, *, blank: int = 0) -> tuple[Array, Array]:
    """Best-path decoding of ONE utterance: the argmax per frame, repeats merged, blanks dropped.

    Traceable with fixed shapes (``jax.jit(jax.vmap(greedy_decode))`` for a batch).

    Args:
      log_probs: ``[t, k]`` (or logits; only the argmax matters); length: valid frames.
    Returns:
      ``(best: [t] int32, keep: [t] bool)``: the labelling is ``best[keep]`` (see ``collapse``).
    """
    best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    prev = jnp.concatenate([jnp.full((1,), -1, jnp.int32), best[:-1]])
    keep = (best != blank) & (best != prev) & (jnp.arange(best.shape[0]) < length)
    return best, keep


def collapse(best, keep) -> list[int]:
    """``best[keep]`` as a Python list (host side, after ``greedy_decode``)."""
    return [int(x) for x in np.asarray(best)[np.asarray(keep)]]


def _logadd(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def prefix_beam_search(
    log_probs,
    *,
    beam: int = 16,
    blank: int = 0,
    prune: float = 1e-3,
    lm=None,
    symbols: Optional[Sequence[str]] = None,
    lm_weight: float = 0.0,
    insertion_bonus: float = 0.0,
) -> tuple[list[int], float]:
    """CTC prefix beam search (Hannun et al. 2014) over ONE utterance, with optional shallow fusion.

    A prefix's score is ``log p_ctc(prefix) + lm_weight * log p_lm(prefix) + insertion_bonus *
    len(prefix)``; the ``beam`` best prefixes survive each frame and the LM's end-of-sentence
    probability is added at the end. Without an LM, an unbounded beam and ``prune=0`` the result
    is the exact most probable labelling (summed over all its alignments).

    Args:
      log_probs: ``[t, k]`` numpy log-softmax outputs of the valid frames only.
      beam: prefixes kept per frame.
      prune: characters with probability below this at a frame are not extended (0: none).
      lm: optional ``CharNgramLM``; ``symbols[c]`` is the character of class ``c``.
    Returns:
      ``(labelling: list of class ids, its total score)``.
    """
    log_probs = np.asarray(log_probs, np.float64)
    if log_probs.ndim != 2:
        raise ValueError(f"expected log_probs [t, k], got shape {log_probs.shape}")
    if lm is not None and symbols is None:
        raise ValueError("expected symbols (class id -> character) together with lm, got None")
    use_lm = lm is not None and lm_weight != 0.0
    cutoff = math.log(prune) if prune > 0 else _NEG_INF
    # prefix -> [log p(prefix, ends in blank), log p(prefix, ends in a label)]
    beams: dict = {(): [0.0, _NEG_INF]}
    fusion: dict = {(): 0.0}  # prefix -> lm_weight * log p_lm(prefix) + insertion_bonus * len(prefix)
    texts: dict = {(): ""}
    for lp in log_probs:
        cands = [int(c) for c in np.nonzero(lp >= cutoff)[0] if c != blank]
        nxt: dict = {}
        for prefix, (pb, pnb) in beams.items():
            entry = nxt.setdefault(prefix, [_NEG_INF, _NEG_INF])
            entry[0] = _logadd(entry[0], _logadd(pb, pnb) + lp[blank])
            last = prefix[-1] if prefix else None
            for c in cands:
                new = prefix + (c,)
                if new not in fusion:
                    char = symbols[c] if symbols is not None else ""
                    lm_score = lm_weight * lm.log_prob(texts[prefix], char) if use_lm else 0.0
                    fusion[new] = fusion[prefix] + lm_score + insertion_bonus
                    texts[new] = texts[prefix] + char
                e = nxt.setdefault(new, [_NEG_INF, _NEG_INF])
                if c == last:
                    e[1] = _logadd(e[1], pb + lp[c])  # a repeat needs a blank in between
                    entry[1] = _logadd(entry[1], pnb + lp[c])  # or it merges into the prefix
                else:
                    e[1] = _logadd(e[1], _logadd(pb, pnb) + lp[c])
        ranked = sorted(nxt.items(), key=lambda kv: _logadd(*kv[1]) + fusion[kv[0]], reverse=True)
        beams = dict(ranked[:beam])

    def final(item) -> float:
        prefix, (pb, pnb) = item
        end = lm_weight * lm.log_prob(texts[prefix], lm.symbols[-1]) if use_lm else 0.0
        return _logadd(pb, pnb) + fusion[prefix] + end

    best = max(beams.items(), key=final)
    return list(best[0]), float(final(best))
