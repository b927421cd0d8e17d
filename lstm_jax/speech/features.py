"""Acoustic features: log-mel spectrograms and their temporal high-pass (numpy), normalisation,
frame stacking and SpecAugment-style masking (JAX, one example; ``jax.vmap`` it over a batch).

Shapes: ``n`` samples, ``t`` frames, ``m`` mel bands, ``s`` frames stacked into one.

>>> import numpy as np
>>> wave = np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)
>>> log_mel(wave, 16000, n_mels=40).shape    # 1 s, 25 ms window, 10 ms hop
(98, 40)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.typing import Array, PRNGKey

__all__ = [
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
    "frame_signal",
    "change_speed",
    "log_mel",
    "temporal_highpass",
    "normalize",
    "stack_frames",
    "spec_augment",
]


def hz_to_mel(hz):
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: float, fmin: float = 0.0, fmax: Optional[float] = None):
    """Triangular mel filters on the ``n_fft // 2 + 1`` FFT bins.

    Filter ``j`` rises linearly from mel centre ``j - 1`` to ``j`` and falls to ``j + 1``
    (``n_mels + 2`` points equally spaced in mel between ``fmin`` and ``fmax``); peak 1.

    Returns:
      ``[n_fft // 2 + 1, n_mels]`` float32.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"expected 0 <= fmin < fmax <= sample_rate / 2 = {sample_rate / 2}, got {fmin}, {fmax}")
    if n_mels < 1:
        raise ValueError(f"expected n_mels >= 1, got {n_mels}")
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rise = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    fall = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    return np.maximum(0.0, np.minimum(rise, fall)).astype(np.float32)


def frame_signal(wave, frame_length: int, hop: int):
    """Overlapping frames of a 1-D signal (no padding: frames that fit entirely).

    Args:
      wave: ``[n]`` samples, ``n >= frame_length``.
    Returns:
      ``[1 + (n - frame_length) // hop, frame_length]``.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D signal [n], got shape {wave.shape}")
    if len(wave) < frame_length:
        raise ValueError(f"expected at least {frame_length} samples (one window), got {len(wave)}")
    n_frames = 1 + (len(wave) - frame_length) // hop
    idx = np.arange(frame_length)[None, :] + hop * np.arange(n_frames)[:, None]
    return wave[idx]


def change_speed(wave, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times as fast at the same sample rate (tempo and pitch both scale,
    as ``sox speed`` does; Ko et al. 2015's speed perturbation): band-limited resampling to
    ``round(n / factor)`` samples through the FFT (zero-padded or truncated spectrum, so a speed-up
    drops what would fold above the new Nyquist frequency).

    >>> change_speed(np.ones(100), 0.5).shape
    (200,)
    """
    wave = np.asarray(wave, np.float64)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono signal [n], got shape {wave.shape}")
    if not factor > 0:
        raise ValueError(f"expected a speed factor > 0, got {factor}")
    n, m = len(wave), max(1, int(round(len(wave) / factor)))
    if m == n:
        return wave.copy()
    spec = np.fft.rfft(wave)
    keep = min(len(spec), m // 2 + 1)
    out = np.zeros(m // 2 + 1, complex)
    out[:keep] = spec[:keep]
    if m % 2 == 0 and keep == m // 2 + 1 and m < n:  # the new Nyquist bin holds both halves' share
        out[-1] = out[-1].real
    return np.fft.irfft(out, m) * (m / n)


def log_mel(
    wave,
    sample_rate: int,
    *,
    n_mels: int = 80,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    fmin: float = 20.0,
    fmax: Optional[float] = 8000.0,
    preemphasis: float = 0.97,
    floor: float = 1e-6,
) -> np.ndarray:
    """Log mel power spectrogram: pre-emphasis, Hann window, ``|rfft|^2``, mel filters, ``log``.

    The FFT size is the next power of two of the window; ``fmax`` is capped at Nyquist.

    Args:
      wave: ``[n]`` samples (mono; any scale).
      sample_rate: samples per second.
    Returns:
      ``[t, n_mels]`` float32 with ``t = 1 + (n - win) // hop``.
    """
    wave = np.asarray(wave, np.float64)
    win = int(round(sample_rate * win_ms / 1000.0))
    hop = int(round(sample_rate * hop_ms / 1000.0))
    if wave.ndim != 1:
        raise ValueError(f"expected a mono signal [n], got shape {wave.shape}")
    if len(wave) < win:  # shorter than one window: pad to one frame
        wave = np.pad(wave, (0, win - len(wave)))
    if preemphasis:
        wave = np.concatenate([wave[:1], wave[1:] - preemphasis * wave[:-1]])
    n_fft = 1 << (win - 1).bit_length()
    frames = frame_signal(wave, win, hop) * np.hanning(win + 2)[1:-1]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=-1)) ** 2
    top = sample_rate / 2.0 if fmax is None else min(fmax, sample_rate / 2.0)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, fmin, top)
    return np.log(power @ fb + floor).astype(np.float32)


def temporal_highpass(feats, tau_frames: float) -> np.ndarray:
    """Each band minus its causal exponential moving average (time constant ``tau_frames``):
    what is new in the last few hundred milliseconds. A slowly decaying reverberation tail is
    followed by the average and cancels; onsets stand out (the idea of RASTA filtering,
    Hermansky & Morgan 1994, as a one-pole high-pass on log-mel trajectories).

    ``out[t] = x[t] - m[t]`` with ``m[0] = x[0]``, ``m[t + 1] = a m[t] + (1 - a) x[t]``,
    ``a = exp(-1 / tau_frames)``.

    Args:
      feats: ``[t, m]``.
    Returns:
      ``[t, m]`` float32.
    """
    feats = np.asarray(feats, np.float64)
    if feats.ndim != 2:
        raise ValueError(f"expected features [t, m], got shape {feats.shape}")
    if not tau_frames > 0:
        raise ValueError(f"expected a time constant > 0 frames, got {tau_frames}")
    a = float(np.exp(-1.0 / tau_frames))
    out = np.empty_like(feats)
    mean = feats[0].copy() if len(feats) else np.zeros(feats.shape[1:])
    for t, row in enumerate(feats):
        out[t] = row - mean
        mean = a * mean + (1.0 - a) * row
    return out.astype(np.float32)


def normalize(feats, mean=None, std=None, eps: float = 1e-5):
    """``(feats - mean) / std`` per band; without ``mean``/``std`` the utterance's own statistics.

    Args:
      feats: ``[t, m]``; ``mean``, ``std``: ``[m]`` (e.g. over the training set: global CMVN).
    """
    feats = np.asarray(feats, np.float32)
    if mean is None:
        mean = feats.mean(0)
    if std is None:
        std = feats.std(0)
    return ((feats - mean) / (np.asarray(std) + eps)).astype(np.float32)


def stack_frames(feats: Array, stack: int) -> Array:
    """Concatenate ``stack`` consecutive frames into one and keep every ``stack``-th (subsampling).

    Works on numpy and JAX arrays and on a leading batch axis.

    Args:
      feats: ``[..., t, m]`` with ``t`` a multiple of ``stack`` (pad first).
    Returns:
      ``[..., t // stack, stack * m]``; output frame ``j`` is frames ``j*stack .. j*stack+stack-1``.
    """
    *lead, t, m = feats.shape
    if stack < 1 or t % stack:
        raise ValueError(f"expected stack >= 1 dividing t, got stack={stack}, t={t}")
    return feats.reshape(*lead, t // stack, stack * m)


def spec_augment(
    key: PRNGKey,
    feats: Array,
    length: Array,
    *,
    freq_masks: int = 2,
    freq_width: int = 15,
    time_masks: int = 2,
    time_width: int = 40,
    time_fraction: float = 0.1,
    groups: int = 1,
) -> Array:
    """SpecAugment masking (Park et al. 2019, no time warping) of ONE utterance, traceable.

    Each frequency mask zeroes ``w ~ U{0..freq_width}`` consecutive bands at a uniform start;
    with ``groups`` > 1 the feature axis is that many blocks of ``m // groups`` bands (e.g. the
    log-mel and its temporal high-pass) and a mask zeroes the same bands in every block;
    each time mask zeroes ``w ~ U{0..min(time_width, time_fraction * length)}`` frames inside
    the valid ``length``. Zero is the mean of normalised features.

    Args:
      feats: ``[t, m]``; length: scalar int, valid frames.
    Returns:
      ``[t, m]``, same dtype.
    """
    t, m = feats.shape
    if groups < 1 or m % groups:
        raise ValueError(f"expected groups >= 1 dividing the {m} features, got groups={groups}")
    keys = jax.random.split(key, 2 * (freq_masks + time_masks))
    bands = jnp.arange(m) % (m // groups)
    frames = jnp.arange(t)
    keep = jnp.ones((t, m), bool)
    for i in range(freq_masks):
        w = jax.random.randint(keys[2 * i], (), 0, freq_width + 1)
        start = jax.random.randint(keys[2 * i + 1], (), 0, jnp.maximum(m // groups - w, 0) + 1)
        keep &= ~((bands >= start) & (bands < start + w))[None, :]
    max_w = jnp.minimum(time_width, jnp.floor(time_fraction * length).astype(jnp.int32))
    for i in range(time_masks):
        k1, k2 = keys[2 * (freq_masks + i)], keys[2 * (freq_masks + i) + 1]
        w = jax.random.randint(k1, (), 0, max_w + 1)
        start = jax.random.randint(k2, (), 0, jnp.maximum(length - w, 0) + 1)
        keep &= ~((frames >= start) & (frames < start + w))[:, None]
    return jnp.where(keep, feats, jnp.zeros((), feats.dtype))
