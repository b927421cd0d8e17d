"""The verse-aligned Bible, English (King James Version, SWORD module ``engKJV2006eb``) and
Spanish (Reina-Valera 1909, ``spaRV1909eb``), from Debian's ``sword-text-kjv`` and
``sword-text-sparv`` packages (both texts are public domain), read through the
``python3-sword`` bindings.

``bible_pairs()`` is the whole extraction in one function: the raw OSIS entries are cleaned
(Strong's ``<w>`` wrappers, footnotes, pilcrows and markup dropped; the KJV Psalm titles
kept; Spanish drop capitals re-cased), each book is aligned by a monotone dynamic program
over verses (Gale-Church style: verse-length agreement, shared names, and a bonus for the
same reference), which re-aligns the Spanish chapters that keep another numbering (e.g.
Jonah 1:17 = Spanish 2:1); pairs whose lengths disagree badly are dropped. The result is
cached as a TSV under ``~/.cache/lstm_jax`` (or ``cache_dir``) after the first run.

Install: ``apt-get install -y --no-install-recommends sword-text-kjv sword-text-sparv python3-sword``.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from lstm_jax.datasets import DatasetError

__all__ = ["VersePair", "TEST_BOOKS", "DEV_BOOKS", "bible_pairs", "split_of", "clean_osis", "align_book"]

EN_MODULE, ES_MODULE = "engKJV2006eb", "spaRV1909eb"
TEST_BOOKS = ("Josh", "Eccl", "John", "Heb")
DEV_BOOKS = ("Ruth", "Esth", "Dan", "Lam", "Gal", "Phil", "Jas", "1Pet")
_CACHE_NAME = "bible_kjv_rv1909_v3.tsv"
_INSTALL = "apt-get install -y --no-install-recommends sword-text-kjv sword-text-sparv python3-sword"


class VersePair(NamedTuple):
    """One aligned pair: the English reference (OSIS, e.g. ``Jonah.2.1``) and both texts."""

    ref: str  # English (KJV) reference
    es_ref: str  # the Spanish module's reference of the paired verse
    en: str
    es: str

    @property
    def book(self) -> str:
        return self.ref.split(".")[0]


def split_of(book: str) -> str:
    """``"test"``, ``"val"`` or ``"train"`` for an OSIS book name (whole books held out)."""
    return "test" if book in TEST_BOOKS else "val" if book in DEV_BOOKS else "train"


# --------------------------------------------------------------------------- cleaning
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE_PUNCT = re.compile(r"\s+([,.;:!?)\]»])")


def clean_osis(raw: str, *, recase_first: bool = False) -> str:
    """Plain text of one raw OSIS verse entry.

    Footnotes become a space, all other markup is dropped (its text kept), pilcrows and stray
    ``\\nd`` markers removed, spaces normalised. ``recase_first`` turns the first all-capital
    word among the first four (a drop capital: ``EN el principio``, ``Y HABLARON``) into
    ``En``, ``hablaron``.
    """
    text = _NOTE.sub(" ", raw)
    text = _TAG.sub("", text)
    text = text.replace("¶", " ").replace("\\nd", " ").replace("\u00a0", " ")
    text = " ".join(text.split())
    text = _SPACE_PUNCT.sub(r"\1", text)
    if recase_first and text:
        words = text.split(" ")
        for k, word in enumerate(words[:4]):
            letters = [c for c in word if c.isalpha()]
            if len(letters) >= 2 and all(c.isupper() for c in letters):
                at = next(n for n, c in enumerate(word) if c.isalpha())
                words[k] = word[: at + 1] + word[at + 1 :].lower() if k == 0 else word.lower()
                break
        text = " ".join(words)
    return text


def _read_module(name: str) -> list[tuple[str, str]]:
    """``[(osis_ref, raw_entry)]`` of every verse of a SWORD module in KJV order."""
    try:
        import Sword  # type: ignore[import-not-found]
    except ImportError:
        path = "/usr/lib/python3/dist-packages"  # the Debian bindings are built for the system Python
        if path not in sys.path:
            sys.path.append(path)
        try:
            import Sword  # type: ignore[import-not-found]
        except ImportError as e:
            raise DatasetError(f"the SWORD Python bindings are missing ({e}); install them: {_INSTALL}") from e
    manager = Sword.SWMgr()  # must outlive the module it hands out
    module = manager.getModule(name)
    if module is None:
        raise DatasetError(f"SWORD module {name} is not installed; install it: {_INSTALL}")
    key = Sword.VerseKey("Gen 1:1")
    out = []
    while True:
        module.setKey(key)
        out.append((key.getOSISRef(), module.getRawEntry()))
        key.increment()
        if ord(key.popError()):
            break
    del module, manager
    return out


# --------------------------------------------------------------------------- alignment
def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def _features(text: str) -> tuple[int, frozenset]:
    words = re.findall(r"\w+", _strip_accents(text))
    names = frozenset(w[:4].lower() for w in words if len(w) >= 4 and w[0].isupper())
    return len(words), names


_RATIO = math.log(1.1)  # typical log(English words / Spanish words)


def _similarity(e: tuple[int, frozenset], s: tuple[int, frozenset]) -> float:
    (ne, ae), (ns, as_) = e, s
    if ne == 0 or ns == 0:
        return -1.0
    length = -abs(math.log(ne / ns) - _RATIO)
    names = len(ae & as_) / math.sqrt(len(ae) * len(as_)) if ae and as_ else 0.0
    return 1.0 + length + names


def align_book(en: list[str], es: list[str], *, band: int = 4, skip: float = 0.5, same_ref: float = 0.3) -> list:
    """Monotone 1-1 alignment of a book's verses (lists in reference order, equally long).

    A dynamic program over pairs ``(i, j)`` with ``|i - j| <= band``: a match gains the verse
    similarity (length agreement, shared capitalised words) plus ``same_ref`` when ``i == j``;
    skipping a verse of either side costs ``skip``. Returns ``[(i, j)]`` matched indices.
    """
    fe, fs = [_features(t) for t in en], [_features(t) for t in es]
    n, m = len(en), len(es)
    w = 2 * band + 1
    score = np.full((n + 1, w), -np.inf)  # score[i, j - i + band]
    back = np.zeros((n + 1, w), np.int8)  # 0 match, 1 skip en, 2 skip es
    score[0, band] = 0.0
    for i in range(n + 1):
        for off in range(w):
            j = i + off - band
            if j < 0 or j > m:
                continue
            best, how = score[i, off], back[i, off]
            if i > 0 and j > 0 and np.isfinite(score[i - 1, off]):
                v = score[i - 1, off] + _similarity(fe[i - 1], fs[j - 1]) + (same_ref if i == j else 0.0)
                if v > best:
                    best, how = v, 0
            if i > 0 and off + 1 < w and np.isfinite(score[i - 1, off + 1]):
                v = score[i - 1, off + 1] - skip
                if v > best:
                    best, how = v, 1
            if j > 0 and off > 0 and np.isfinite(score[i, off - 1]):
                v = score[i, off - 1] - skip
                if v > best:
                    best, how = v, 2
            score[i, off], back[i, off] = best, how
    i, j, pairs = n, m, []
    if not 0 <= m - n + band < w:
        raise ValueError(f"expected books of similar verse counts, got {n} and {m}")
    while i > 0 or j > 0:
        how = back[i, j - i + band]
        if how == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif how == 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _extract(max_log_ratio: float) -> list[VersePair]:
    en_raw, es_raw = _read_module(EN_MODULE), _read_module(ES_MODULE)
    if [r for r, _ in en_raw] != [r for r, _ in es_raw]:
        raise DatasetError("expected both SWORD modules in KJV versification")
    refs = [r for r, _ in en_raw]
    en = [clean_osis(t) for _, t in en_raw]
    es = [clean_osis(t, recase_first=True) for _, t in es_raw]
    books: dict = {}
    for k, r in enumerate(refs):
        books.setdefault(r.split(".")[0], []).append(k)
    out = []
    for index in books.values():
        for i, j in align_book([en[k] for k in index], [es[k] for k in index]):
            a, b = index[i], index[j]
            ne, ns = len(en[a].split()), len(es[b].split())
            if ne and ns and abs(math.log(ne / ns) - _RATIO) <= max_log_ratio:
                out.append(VersePair(refs[a], refs[b], en[a], es[b]))
    return out


def bible_pairs(cache_dir: Optional[str] = None, *, max_log_ratio: float = math.log(2.0), verbose: bool = True) -> list:
    """All aligned ``VersePair``s (English reference order), extracted once and cached.

    Args:
      cache_dir: folder of the cached TSV (default ``$LSTM_JAX_CACHE`` or ``~/.cache/lstm_jax``).
      max_log_ratio: drop pairs with ``|log(en words / es words) - log 1.1|`` above this.
      verbose: print the counts.

    Raises:
      DatasetError: the SWORD packages or bindings are missing.
    """
    folder = Path(cache_dir or os.environ.get("LSTM_JAX_CACHE") or Path.home() / ".cache" / "lstm_jax")
    path = folder / _CACHE_NAME
    if path.exists():
        with path.open(encoding="utf-8", newline="") as f:
            pairs = [VersePair(*row) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)]
    else:
        pairs = _extract(max_log_ratio)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, delimiter="\t").writerows(pairs)
        tmp.replace(path)
    if verbose:
        counts = {s: sum(split_of(p.book) == s for p in pairs) for s in ("train", "val", "test")}
        shifted = sum(p.ref != p.es_ref for p in pairs)
        print(
            f"bible: {len(pairs):,} verse pairs (train {counts['train']:,}, dev {counts['val']:,}, "
            f"test {counts['test']:,}; {shifted} re-aligned across Spanish numbering) from {path}"
        )
    return pairs
