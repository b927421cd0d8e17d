"""lstm_jax.tasks.music against independent computations: the masked per-frame NLL against
scipy's Bernoulli log-pmf in a Python loop, the baselines against direct counting on a
hand-made roll, piano-roll extraction against a score built with music21, MIDI written by
sampling read back by music21, and experiments/music.py --quick end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import music21
import numpy as np
import pytest
from scipy import stats

from lstm_jax.tasks import cli, music, results, seqmodel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fast_compile():
    with cli.fast_compile():
        yield


def _roll(t, on):
    """[t, 88] roll with the (frame, key) cells of ``on`` set."""
    r = np.zeros((t, music.KEYS), np.uint8)
    for j, k in on:
        r[j, k] = 1
    return r


# --------------------------------------------------------------------------- likelihood
def test_bernoulli_nll_matches_scipy_logpmf_in_a_loop_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, music.KEYS)).astype(np.float32) * 3
    targets = (rng.random((3, 5, music.KEYS)) < 0.1).astype(np.float32)
    lengths = np.array([5, 2, 1])
    got = np.asarray(music.bernoulli_nll(logits, targets, lengths))
    for i in range(3):
        for j in range(5):
            p = 1.0 / (1.0 + np.exp(-logits[i, j].astype(np.float64)))
            want = -sum(stats.bernoulli.logpmf(targets[i, j, k], p[k]) for k in range(music.KEYS))
            assert got[i, j] == pytest.approx(want if j < lengths[i] else 0.0, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        music.bernoulli_nll(logits[:, :4], targets)


def test_music_nll_is_total_over_frames_each_given_its_own_prefix():
    rng = np.random.default_rng(1)
    rolls = [(rng.random((t, music.KEYS)) < 0.05).astype(np.uint8) for t in (7, 3, 5)]
    params = seqmodel.init_seq_model(jax.random.key(0), "gru", music.KEYS, 8, music.KEYS)
    total = 0.0
    for r in rolls:  # one unpadded sequence at a time: inputs are the previous frames
        x = np.concatenate([np.zeros((1, music.KEYS)), r[:-1]]).astype(np.float32)[None]
        logits = np.asarray(seqmodel.apply_seq_model(params, x, readout="sequence"), np.float64)[0]
        p = 1.0 / (1.0 + np.exp(-logits))
        total -= stats.bernoulli.logpmf(r, p).sum()
    want = total / sum(len(r) for r in rolls)
    assert music.music_nll(params, rolls, max_len=9) == pytest.approx(want, rel=1e-4)
    # the training loss of one padded batch is the same per-frame mean
    loss, _ = music.music_loss(params, music.pad_rolls(rolls, 9), None)
    assert float(loss) == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------- baselines
def test_bernoulli_and_markov_baselines_match_counting_by_hand():
    # key 40 on at frames 0,1,2 then off at 3; key 44 on only at frame 3; the rest always off
    train = [_roll(4, [(0, 40), (1, 40), (2, 40), (3, 44)])]
    test = [_roll(2, [(0, 40), (1, 44)])]
    a = 1.0
    # marginals over the 4 training frames, add-one smoothed
    p = np.full(music.KEYS, a / (4 + 2 * a))
    p[40], p[44] = (3 + a) / (4 + 2 * a), (1 + a) / (4 + 2 * a)
    np.testing.assert_allclose(music.fit_bernoulli(train, alpha=a), p)
    # transitions (3 pairs): key 40 on->on twice, on->off once; key 44 off->off twice, off->on once
    first, after_off, after_on = music.fit_markov(train, alpha=a)
    assert after_on[40] == pytest.approx((2 + a) / (3 + 2 * a))
    assert after_off[40] == pytest.approx((0 + a) / (0 + 2 * a))
    assert after_off[44] == pytest.approx((1 + a) / (3 + 2 * a))
    assert after_on[44] == pytest.approx(0.5) and after_off[0] == pytest.approx(a / (3 + 2 * a))

    def nll(probs_per_frame):
        return -sum(
            math.log(q if on else 1.0 - q) for row, frame in zip(probs_per_frame, test[0]) for q, on in zip(row, frame)
        ) / len(test[0])

    assert music.baseline_nll(p, test) == pytest.approx(nll([p, p]))
    # frame 1 given frame 0: key 40 was on, every other key off
    q1 = after_off.copy()
    q1[40] = after_on[40]
    assert music.baseline_nll((first, after_off, after_on), test) == pytest.approx(nll([first, q1]))


def test_split_is_by_chorale_and_seeded():
    names = [f"c{i}" for i in range(351)]
    rolls = [_roll(i % 7 + 1, []) for i in range(351)]
    d = music.split_chorales(names, rolls, seed=0)
    assert [len(d.names[k]) for k in ("train", "val", "test")] == [210, 70, 71]
    assert sorted(sum(d.names.values(), [])) == sorted(names)
    assert d.names == music.split_chorales(names, rolls, seed=0).names
    assert d.names["test"] != music.split_chorales(names, rolls, seed=1).names["test"]


# --------------------------------------------------------------------------- rolls and MIDI
def _score():
    """Two parts: soprano C5 (half), D5 (quarter), rest, E5 (eighth, eighth rest); bass C3
    (dotted half) and a G2+D3 chord (quarter)."""
    m = music21
    sop, bass = m.stream.Part(), m.stream.Part()
    sop.insert(0, m.note.Note("C5", quarterLength=2))
    sop.insert(2, m.note.Note("D5", quarterLength=1))
    sop.insert(4, m.note.Note("E5", quarterLength=0.5))
    sop.insert(4.5, m.note.Rest(quarterLength=0.5))
    bass.insert(0, m.note.Note("C3", quarterLength=3))
    bass.insert(3, m.chord.Chord(["G2", "D3"], quarterLength=1))
    score = m.stream.Score()
    score.insert(0, sop)
    score.insert(0, bass)
    return score


def test_score_roll_puts_known_pitches_at_known_frames():
    c5, d5, e5, c3, g2, d3 = 72 - 21, 74 - 21, 76 - 21, 48 - 21, 43 - 21, 50 - 21
    got = music.score_roll(_score(), 1.0)
    want = _roll(5, [(0, c5), (1, c5), (2, d5), (4, e5), (0, c3), (1, c3), (2, c3), (3, g2), (3, d3)])
    np.testing.assert_array_equal(got, want)
    eighth = music.score_roll(_score(), 0.5)
    assert eighth.shape == (10, 88)
    assert list(np.flatnonzero(eighth[:, e5])) == [8]  # the eighth note fills one eighth frame
    assert list(np.flatnonzero(eighth[:, c3])) == list(range(6))
    with pytest.raises(ValueError, match="step > 0"):
        music.score_roll(_score(), 0.0)


def test_sampled_roll_written_as_midi_parses_back_to_the_same_roll(tmp_path):
    params = seqmodel.init_seq_model(jax.random.key(0), "lstm", music.KEYS, 8, music.KEYS)
    primer = music.score_roll(_score(), 1.0)
    sample = music.sample_roll(params, primer, 6, jax.random.key(3))
    assert sample.shape == (11, 88) and sample.dtype == np.uint8
    np.testing.assert_array_equal(sample[:5], primer)
    assert sample[5:].sum() > 0  # an untrained net turns each key on with probability ~1/2
    for step in (1.0, 0.5):
        path = music.write_midi(sample, tmp_path / f"sample{step}.mid", step)
        back = music.score_roll(music21.converter.parse(str(path)), step)
        # the MIDI file runs to the end of its last 4/4 bar: silence after the roll
        assert len(sample) <= len(back) < len(sample) + 4 / step
        np.testing.assert_array_equal(back[: len(sample)], sample)
        assert back[len(sample) :].sum() == 0
    with pytest.raises(ValueError, match="primer of shape"):
        music.sample_roll(params, primer[:, :80], 3, jax.random.key(0))


def test_transpose_rolls_keeps_notes_on_the_keyboard():
    r = _roll(2, [(0, 1), (1, 85)])
    shifted = music.transpose_rolls([r], range(-2, 3))
    # key 1 - 2 < 0 leaves the keyboard; -1, 0, +1, +2 keep both notes on it (85 + 2 = 87)
    assert [list(np.flatnonzero(s.any(0))) for s in shifted] == [[0, 84], [1, 85], [2, 86], [3, 87]]


# --------------------------------------------------------------------------- script
def test_music_quick_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LSTM_JAX_CACHE", str(tmp_path / "cache"))  # parse here, cache the rolls here
    spec = importlib.util.spec_from_file_location("experiments_music", ROOT / "experiments" / "music.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    data = results.load_metrics(tmp_path / "metrics.json")
    assert all(math.isfinite(r["value"]) for r in data["results"])
    found = {(r["model"], r["metric"]) for r in data["results"] if r["split"] == "test"}
    for model in ("bernoulli", "markov", "lstm", "gru"):
        assert (model, "nll_per_frame") in found, found
    assert ("lstm", "notes_per_frame") in found and ("data", "notes_per_frame") in found
    for name in ("music.png", "piano_rolls.png"):
        assert (tmp_path / name).stat().st_size > 1000
    roll = music.score_roll(music21.converter.parse(str(tmp_path / "sample_lstm.mid")), 1.0)
    assert roll.shape[1] == 88 and roll.sum() > 0
    assert any((tmp_path / "checkpoint").iterdir())
    assert "markov" in capsys.readouterr().out
