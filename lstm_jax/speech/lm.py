"""A character n-gram language model (interpolated Witten-Bell smoothing) for shallow fusion
in CTC prefix beam search.

``P(c | h) = (N(h, c) + U(h) P(c | h')) / (N(h) + U(h))`` with ``h'`` the history minus its
oldest character, ``N`` counts and ``U(h)`` the number of distinct characters seen after
``h``; the recursion ends in a uniform distribution over the vocabulary (plus end of
sentence). Sentences start with ``n - 1`` start symbols, so the first characters are
predicted from "start of sentence".

>>> lm = CharNgramLM.train(["abab", "abba"], order=3)
>>> round(sum(math.exp(lm.log_prob("ab", c)) for c in lm.symbols), 6)
1.0
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["BOS", "EOS", "CharNgramLM"]

BOS = "\x02"  # start-of-sentence padding of the history
EOS = "\x03"  # end-of-sentence symbol


class CharNgramLM:
    """Counts of an order-``n`` character model; ``log_prob(history, char)`` in nats (memoised)."""

    def __init__(self, order: int, counts: dict, vocab: Sequence[str]):
        self.order = order
        self.counts = counts  # history (str, len 0..n-1) -> Counter of next symbols
        self.symbols = tuple(vocab) + (EOS,)  # what the model predicts
        self._cache: dict = {}

    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 4) -> CharNgramLM:
        """Count every history of length ``0 .. order-1`` in ``sentences`` (training text only)."""
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"expected order >= 1, got {order!r}")
        counts: dict = defaultdict(Counter)
        vocab: set = set()
        for s in sentences:
            vocab.update(s)
            padded = BOS * (order - 1) + s + EOS
            for i in range(order - 1, len(padded)):
                for k in range(order):
                    counts[padded[i - k : i]][padded[i]] += 1
        return cls(order, dict(counts), sorted(vocab))

    def _prob(self, history: str, char: str) -> float:
        key = (history, char)
        if key in self._cache:
            return self._cache[key]
        lower = self._prob(history[1:], char) if history else 1.0 / len(self.symbols)
        seen = self.counts.get(history)
        if seen:
            total, types = sum(seen.values()), len(seen)
            p = (seen.get(char, 0) + types * lower) / (total + types)
        else:
            p = lower
        self._cache[key] = p
        return p

    def log_prob(self, history: str, char: str) -> float:
        """``log P(char | last order-1 characters of history)``; ``history`` is padded with ``BOS``."""
        if self.order > 1:
            history = (BOS * (self.order - 1) + history)[-(self.order - 1) :]
        else:
            history = ""
        return math.log(self._prob(history, char))

    def score(self, sentence: str) -> float:
        """``log P(sentence, end of sentence)`` in nats."""
        return sum(self.log_prob(sentence[:i], c) for i, c in enumerate(sentence + EOS))
