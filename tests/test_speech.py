"""Tests of ``lstm_jax.speech``: log-mel features against a direct computation and a closed
form, stacking, SpecAugment, CTC loss masking and decoding against brute-force enumeration,
the character LM against hand counts, and edit distance / CER / WER against a Python
reference, ``jiwer`` and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from lstm_jax.speech import ctc
from lstm_jax.speech import features as F
from lstm_jax.speech import metrics as M
from lstm_jax.speech.lm import EOS, CharNgramLM


# --------------------------------------------------------------------------- features
def test_mel_filterbank_matches_the_htk_triangles_at_hand_computed_points():
    fb = F.mel_filterbank(3, 16, 1000.0)  # bins at 0, 62.5, ..., 500 Hz
    mels = np.linspace(0.0, 2595 * math.log10(1 + 500 / 700), 5)
    hz = 700 * (10 ** (mels / 2595) - 1)
    for j in range(3):
        for b, f in enumerate(np.arange(9) * 62.5):
            expect = max(0.0, min((f - hz[j]) / (hz[j + 1] - hz[j]), (hz[j + 2] - f) / (hz[j + 2] - hz[j + 1])))
            assert fb[b, j] == pytest.approx(expect, abs=1e-6)


def test_log_mel_equals_a_direct_scipy_stft_computation():
    rng = np.random.default_rng(0)
    sr, wave = 16000, rng.standard_normal(8000)
    got = F.log_mel(wave, sr, n_mels=40, preemphasis=0.0, fmin=0.0, fmax=None)
    win, hop, n_fft = 400, 160, 512
    # scipy: periodic=False Hann of win+2 trimmed equals numpy's hanning(win + 2)[1:-1]
    window = scipy.signal.get_window("hann", win + 2, fftbins=False)[1:-1]
    _, _, z = scipy.signal.stft(
        wave, fs=sr, window=window, nperseg=win, noverlap=win - hop, nfft=n_fft, boundary=None, padded=False
    )
    power = np.abs(z.T * window.sum()) ** 2  # undo scipy's window-sum scaling
    want = np.log(power @ F.mel_filterbank(40, n_fft, sr) + 1e-6)
    assert got.shape == want.shape == (1 + (8000 - win) // hop, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_log_mel_energy_of_a_sine_peaks_in_the_band_whose_centre_is_nearest(freq):
    sr, n_mels = 16000, 40
    wave = np.sin(2 * np.pi * freq * np.arange(sr) / sr)
    feats = F.log_mel(wave, sr, n_mels=n_mels, preemphasis=0.0, fmin=0.0, fmax=8000.0)
    centres = F.mel_to_hz(np.linspace(F.hz_to_mel(0.0), F.hz_to_mel(8000.0), n_mels + 2))[1:-1]
    assert int(np.argmax(feats.mean(0))) == int(np.argmin(np.abs(centres - freq)))


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.73])
def test_change_speed_is_scipys_fourier_resampling_and_scales_a_tones_pitch(factor):
    rate = 8000
    wave = np.random.default_rng(0).normal(size=4001)
    fast = F.change_speed(wave, factor)
    np.testing.assert_allclose(fast, scipy.signal.resample(wave, round(len(wave) / factor)), atol=1e-9)
    tone = np.sin(2 * np.pi * 440.0 * np.arange(rate) / rate)  # 1 s at 440 Hz
    out = F.change_speed(tone, factor)
    peak = np.fft.rfftfreq(len(out), 1.0 / rate)[np.argmax(np.abs(np.fft.rfft(out)))]
    assert len(out) == round(rate / factor) and abs(peak - 440.0 * factor) <= rate / len(out)
    np.testing.assert_array_equal(F.change_speed(wave, 1.0), wave)
    with pytest.raises(ValueError, match="speed factor > 0"):
        F.change_speed(wave, 0.0)


def test_frame_signal_and_normalize():
    frames = F.frame_signal(np.arange(10), 4, 3)
    np.testing.assert_array_equal(frames, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    x = np.random.default_rng(1).normal(3.0, 2.0, (50, 4))
    z = F.normalize(x)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="expected at least 4 samples"):
        F.frame_signal(np.arange(3), 4, 1)


def test_stack_frames_concatenates_consecutive_frames_numpy_and_jax():
    x = np.arange(2 * 6 * 2).reshape(2, 6, 2)
    got = F.stack_frames(x, 3)
    for b in range(2):
        for j in range(2):
            np.testing.assert_array_equal(got[b, j], np.concatenate([x[b, 3 * j + s] for s in range(3)]))
    np.testing.assert_array_equal(np.asarray(F.stack_frames(jnp.asarray(x), 3)), got)
    with pytest.raises(ValueError, match="dividing t"):
        F.stack_frames(x, 4)


def test_spec_augment_zeroes_whole_bands_and_frames_inside_the_valid_length():
    feats = jnp.ones((60, 20))
    fn = jax.jit(
        lambda k: F.spec_augment(
            k, feats, 40, freq_masks=1, freq_width=5, time_masks=1, time_width=10, time_fraction=0.5
        )
    )
    seen_t = seen_f = 0
    for s in range(20):
        out = np.asarray(fn(jax.random.key(s)))
        zero = out == 0.0
        rows = np.where(zero.all(1))[0]
        cols = np.where(zero.all(0))[0]
        # every zero lies in a fully masked row or column; masks are contiguous runs
        assert np.all(zero == (zero.all(1, keepdims=True) | zero.all(0, keepdims=True)))
        assert rows.size <= 10 and (rows.size == 0 or (rows.max() < 40 and np.all(np.diff(rows) == 1)))
        assert cols.size <= 5 and (cols.size == 0 or np.all(np.diff(cols) == 1))
        seen_t, seen_f = seen_t + bool(rows.size), seen_f + bool(cols.size)
    assert seen_t > 5 and seen_f > 5


def test_spec_augment_groups_mask_the_same_bands_in_every_block():
    """A log-mel block and its high-pass block: a frequency mask hides a band in both."""
    feats = jnp.ones((30, 24))  # 3 blocks of 8 bands
    fn = jax.jit(lambda k: F.spec_augment(k, feats, 30, freq_masks=2, freq_width=3, time_masks=0, groups=3))
    seen = 0
    for s in range(20):
        cols = np.where((np.asarray(fn(jax.random.key(s))) == 0.0).all(0))[0]
        blocks = [set(cols[(cols >= 8 * g) & (cols < 8 * g + 8)] - 8 * g) for g in range(3)]
        assert blocks[0] == blocks[1] == blocks[2] and len(blocks[0]) <= 6
        seen += bool(blocks[0])
    assert seen > 5
    with pytest.raises(ValueError, match="dividing the 24 features"):
        F.spec_augment(jax.random.key(0), feats, 30, groups=5)


# --------------------------------------------------------------------------- CTC
def _collapse(path, blank=0):
    return tuple(k for k, _ in itertools.groupby(path) if k != blank)


def _brute_force(log_probs):
    """log p(labelling) for every labelling, summing exp over all k^T alignments."""
    t, k = log_probs.shape
    total: dict = {}
    for path in itertools.product(range(k), repeat=t):
        p = math.exp(sum(log_probs[i, c] for i, c in enumerate(path)))
        total[_collapse(path)] = total.get(_collapse(path), 0.0) + p
    return {lab: math.log(p) for lab, p in total.items()}


def _random_log_probs(seed, t, k, sharp=2.0):
    logits = np.random.default_rng(seed).standard_normal((t, k)) * sharp
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits)), np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_prefix_beam_search_finds_the_exact_most_probable_labelling(seed):
    lp = _random_log_probs(seed, 5, 3)
    exact = _brute_force(lp)
    best = max(exact, key=exact.get)
    got, score = ctc.prefix_beam_search(lp, beam=1000, prune=0.0)
    assert tuple(got) == best
    assert score == pytest.approx(exact[best], abs=1e-9)


def test_ctc_loss_equals_brute_force_and_padding_changes_nothing():
    lp = _random_log_probs(7, 5, 3)
    exact, short = _brute_force(lp), _brute_force(lp[:3])
    # tight batch: label padding only; the third utterance is 3 frames long
    labels = np.array([[1, 2], [1, 1], [2, 0]])
    label_lengths, lengths = np.array([2, 2, 1]), np.array([5, 5, 3])
    want = [-exact[(1, 2)], -exact[(1, 1)], -short[(2,)]]
    tight = ctc.ctc_loss(
        jnp.asarray(np.stack([lp] * 3), jnp.float32),
        jnp.asarray(lengths),
        jnp.asarray(labels),
        jnp.asarray(label_lengths),
    )
    np.testing.assert_allclose(np.asarray(tight), want, rtol=1e-5)
    # more padding, filled with junk: frames past the length and labels past label_length
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 8, 3)).astype(np.float32) * 5
    logits[:, :5] = lp
    junk = np.concatenate([labels, rng.integers(1, 3, (3, 2))], axis=1)
    junk[2, 1] = 1
    padded = ctc.ctc_loss(jnp.asarray(logits), jnp.asarray(lengths), jnp.asarray(junk), jnp.asarray(label_lengths))
    np.testing.assert_allclose(np.asarray(padded), want, rtol=1e-5)


def test_greedy_decode_hand_worked():
    # argmax path: b a a b a c c b -> "a a c" (b = blank 0; a=1, c=2)
    path = [0, 1, 1, 0, 1, 2, 2, 0, 1]
    lp = np.full((9, 3), -5.0)
    lp[np.arange(9), path] = -0.1
    best, keep = jax.jit(ctc.greedy_decode)(jnp.asarray(lp), 9)
    assert ctc.collapse(best, keep) == [1, 1, 2, 1]
    best, keep = ctc.greedy_decode(jnp.asarray(lp), 6)  # frames past the length are ignored
    assert ctc.collapse(best, keep) == [1, 1, 2]
    batched = jax.vmap(ctc.greedy_decode)(jnp.asarray(np.stack([lp, lp])), jnp.array([9, 2]))
    assert [ctc.collapse(b, k) for b, k in zip(*batched)] == [[1, 1, 2, 1], [1]]


def test_beam_search_with_an_lm_prefers_the_lm_word_when_acoustics_are_ambiguous():
    symbols = ["", "a", "b"]
    lm = CharNgramLM.train(["ab"] * 50 + ["aa"], order=2)
    # frame 2 is 50/50 between a and b; the LM knows "a" is followed by "b"
    lp = np.log(np.array([[0.01, 0.98, 0.01], [0.02, 0.49, 0.49], [0.98, 0.01, 0.01]]))
    plain, _ = ctc.prefix_beam_search(lp, beam=8, prune=0.0)
    fused, _ = ctc.prefix_beam_search(lp, beam=8, prune=0.0, lm=lm, symbols=symbols, lm_weight=1.0)
    assert fused == [1, 2]
    assert plain != fused or _brute_force(lp)[(1, 2)] >= _brute_force(lp)[(1, 1)]


# --------------------------------------------------------------------------- LM
def test_char_lm_witten_bell_hand_counts_and_normalisation():
    lm = CharNgramLM.train(["ab", "ac"], order=2, smoothing="witten_bell")
    symbols = lm.symbols  # a, b, c, EOS
    uniform = 1 / 4
    # unigram: counts a2 b1 c1 EOS2 over 6 tokens, 4 types
    uni = {
        "a": (2 + 4 * uniform) / 10,
        "b": (1 + 4 * uniform) / 10,
        "c": (1 + 4 * uniform) / 10,
        EOS: (2 + 4 * uniform) / 10,
    }
    # after "a": b1 c1, 2 types
    for ch in symbols:
        expect = ({"b": 1, "c": 1}.get(ch, 0) + 2 * uni[ch]) / (2 + 2)
        assert math.exp(lm.log_prob("a", ch)) == pytest.approx(expect)
    for hist in ("", "a", "b", "zz"):
        assert sum(math.exp(lm.log_prob(hist, c)) for c in symbols) == pytest.approx(1.0)
    assert lm.score("ab") == pytest.approx(lm.log_prob("", "a") + lm.log_prob("a", "b") + lm.log_prob("ab", EOS))


def test_char_lm_kneser_ney_hand_counts_and_normalisation():
    lm = CharNgramLM.train(["ab", "ac", "bb"], order=2)  # modified Kneser-Ney is the default
    # continuation counts of the unigram level (distinct left neighbours, BOS included):
    # a 1 (BOS), b 3 (BOS, a, b), c 1 (a), EOS 2 (b, c); counts of counts n1=2 n2=1 n3=1 n4=0
    y = 2 / (2 + 2 * 1)
    d1, d2, d3 = 1 - 2 * y * 1 / 2, 2 - 3 * y * 1 / 1, min(3 - 4 * y * 0 / 1, 3)
    freed = d1 + d3 + d1 + d2  # a, b, c, EOS
    uni = {"a": 1 - d1, "b": 3 - d3, "c": 1 - d1, EOS: 2 - d2}
    uni = {k: (v + freed / 4) / 7 for k, v in uni.items()}
    for ch, p in uni.items():  # after an unseen character: the unigram level
        assert math.exp(lm.log_prob("z", ch)) == pytest.approx(p)
    # bigram raw counts: BOS a2 b1 | a: b1 c1 | b: EOS2 b1 | c: EOS1 -> n1=5, n2=2, n3=0
    y = 5 / (5 + 2 * 2)
    e1, e2 = 1 - 2 * y * 2 / 5, min(2 - 3 * y * 0 / 2, 2)
    assert math.exp(lm.log_prob("a", "b")) == pytest.approx((1 - e1 + 2 * e1 * uni["b"]) / 2)
    assert math.exp(lm.log_prob("b", EOS)) == pytest.approx((2 - e2 + (e2 + e1) * uni[EOS]) / 3)
    assert math.exp(lm.log_prob("c", "a")) == pytest.approx(e1 * uni["a"] / 1)
    assert math.exp(lm.log_prob("", "a")) == pytest.approx((2 - e2 + (e2 + e1) * uni["a"]) / 3)  # after BOS
    for hist in ("", "a", "b", "c", "zz"):
        assert sum(math.exp(lm.log_prob(hist, c)) for c in lm.symbols) == pytest.approx(1.0)


def test_kneser_ney_backs_off_to_how_many_contexts_a_character_follows_not_how_often():
    # "z" is frequent but only ever after "q"; "y" is rarer but follows many characters
    text = ["qz"] * 20 + ["ay", "by", "cy", "dy", "ey"]
    kn, wb = CharNgramLM.train(text, order=2), CharNgramLM.train(text, order=2, smoothing="witten_bell")
    # after "y" (only ever followed by the end of sentence in training) both letters come from
    # the back-off: Kneser-Ney ranks y above z, Witten-Bell (raw unigram counts) z above y
    assert kn.log_prob("y", "y") > kn.log_prob("y", "z")
    assert wb.log_prob("y", "z") > wb.log_prob("y", "y")
    with pytest.raises(ValueError, match="expected smoothing in"):
        CharNgramLM.train(text, order=2, smoothing="good_turing")


# --------------------------------------------------------------------------- metrics
def _levenshtein(a, b):
    """Textbook dynamic programme."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_edit_distance_against_a_python_reference_on_random_strings():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = "".join(rng.choice(list("abc"), size=rng.integers(0, 9)))
        b = "".join(rng.choice(list("abcd"), size=rng.integers(0, 9)))
        assert M.edit_distance(a, b) == _levenshtein(a, b), (a, b)


def test_cer_wer_hand_worked_and_against_jiwer():
    jiwer = pytest.importorskip("jiwer")
    assert M.edit_distance("kitten", "sitting") == 3
    assert M.edit_distance(["the", "cat"], ["a", "cat", "sat"]) == 2
    refs, hyps = ["the cat sat", "on the mat"], ["the cat sit", "on mat"]
    # words: 1 substitution + 1 deletion over 6 reference words
    assert M.wer(refs, hyps) == pytest.approx(2 / 6)
    # chars: "sat"->"sit" 1 sub; "on the mat"->"on mat" deletes "the " (4) over 11 + 10
    assert M.cer(refs, hyps) == pytest.approx(5 / 21)
    assert M.cer(["abc"], [""]) == 1.0
    rng = np.random.default_rng(1)
    refs = [
        " ".join("".join(rng.choice(list("ab"), size=rng.integers(1, 4))) for _ in range(rng.integers(1, 5)))
        for _ in range(30)
    ]
    hyps = [
        " ".join("".join(rng.choice(list("abc"), size=rng.integers(1, 4))) for _ in range(rng.integers(1, 5)))
        for _ in range(30)
    ]
    assert M.wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert M.cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps))
    with pytest.raises(ValueError, match="as many hypotheses"):
        M.cer(["a"], [])
