"""Recognition error rates: Levenshtein edit distance, character and word error rates.

Corpus rates are the total edits over the total reference length (the usual definition, as
``jiwer`` computes them), not a mean of per-utterance rates.

>>> edit_distance("kitten", "sitting")
3
>>> cer(["abc"], ["abd"])
0.3333333333333333
>>> wer(["the cat sat"], ["the cat"])
0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["edit_distance", "error_rate", "cer", "wer"]


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Minimum number of substitutions, insertions and deletions turning ``ref`` into ``hyp``.

    Any sequences of hashable items (strings, lists of words or token ids); O(len(ref)) memory,
    one vectorised row update per hypothesis item.
    """
    ref, hyp = list(ref), list(hyp)
    if not ref or not hyp:
        return max(len(ref), len(hyp))
    index = {tok: i for i, tok in enumerate(dict.fromkeys(ref + hyp))}
    r = np.array([index[x] for x in ref])
    row = np.arange(len(r) + 1)
    for j, tok in enumerate(hyp, start=1):
        sub = row[:-1] + (r != index[tok])
        new = np.empty_like(row)
        new[0] = j
        # new[i] = min(row[i] + 1, sub[i-1], new[i-1] + 1): the running min handles insertions
        cand = np.minimum(row[1:] + 1, sub)
        new[1:] = np.minimum.accumulate(cand - np.arange(1, len(r) + 1)) + np.arange(1, len(r) + 1)
        new[1:] = np.minimum(new[1:], j + np.arange(1, len(r) + 1))
        row = new
    return int(row[-1])


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Total edit distance over total reference length, over pairs of token sequences."""
    if len(refs) != len(hyps):
        raise ValueError(f"expected as many hypotheses as references, got {len(hyps)} and {len(refs)}")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("expected at least one non-empty reference, got only empty ones")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate of strings (spaces count as characters)."""
    return error_rate(list(refs), list(hyps))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate: words are the whitespace-separated tokens."""
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])
