"""Speech corpora for CTC recognition: manifests, text normalisation, splits by group,
cached log-mel features, a character vocabulary, duration-bucketed batches and the
trivial baselines (empty output, spaces sized to the duration, the median training sentence).

A manifest is a TSV file: ``audio path <TAB> transcript [<TAB> speaker [<TAB> split]]``
(split ``train``/``dev``/``test``; paths relative to the manifest's folder; an optional header
row starting with ``path`` or ``audio``). Audio is read with ``soundfile`` (WAV/Ogg/FLAC),
mixed down to mono.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lstm_jax.datasets import DatasetError
from lstm_jax.speech import features as F
from lstm_jax.tasks.fillets import Clip

__all__ = [
    "NORMALISATION",
    "SPLITS",
    "normalize_text",
    "read_manifest",
    "split_clips",
    "FeatureConfig",
    "load_audio",
    "compute_features",
    "Vocab",
    "Buckets",
    "make_buckets",
    "baselines",
]

SPLITS = ("train", "dev", "test")
NORMALISATION = (
    "NFC; lower case; apostrophes deleted; every other character that is not a letter or a digit "
    "(punctuation, symbols, dashes) becomes a space; digits are kept as characters; runs of "
    "whitespace collapse to one space; leading/trailing spaces stripped"
)
_APOSTROPHES = "'\u2019\u2018`\u00b4"


def normalize_text(text: str) -> str:
    """The transcript normalisation described by ``NORMALISATION``.

    >>> normalize_text("Hello, World! It's 42\u2014no?")
    'hello world its 42 no'
    """
    text = unicodedata.normalize("NFC", text).lower()
    out = []
    for ch in text:
        if ch in _APOSTROPHES:
            continue
        cat = unicodedata.category(ch)
        out.append(ch if cat[0] in "LN" or cat == "Mn" else " ")
    return " ".join("".join(out).split())


def read_manifest(path) -> list[Clip]:
    """Clips of a TSV manifest (see the module docstring); group = the split column or ``""``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"expected an existing manifest TSV file, got {str(path)!r}")
    clips = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        cols = line.split("\t")
        if i == 0 and cols[0].strip().lower() in ("path", "audio", "file"):
            continue
        if len(cols) < 2:
            raise DatasetError(
                f"expected 'audio<TAB>transcript[<TAB>speaker[<TAB>split]]' on line {i + 1} of {path}, got {line!r}"
            )
        audio = Path(cols[0].strip())
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            raise DatasetError(f"expected an existing audio file on line {i + 1} of {path}, got {str(audio)!r}")
        speaker = cols[2].strip() if len(cols) > 2 else ""
        split = cols[3].strip().lower() if len(cols) > 3 else ""
        if split and split not in SPLITS:
            raise DatasetError(f"expected split in {SPLITS} on line {i + 1} of {path}, got {split!r}")
        clips.append(Clip(str(audio), cols[1].strip(), speaker, split))
    if not clips:
        raise DatasetError(f"expected at least one utterance in {path}, got none")
    return clips


def split_clips(clips: Sequence[Clip], *, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[Clip]]:
    """``{"train", "dev", "test"}`` lists; no group is in two splits.

    Groups named ``train``/``dev``/``test`` (a manifest's split column) are used as given.
    Otherwise the groups (game levels; for a manifest without a split column each utterance
    is its own group) are shuffled with ``seed`` and dealt to test, then dev, until each holds
    its fraction of the utterances; the rest is train.
    """
    if all(c.group in SPLITS for c in clips):
        out = {s: [c for c in clips if c.group == s] for s in SPLITS}
    else:
        keyed = [c if c.group else c._replace(group=f"utt{i}") for i, c in enumerate(clips)]
        groups = sorted({c.group for c in keyed})
        order = np.random.default_rng(seed).permutation(len(groups))
        sizes = {g: 0 for g in groups}
        for c in keyed:
            sizes[c.group] += 1
        target = {"test": fractions[2] * len(clips), "dev": fractions[1] * len(clips)}
        assign, filled, queue = {}, {"test": 0, "dev": 0}, ["test", "dev"]
        for j in order:
            g = groups[j]
            while queue and filled[queue[0]] >= target[queue[0]]:
                queue.pop(0)
            split = queue[0] if queue else "train"
            assign[g] = split
            if split != "train":
                filled[split] += sizes[g]
        out = {s: [c for c, k in zip(clips, keyed) if assign[k.group] == s] for s in SPLITS}
    if not out["train"] or not out["test"]:
        raise DatasetError(
            f"expected non-empty train and test splits, got {', '.join(f'{s} {len(v)}' for s, v in out.items())}"
        )
    if not out["dev"]:  # a tiny corpus: select on the training set rather than fail
        out["dev"] = list(out["train"])
    return out


class FeatureConfig(NamedTuple):
    """Log-mel settings (part of the feature cache key); ``speed``: the audio played that many
    times as fast first (``features.change_speed``: speed perturbation of training data);
    ``fmax``: the top of the mel filters in Hz (capped at Nyquist); ``highpass_ms`` > 0: each
    frame is the log-mel followed by its ``features.temporal_highpass`` with that time constant
    (``2 * n_mels`` values, ``n_features``)."""

    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    speed: float = 1.0
    fmax: float = 8000.0
    highpass_ms: float = 0.0

    @property
    def n_features(self) -> int:
        return self.n_mels * (2 if self.highpass_ms else 1)


def load_audio(path) -> tuple[np.ndarray, int]:
    """``(mono float32 samples [n], sample rate)`` of a WAV/Ogg/FLAC file (via ``soundfile``)."""
    import soundfile

    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError
        raise DatasetError(f"expected a WAV/Ogg/FLAC file readable by soundfile, got {str(path)!r}: {e}") from e
    return wave.mean(axis=1), int(rate)


def _cache_key(clips: Sequence[Clip], config: FeatureConfig) -> str:
    settings = config._asdict()
    for name, default in (("speed", 1.0), ("fmax", 8000.0), ("highpass_ms", 0.0)):
        if settings[name] == default:
            del settings[name]  # the key of a cache written before the setting existed
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for c in clips:
        st = Path(c.audio).stat()
        h.update(f"{c.audio}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def compute_features(
    clips: Sequence[Clip], config: FeatureConfig, *, cache_dir=None, progress: bool = False
) -> tuple[list[np.ndarray], bool]:
    """Log-mel ``[t_i, config.n_features]`` of each clip, read from / written to ``cache_dir`` when given.

    The cache file is keyed by the feature config and every file's path, size and mtime.
    Returns ``(features, from_cache)``.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"logmel_{_cache_key(clips, config)}.npz"
        if path.exists():
            with np.load(path) as z:
                data, offsets = z["data"], z["offsets"]
            return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])], True
    from lstm_jax.tasks.cli import progress_bar

    feats = []
    for c in progress_bar(clips, desc="log-mel", disable=not progress):
        wave, rate = load_audio(c.audio)
        if config.speed != 1.0:
            wave = F.change_speed(wave, config.speed)
        mel = F.log_mel(wave, rate, n_mels=config.n_mels, win_ms=config.win_ms, hop_ms=config.hop_ms, fmax=config.fmax)
        if config.highpass_ms:
            mel = np.concatenate([mel, F.temporal_highpass(mel, config.highpass_ms / config.hop_ms)], axis=1)
        feats.append(mel)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.cumsum([0] + [len(f) for f in feats])
        part = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")  # atomic: readers never see half a file
        np.savez(part, data=np.concatenate(feats), offsets=offsets)
        os.replace(part, path)
    return feats, False


class Vocab:
    """Characters of the training transcripts; class 0 is the CTC blank, class ``i + 1`` is ``chars[i]``."""

    def __init__(self, texts: Sequence[str]):
        self.chars = sorted(set("".join(texts)))
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def size(self) -> int:
        return len(self.chars) + 1

    @property
    def symbols(self) -> list[str]:
        """Class id -> character (the blank is ``""``)."""
        return [""] + self.chars

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` that are in the vocabulary (others are dropped)."""
        return [self.index[c] for c in text if c in self.index]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids if 0 < i <= len(self.chars))


class Buckets(NamedTuple):
    """Utterances grouped by duration; every batch of bucket ``j`` is ``[batch, lengths[j], m]``."""

    members: list  # list of int arrays: utterance indices per bucket
    lengths: list  # padded frame count per bucket (a multiple of the stack)


def _padding_bounds(values: np.ndarray, counts: np.ndarray, n_buckets: int, min_size: int) -> list[int]:
    """Cut points (exclusive ends, indices into the sorted distinct ``values``) of the split into
    at most ``n_buckets`` contiguous groups of at least ``min_size`` items that minimises
    ``sum(group size * group max)``: dynamic programming over the distinct values."""
    u = len(values)
    cum = np.concatenate([[0], np.cumsum(counts)])
    cost = np.full((n_buckets + 1, u + 1), np.inf)
    cost[0, 0] = 0.0
    arg = np.zeros((n_buckets + 1, u + 1), np.int64)
    for j in range(1, n_buckets + 1):
        for b in range(1, u + 1):
            a = np.arange(b)
            size = cum[b] - cum[a]
            c = np.where(size >= min_size, cost[j - 1, a] + size * values[b - 1], np.inf)
            arg[j, b] = int(np.argmin(c))
            cost[j, b] = c[arg[j, b]]
    j = int(np.argmin(cost[:, u]))
    if not np.isfinite(cost[j, u]):  # fewer items than min_size: one group
        return [u]
    ends, b = [], u
    while j > 0:
        ends.append(b)
        b, j = int(arg[j, b]), j - 1
    return ends[::-1]


def make_buckets(
    frames: Sequence[int], n_buckets: int, multiple: int, *, min_size: int = 1, method: str = "padding"
) -> Buckets:
    """Group utterances by frame count into at most ``n_buckets`` duration buckets.

    ``method="padding"`` (default) picks the boundaries that minimise the total padded frames
    (``sum over buckets of members * padded length``: the compute of an epoch of padded batches)
    with at least ``min_size`` utterances per bucket (pass the batch size); ``"quantile"`` splits
    at quantiles (equal-sized buckets). Padded lengths are rounded up to a multiple of ``multiple``.
    """
    counts = np.asarray(frames)
    if counts.ndim != 1 or not len(counts):
        raise ValueError(f"expected a non-empty sequence of frame counts, got shape {counts.shape}")
    if method not in ("padding", "quantile"):
        raise ValueError(f"expected method 'padding' or 'quantile', got {method!r}")
    order = np.argsort(counts, kind="stable")
    if method == "quantile":
        parts = [p for p in np.array_split(order, min(n_buckets, len(order))) if len(p)]
    else:
        # padded lengths are multiples of ``multiple``: the DP runs over those (few distinct values)
        values, per_value = np.unique(-(-counts // multiple) * multiple, return_counts=True)
        ends = _padding_bounds(values.astype(np.float64), per_value, max(1, n_buckets), max(1, min_size))
        cuts = np.cumsum(per_value)[np.asarray(ends) - 1]
        parts = np.split(order, cuts[:-1])
    lengths = [int(-(-counts[p].max() // multiple) * multiple) for p in parts]
    return Buckets(parts, lengths)


def baselines(train_texts: Sequence[str], train_seconds, seconds, n: int) -> dict[str, list[str]]:
    """Hypotheses of the trivial recognisers for ``n`` utterances of durations ``seconds``.

    ``empty``: nothing; ``spaces``: ``round(duration * training characters per second)`` spaces;
    ``median_sentence``: the training transcript of median length, for every utterance.
    """
    rate = sum(len(t) for t in train_texts) / float(np.sum(train_seconds))
    by_len = sorted(train_texts, key=len)
    median = by_len[len(by_len) // 2]
    return {
        "empty": [""] * n,
        "spaces": [" " * int(round(s * rate)) for s in seconds],
        "median_sentence": [median] * n,
    }
