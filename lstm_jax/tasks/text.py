"""Words: tokenisation, a word vocabulary, padded id arrays with lengths, and word vectors
from the texts alone (truncated SVD of the PPMI co-occurrence matrix).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional

import numpy as np

__all__ = ["tokenize", "WordVocab", "build_vocab", "encode_texts", "ppmi_svd_vectors"]

_TOKEN = None


def tokenize(text: str) -> list:
    """Lower-cased word tokens (letters, digits, apostrophes) and ``! ?`` as tokens; HTML tags dropped."""
    import re

    global _TOKEN
    if _TOKEN is None:
        _TOKEN = (re.compile(r"<[^>]+>"), re.compile(r"[a-z0-9']+|[!?]"))
    tags, words = _TOKEN
    return words.findall(tags.sub(" ", text.lower()))


class WordVocab(NamedTuple):
    """Word -> id table; id 0 is padding, id 1 unknown words."""

    words: tuple

    @property
    def index(self) -> dict:  # type: ignore[override]
        return {w: i for i, w in enumerate(self.words)}


def build_vocab(token_lists: Iterable[list], *, min_count: int = 2, max_size: Optional[int] = None) -> WordVocab:
    """Vocabulary of the words seen at least ``min_count`` times (most frequent first)."""
    from collections import Counter

    counts = Counter(tok for toks in token_lists for tok in toks)
    words = [w for w, c in counts.most_common(max_size) if c >= min_count]
    return WordVocab(("<pad>", "<unk>") + tuple(words))


def encode_texts(token_lists: Sequence[list], vocab: WordVocab, *, max_len: int) -> tuple:
    """Token lists -> ``(ids [n, max_len] int32, lengths [n] int32)``; longer texts keep their
    first ``max_len`` tokens, empty texts become one unknown token."""
    index = vocab.index
    ids = np.zeros((len(token_lists), max_len), np.int32)
    lengths = np.zeros(len(token_lists), np.int32)
    for i, toks in enumerate(token_lists):
        row = [index.get(t, 1) for t in toks[:max_len]] or [1]
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    return ids, lengths


def ppmi_svd_vectors(
    token_lists: Sequence[list], vocab: WordVocab, dim: int, *, window: int = 4, seed: int = 0
) -> np.ndarray:
    """Word vectors from the texts alone: truncated SVD of the positive PMI matrix of word
    co-occurrences within ``window`` tokens (Levy & Goldberg 2014), scaled to unit RMS.

    Unsupervised (labels are not used), so it is a fair initialisation for an embedding
    trained on the same texts. Returns ``[len(vocab.words), dim]`` float32; the padding row is 0.
    """
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    index = vocab.index
    v = len(vocab.words)
    rows, cols = [], []
    for toks in token_lists:
        ids = np.array([index.get(t, 1) for t in toks], np.int64)
        for k in range(1, window + 1):
            if len(ids) > k:
                rows.append(ids[:-k])
                cols.append(ids[k:])
    if not rows:
        raise ValueError("expected texts with at least two tokens, got none")
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(v, v)).tocsr()
    counts = counts + counts.T
    total = counts.sum()
    row_sum = np.asarray(counts.sum(1)).ravel()
    col_sum = row_sum**0.75  # context distribution smoothing
    col_sum = col_sum / col_sum.sum() * total
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * col_sum[coo.col] + 1e-12))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(v, v))
    k = min(dim, v - 1)
    svd = TruncatedSVD(n_components=k, random_state=seed)
    vectors = svd.fit_transform(ppmi)
    vectors = vectors / (np.sqrt(np.mean(vectors**2)) + 1e-12)
    out = np.zeros((v, dim), np.float32)
    out[:, :k] = vectors
    out[0] = 0.0
    return out
