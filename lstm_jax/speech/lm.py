"""A character n-gram language model for shallow fusion in CTC prefix beam search, with
interpolated modified Kneser-Ney (the default) or interpolated Witten-Bell smoothing.

With ``h'`` the history minus its oldest character, ``N(h, c)`` counts and ``U(h)`` the number
of distinct characters seen after ``h``:

* Witten-Bell: ``P(c | h) = (N(h, c) + U(h) P(c | h')) / (N(h) + U(h))``;
* modified Kneser-Ney (Chen & Goodman 1998): ``P(c | h) = (max(N(h, c) - D(N(h, c)), 0) +
  gamma(h) P(c | h')) / N(h)``, with three discounts per order ``D1, D2, D3+`` from the counts
  of counts, ``gamma(h)`` the mass they free, and below the highest order ``N`` replaced by
  continuation counts (how many distinct characters precede ``h c``): a character that is
  frequent only after one context gets little weight as a back-off.

The recursion ends in a uniform distribution over the vocabulary (plus end of sentence).
Sentences start with ``n - 1`` start symbols, so the first characters are predicted from
"start of sentence".

>>> lm = CharNgramLM.train(["abab", "abba"], order=3)
>>> round(sum(math.exp(lm.log_prob("ab", c)) for c in lm.symbols), 6)
1.0
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["BOS", "EOS", "SMOOTHING", "CharNgramLM"]

BOS = "\x02"  # start-of-sentence padding of the history
EOS = "\x03"  # end-of-sentence symbol
SMOOTHING = ("kneser_ney", "witten_bell")


class CharNgramLM:
    """Counts of an order-``n`` character model; ``log_prob(history, char)`` in nats (memoised)."""

    def __init__(self, order: int, counts: dict, vocab: Sequence[str], smoothing: str = "kneser_ney"):
        if smoothing not in SMOOTHING:
            raise ValueError(f"expected smoothing in {SMOOTHING}, got {smoothing!r}")
        self.order = order
        self.counts = counts  # history (str, len 0..n-1) -> Counter of next symbols
        self.symbols = tuple(vocab) + (EOS,)  # what the model predicts
        self.smoothing = smoothing
        self._cache: dict = {}
        if smoothing == "kneser_ney":
            self._kn_counts = _continuation_counts(counts, order)
            self._discounts = _discounts(self._kn_counts, order)
            # per history: (N(h), the mass its discounts free), shared by every next character
            self._kn_mass = {
                h: (sum(c.values()), sum(self._discounts[len(h)][min(n, 3) - 1] for n in c.values()))
                for h, c in self._kn_counts.items()
            }

    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 4, smoothing: str = "kneser_ney") -> CharNgramLM:
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
        return cls(order, dict(counts), sorted(vocab), smoothing)

    def _prob(self, history: str, char: str) -> float:
        key = (history, char)
        if key in self._cache:
            return self._cache[key]
        lower = self._prob(history[1:], char) if history else 1.0 / len(self.symbols)
        seen = (self.counts if self.smoothing == "witten_bell" else self._kn_counts).get(history)
        if not seen:
            p = lower
        elif self.smoothing == "witten_bell":
            total, types = sum(seen.values()), len(seen)
            p = (seen.get(char, 0) + types * lower) / (total + types)
        else:
            total, freed = self._kn_mass[history]
            n, d = seen.get(char, 0), self._discounts[len(history)]
            p = ((n - d[min(n, 3) - 1] if n else 0.0) + freed * lower) / total
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


def _continuation_counts(counts: dict, order: int) -> dict:
    """Kneser-Ney's counts per history: raw counts at the highest order (histories of length
    ``order - 1``), below it the number of distinct characters ``x`` with ``x h c`` seen."""
    cont: dict = defaultdict(Counter)
    for history, nxt in counts.items():
        if history:
            for c in nxt:
                cont[history[1:]][c] += 1
    return {h: (nxt if len(h) == order - 1 else cont[h]) for h, nxt in counts.items()}


def _discounts(kn_counts: dict, order: int) -> dict:
    """``history length -> (D1, D2, D3+)`` of modified Kneser-Ney from the counts of counts
    ``n1..n4`` at that order (Chen & Goodman 1998, eq. 26), each clipped to ``[0.1, n]``: a
    discount never takes a count below zero, and never vanishes (an unseen character keeps some
    probability even where tiny data gives eq. 26 a discount <= 0)."""
    out = {}
    for k in range(order):
        coc = Counter(v for h, nxt in kn_counts.items() if len(h) == k for v in nxt.values())
        n1, n2, n3, n4 = (coc.get(i, 0) for i in (1, 2, 3, 4))
        y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        d1 = 1 - 2 * y * n2 / n1 if n1 else 0.5
        d2 = 2 - 3 * y * n3 / n2 if n2 else 1.0
        d3 = 3 - 4 * y * n4 / n3 if n3 else 1.5
        out[k] = (min(max(d1, 0.1), 1.0), min(max(d2, 0.1), 2.0), min(max(d3, 0.1), 3.0))
    return out
