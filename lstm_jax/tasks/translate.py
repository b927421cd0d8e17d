"""Machine translation recipe (``experiments/translate.py``): parallel corpora (the Bible
pairs of ``tasks.bible`` or a user's TSV), sentencepiece subwords trained on the training
split only, length-bucketed batches, the copy and word-by-word IBM Model 1 baselines,
BLEU/chrF with sacrebleu on detokenised text, a step-budgeted training loop of the
``lstm_jax.seq2seq`` encoder-decoder with a dev-BLEU learning curve, and batched jitted
greedy / beam-search translation.

Token ids of both subword vocabularies: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``, ``UNK = 3``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import seq2seq as S
from lstm_jax.datasets import DatasetError
from lstm_jax.tasks.cli import Timer
from lstm_jax.tasks.loops import train_steps

__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "Corpus",
    "bible_corpus",
    "tsv_corpus",
    "cap_words",
    "Subwords",
    "train_subwords",
    "Batches",
    "make_batches",
    "fit_ibm1",
    "ibm1_translate",
    "score",
    "Translator",
    "TranslationRun",
    "train_translation",
]

PAD, BOS, EOS, UNK = 0, 1, 2, 3


class Corpus(NamedTuple):
    """Parallel text: lists of ``(source, target)`` strings per split."""

    name: str
    train: list
    val: list
    test: list


def bible_corpus(direction: str = "es-en", cache_dir: Optional[str] = None, verbose: bool = True) -> Corpus:
    """The Bible pairs split by whole books (``tasks.bible``); ``direction`` ``"es-en"`` or ``"en-es"``."""
    from lstm_jax.tasks import bible

    if direction not in ("es-en", "en-es"):
        raise DatasetError(f"expected direction 'es-en' or 'en-es', got {direction!r}")
    splits: dict = {"train": [], "val": [], "test": []}
    for p in bible.bible_pairs(cache_dir, verbose=verbose):
        splits[bible.split_of(p.book)].append((p.es, p.en) if direction == "es-en" else (p.en, p.es))
    return Corpus(f"bible-{direction}", splits["train"], splits["val"], splits["test"])


_SPLIT_NAMES = {"train": "train", "dev": "val", "val": "val", "valid": "val", "test": "test"}


def tsv_corpus(path: str, *, seed: int = 0) -> Corpus:
    """A tab-separated file of ``source<TAB>target[<TAB>split]`` lines (split: train/dev/test);
    without a third column, a seeded 80/10/10 split."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"expected a TSV file of source<TAB>target lines, got no file at {path}")
    rows = []
    with file.open(encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) not in (2, 3):
                raise DatasetError(f"expected 2 or 3 tab-separated columns in {path}, got {len(row)} on line {n}")
            if len(row) == 3 and row[2].strip().lower() not in _SPLIT_NAMES:
                raise DatasetError(f"expected split train/dev/test in column 3 of {path}, got {row[2]!r} on line {n}")
            rows.append(row)
    if len(rows) < 10:
        raise DatasetError(f"expected at least 10 sentence pairs in {path}, got {len(rows)}")
    splits: dict = {"train": [], "val": [], "test": []}
    if all(len(r) == 3 for r in rows):
        for r in rows:
            splits[_SPLIT_NAMES[r[2].strip().lower()]].append((r[0].strip(), r[1].strip()))
    else:
        order = np.random.default_rng(seed).permutation(len(rows))
        n_test = n_val = max(1, len(rows) // 10)
        for rank, k in enumerate(order):
            name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            splits[name].append((rows[k][0].strip(), rows[k][1].strip()))
    return Corpus(file.stem, splits["train"], splits["val"], splits["test"])


def cap_words(corpus: Corpus, max_words: int) -> Corpus:
    """Keep only pairs whose two sides have at most ``max_words`` words (every split)."""
    keep = lambda pairs: [p for p in pairs if max(len(p[0].split()), len(p[1].split())) <= max_words]  # noqa: E731
    return Corpus(corpus.name, keep(corpus.train), keep(corpus.val), keep(corpus.test))


# --------------------------------------------------------------------------- subwords
class Subwords(NamedTuple):
    """Sentencepiece processors of both sides and where their model files are."""

    src: object  # sentencepiece.SentencePieceProcessor
    tgt: object
    src_model: Path
    tgt_model: Path


def _train_spm(texts: Sequence[str], vocab_size: int, path: Path):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
        unk_id=UNK,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def train_subwords(corpus: Corpus, out_dir, *, src_vocab: int, tgt_vocab: int) -> Subwords:
    """Train a unigram sentencepiece model per side on ``corpus.train`` only; the model files
    (``spm_src.model``, ``spm_tgt.model``) are written to ``out_dir``, beside the checkpoint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = _train_spm([s for s, _ in corpus.train], src_vocab, out / "spm_src.model")
    tgt = _train_spm([t for _, t in corpus.train], tgt_vocab, out / "spm_tgt.model")
    return Subwords(src, tgt, out / "spm_src.model", out / "spm_tgt.model")


def encode_pairs(sw: Subwords, pairs: Sequence) -> tuple[list, list]:
    """Subword ids of both sides: ``(src_ids, tgt_ids)``, lists of int32 arrays (no bos/eos)."""
    src = [np.asarray(sw.src.encode(s), np.int32) for s, _ in pairs]  # type: ignore[attr-defined]
    tgt = [np.asarray(sw.tgt.encode(t), np.int32) for _, t in pairs]  # type: ignore[attr-defined]
    return src, tgt


# --------------------------------------------------------------------------- batches
BUCKETS = (16, 24, 32, 48, 64, 96, 128)


def _bucket(n: int, buckets: Sequence[int] = BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(32 * -(-n // 32))


def _pad(seqs: Sequence[np.ndarray], width: int, rows: int, fill: int = PAD) -> np.ndarray:
    out = np.full((rows, width), fill, np.int32)
    for k, s in enumerate(seqs):
        out[k, : len(s)] = s
    return out


class Batches:
    """Length-bucketed training batches of about ``tokens`` (padded) positions each, sampled
    epoch by epoch (seeded): ``batches(step) -> {src, src_len, tgt_in, tgt_out, tgt_len}``.
    Pairs longer than the largest bucket are dropped (``dropped``)."""

    def __init__(self, src: list, tgt: list, *, tokens: int, seed: int, buckets: Sequence[int] = BUCKETS):
        self.rng = np.random.default_rng(seed)
        self.tokens, self.buckets = tokens, tuple(buckets)
        self.groups: dict = {}
        self.dropped = 0
        for k, (s, t) in enumerate(zip(src, tgt)):
            n = max(len(s), len(t) + 1)
            if n > self.buckets[-1] or len(s) == 0:
                self.dropped += 1
                continue
            self.groups.setdefault(_bucket(n, self.buckets), []).append(k)
        if not self.groups:
            raise DatasetError("expected some training pairs that fit the length buckets, got none")
        self.src, self.tgt = src, tgt
        self.queue: list = []

    def _refill(self):
        plan = []
        for width, members in self.groups.items():
            rows = max(8, self.tokens // width // 8 * 8)
            order = self.rng.permutation(members)
            plan += [
                (width, order[i : i + rows]) for i in range(0, len(order), rows) if len(order[i : i + rows]) == rows
            ]
            if not plan or plan[-1][0] != width:  # a group smaller than one batch still trains
                plan.append((width, self.rng.choice(members, rows)))
        self.queue = [plan[k] for k in self.rng.permutation(len(plan))]

    def __call__(self, step: int) -> dict:
        if not self.queue:
            self._refill()
        width, idx = self.queue.pop()
        src = [self.src[k] for k in idx]
        tgt = [self.tgt[k] for k in idx]
        return {
            "src": _pad(src, width, len(idx)),
            "src_len": np.array([len(s) for s in src], np.int32),
            "tgt_in": _pad([np.concatenate([[BOS], t]) for t in tgt], width, len(idx)),
            "tgt_out": _pad([np.concatenate([t, [EOS]]) for t in tgt], width, len(idx)),
            "tgt_len": np.array([len(t) + 1 for t in tgt], np.int32),
        }


make_batches = Batches


# --------------------------------------------------------------------------- baselines and scores
_WORD = re.compile(r"\w+|[^\w\s]")


def _words(text: str) -> list:
    return _WORD.findall(text)


def fit_ibm1(pairs: Sequence, *, iterations: int = 5) -> dict:
    """Word-by-word IBM Model 1 (with a NULL source word), EM on lowercased words; returns
    ``{source word: most probable target word}``."""
    fv: dict = {"<null>": 0}
    ev: dict = {}
    sf, se = [], []
    for s, t in pairs:
        f = [0] + [fv.setdefault(w.lower(), len(fv)) for w in _words(s)]
        e = [ev.setdefault(w.lower(), len(ev)) for w in _words(t)]
        if e:
            sf.append(np.asarray(f, np.int64))
            se.append(np.asarray(e, np.int64))
    # every (source word, target word) link of every sentence, and its target position group
    link_f = np.concatenate([np.repeat(f, len(e)) for f, e in zip(sf, se)])
    link_e = np.concatenate([np.tile(e, len(f)) for f, e in zip(sf, se)])
    offsets = np.cumsum([0] + [len(e) for e in se[:-1]])
    link_g = np.concatenate([np.tile(np.arange(len(e)) + o, len(f)) for f, e, o in zip(sf, se, offsets)])
    pair_id, link_pair = np.unique(link_f * len(ev) + link_e, return_inverse=True)
    pair_f = pair_id // len(ev)
    t = np.ones(len(pair_id))
    for _ in range(iterations):
        p = t[link_pair]
        posterior = p / np.bincount(link_g, weights=p)[link_g]
        counts = np.bincount(link_pair, weights=posterior, minlength=len(pair_id))
        t = counts / np.bincount(pair_f, weights=counts, minlength=len(fv))[pair_f]
    best: dict = {}
    for pid in np.lexsort((t, pair_f)):  # ascending t within f: the last one written wins
        best[int(pair_f[pid])] = int(pair_id[pid] % len(ev))
    f_words, e_words = {v: k for k, v in fv.items()}, {v: k for k, v in ev.items()}
    return {f_words[f]: e_words[e] for f, e in best.items() if f != 0}


def _detok(words: Sequence[str]) -> str:
    text = " ".join(words)
    return re.sub(r"\s+([,.;:!?)\]»’])", r"\1", text).replace("¿ ", "¿").replace("¡ ", "¡").replace("( ", "(")


def ibm1_translate(table: dict, text: str) -> str:
    """Monotone word-by-word translation: each source word by its most probable target word
    (unknown words copied; a capitalised source word gives a capitalised output)."""
    out = []
    for w in _words(text):
        e = table.get(w.lower(), w)
        out.append(e[:1].upper() + e[1:] if w[:1].isupper() else e)
    return _detok(out)


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU and chrF of detokenised text with sacrebleu (13a tokenisation, cased)."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


# --------------------------------------------------------------------------- translation
class Translator:
    """Batched jitted translation of strings with a trained model (greedy when ``beam == 1``)."""

    def __init__(
        self,
        sw: Subwords,
        *,
        beam: int = 1,
        alpha: float = 0.6,
        batch: int = 32,
        len_ratio: float = 1.5,
        len_extra: int = 10,
        impl: str = "auto",
    ):
        self.sw, self.beam, self.alpha, self.batch = sw, beam, alpha, batch
        self.len_ratio, self.len_extra, self.impl = len_ratio, len_extra, impl
        self._compiled: dict = {}

    def _fn(self, width: int):
        max_len = int(self.len_ratio * width) + self.len_extra
        if width not in self._compiled:
            common: dict[str, Any] = dict(
                bos=BOS,
                eos=EOS,
                max_len=max_len,
                len_ratio=self.len_ratio,
                len_extra=self.len_extra,
                pad=PAD,
                banned=(PAD, BOS),
                impl=self.impl,
            )
            if self.beam == 1:
                fn = partial(S.greedy_decode, **common)
            else:
                fn = partial(S.beam_decode, beam=self.beam, alpha=self.alpha, **common)
            self._compiled[width] = jax.jit(fn)
        return self._compiled[width]

    def __call__(self, params, texts: Sequence[str]) -> tuple[list, list, list]:
        """``(translations, target pieces, attention [n_tgt, n_src] per text)``, in input order."""
        ids = [np.asarray(self.sw.src.encode(t), np.int32)[:1000] for t in texts]  # type: ignore[attr-defined]
        ids = [a if len(a) else np.array([UNK], np.int32) for a in ids]
        order = np.argsort([len(a) for a in ids], kind="stable")
        out: list = [None] * len(texts)
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            width = _bucket(max(len(ids[k]) for k in idx))
            rows = [ids[k] for k in idx] + [np.array([UNK], np.int32)] * (self.batch - len(idx))
            src = jnp.asarray(_pad(rows, width, self.batch))
            res = self._fn(width)(params, src, jnp.asarray([len(r) for r in rows], jnp.int32))
            tokens, lengths, attn = (np.asarray(a) for a in (res.tokens, res.lengths, res.attention))
            if self.beam > 1:  # the best hypothesis
                tokens, lengths, attn = tokens[:, 0], lengths[:, 0], attn[:, 0]
            for r, k in enumerate(idx):
                toks = [int(x) for x in tokens[r, : lengths[r]] if x != EOS]
                out[k] = (toks, attn[r, : lengths[r], : len(ids[k])])
        texts_out = [self.sw.tgt.decode(t) for t, _ in out]  # type: ignore[attr-defined]
        pieces = [[self.sw.tgt.id_to_piece(x) for x in t] for t, _ in out]  # type: ignore[attr-defined]
        return texts_out, pieces, [a for _, a in out]


class TranslationRun(NamedTuple):
    """What ``train_translation`` returns."""

    params: S.Seq2SeqParams  # best by dev BLEU
    history: list  # records: step (= updates), minutes, train_loss, dev_bleu
    updates: int
    updates_planned: int
    dropped: int  # training pairs too long for the buckets


def train_translation(
    corpus: Corpus,
    sw: Subwords,
    *,
    embed: int = 256,
    hidden: int = 256,
    enc_layers: int = 1,
    dec_layers: int = 1,
    attention: str = "general",
    input_feeding: bool = True,
    tokens: int = 2000,
    lr: float = 2e-3,
    label_smoothing: float = 0.1,
    dropout: float = 0.2,
    updates: int = 3000,
    eval_every: int = 500,
    dev_sample: int = 300,
    seed: int = 0,
    impl: str = "auto",
    progress: bool = True,
    desc: str = "",
) -> TranslationRun:
    """Train the encoder-decoder for ``updates`` Adam steps (warmup, cosine decay, clipping 1)
    on token-bucketed batches of ``corpus.train``; every ``eval_every`` updates the greedy
    BLEU on the first ``dev_sample`` dev pairs is recorded and the best params kept."""
    from lstm_jax import train

    src, tgt = encode_pairs(sw, corpus.train)
    batches = Batches(src, tgt, tokens=tokens, seed=seed)
    params = S.init_seq2seq(
        jax.random.key(seed),
        sw.src.get_piece_size(),  # type: ignore[attr-defined]
        sw.tgt.get_piece_size(),  # type: ignore[attr-defined]
        embed=embed,
        hidden=hidden,
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        attention=attention,
        input_feeding=input_feeding,
    )
    optimizer = train.make_optimizer(
        lr, clip_norm=1.0, warmup_steps=min(200, updates // 10), total_steps=updates, end_fraction=0.05
    )
    loss_fn = partial(S.seq2seq_loss, label_smoothing=label_smoothing, dropout=dropout, impl=impl)
    dev = corpus.val[:dev_sample]
    greedy = Translator(sw, beam=1, batch=64, impl=impl)
    timer = Timer()

    def eval_fn(p):
        hyps, _, _ = greedy(p, [s for s, _ in dev])
        return {"minutes": timer() / 60.0, "dev_bleu": score(hyps, [t for _, t in dev])["bleu"]}

    run = train_steps(
        loss_fn,
        params,
        optimizer,
        batches,
        steps=updates,
        seed=seed,
        eval_fn=eval_fn if dev else None,
        eval_every=eval_every,
        monitor="dev_bleu" if dev else None,
        mode="max",
        progress=progress,
        desc=desc,
    )
    return TranslationRun(run.params, run.history, run.steps, updates, batches.dropped)
