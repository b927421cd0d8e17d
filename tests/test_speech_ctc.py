"""Tests of the speech recipe (``lstm_jax.tasks.speech``, ``speech_train``, ``fillets``) and of
``experiments/speech_ctc.py --quick`` on a manifest of tiny generated WAV files (no Debian
packages needed)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.datasets import DatasetError
from lstm_jax.speech import features as F
from lstm_jax.speech import metrics as M
from lstm_jax.speech.ctc import ctc_loss
from lstm_jax.speech.model import AcousticConfig, acoustic_logits, init_acoustic_model, make_ctc_loss, map_classes
from lstm_jax.tasks import cli, fillets, results
from lstm_jax.tasks import speech as S
from lstm_jax.tasks import speech_train as ST

ROOT = Path(__file__).resolve().parents[1]
TONES = {"a": 400.0, "b": 900.0, "c": 1800.0}


def _write_corpus(folder: Path, n: int = 16, *, split_column: bool = False) -> Path:
    """WAVs whose "transcript" maps deterministically to tones (one 120 ms tone per letter)."""
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    sr, lines = 8000, []
    for i in range(n):
        word = "".join(rng.choice(list(TONES), size=int(rng.integers(2, 4))))
        text = word if i % 3 else f"{word} {word[::-1]}"
        parts = []
        for ch in text:
            t = np.arange(int(0.12 * sr)) / sr
            parts += [0.5 * np.sin(2 * np.pi * TONES[ch] * t) if ch in TONES else np.zeros_like(t), np.zeros(240)]
        wave = np.concatenate(parts) + 0.01 * rng.standard_normal(sum(map(len, parts)))
        sf.write(folder / f"u{i}.wav", wave.astype(np.float32), sr)
        split = ["train", "train", "dev", "test"][i % 4] if split_column else None
        lines.append("\t".join([f"u{i}.wav", text.upper() + "!", f"spk{i % 2}"] + ([split] if split else [])))
    (folder / "corpus.tsv").write_text("path\ttext\tspeaker\n" * (not split_column) + "\n".join(lines) + "\n")
    return folder / "corpus.tsv"


def test_normalize_text_hand_examples():
    assert S.normalize_text("Vidíš toho KONÍKA?") == "vidíš toho koníka"
    assert S.normalize_text("Zo'n 3 vissen\u2014of  4...") == "zon 3 vissen of 4"
    assert S.normalize_text("C:\\WINDOWS\\CONFIG") == "c windows config"
    assert S.normalize_text("...") == ""


def test_parse_dialogs_pairs_ids_with_the_next_string_and_undoes_escapes():
    lua = """
dialogId("bot-m-vidis", "font_small", "Can you see that seahorse?")
dialogStr("Vidíš toho koníka?")

dialogId("v-x", "font_big", "It isn't")
dialogStr(
"Řekl \\"ne\\" a C:\\\\WIN")
dialogId("orphan", "font_big", "no translation")
"""
    assert fillets.parse_dialogs(lua) == {"bot-m-vidis": "Vidíš toho koníka?", "v-x": 'Řekl "ne" a C:\\WIN'}


def test_load_fillets_reads_levels_speakers_and_shared_dialogs(tmp_path):
    for level, ids in (("aztec", ["bot-m-vidis", "bot-v-x", "no-text"]), ("share/border", ["bd-m-a"])):
        d = tmp_path / "sound" / level / "cs"
        d.mkdir(parents=True)
        for i in ids:
            (d / f"{i}.ogg").write_bytes(b"")
    (tmp_path / "script" / "aztec").mkdir(parents=True)
    (tmp_path / "script" / "share").mkdir(parents=True)
    (tmp_path / "script" / "aztec" / "dialogs_cs.lua").write_text(
        'dialogId("bot-m-vidis", "f", "x")\ndialogStr("Ahoj")\n'
    )
    (tmp_path / "script" / "aztec" / "demo_dialogs_cs.lua").write_text(
        'dialogId("bot-v-x", "f", "x")\ndialogStr("Nazdar")\n'
    )
    (tmp_path / "script" / "share" / "border_dialogs_cs.lua").write_text(
        'dialogId("bd-m-a", "f", "x")\ndialogStr("Tady")\n'
    )
    clips = fillets.load_fillets("cs", tmp_path)
    got = sorted((Path(c.audio).stem, c.text, c.speaker, c.group) for c in clips)
    assert got == [
        ("bd-m-a", "Tady", "m", "share/border"),
        ("bot-m-vidis", "Ahoj", "m", "aztec"),
        ("bot-v-x", "Nazdar", "v", "aztec"),
    ]
    with pytest.raises(DatasetError, match="fillets-ng-data"):
        fillets.load_fillets("cs", tmp_path / "nothing")
    with pytest.raises(DatasetError, match="expected --language"):
        fillets.load_fillets("xx", tmp_path)


def test_split_clips_keeps_groups_whole_and_is_seeded():
    clips = [fillets.Clip(f"a{i}", "t", "s", f"level{i % 20}") for i in range(400)]
    a, b = S.split_clips(clips, seed=3), S.split_clips(clips, seed=3)
    assert a == b and S.split_clips(clips, seed=4) != a
    groups = {s: {c.group for c in a[s]} for s in S.SPLITS}
    assert not (groups["train"] & groups["dev"] or groups["train"] & groups["test"] or groups["dev"] & groups["test"])
    assert sum(len(v) for v in a.values()) == 400
    assert len(a["test"]) == 40 and len(a["dev"]) == 40  # two levels of 20 each
    # a manifest's split column is used as given; no split column: utterances split one by one
    given = [fillets.Clip(f"a{i}", "t", "", ["train", "dev", "test"][i % 3]) for i in range(9)]
    assert [len(v) for v in S.split_clips(given).values()] == [3, 3, 3]
    loose = [fillets.Clip(f"a{i}", "t", "", "") for i in range(50)]
    assert [len(v) for v in S.split_clips(loose).values()] == [40, 5, 5]


def test_manifest_reading_and_its_errors(tmp_path):
    path = _write_corpus(tmp_path, 4)
    clips = S.read_manifest(path)
    assert len(clips) == 4 and clips[0].speaker == "spk0" and Path(clips[0].audio).is_file()
    with pytest.raises(DatasetError, match="existing manifest"):
        S.read_manifest(tmp_path / "none.tsv")
    (tmp_path / "bad.tsv").write_text("missing.wav\thello\n")
    with pytest.raises(DatasetError, match="existing audio file on line 1"):
        S.read_manifest(tmp_path / "bad.tsv")
    (tmp_path / "bad2.tsv").write_text("u0.wav\thello\ts\tvalidation\n")
    with pytest.raises(DatasetError, match="expected split in"):
        S.read_manifest(tmp_path / "bad2.tsv")


def test_feature_cache_round_trip(tmp_path):
    clips = S.read_manifest(_write_corpus(tmp_path, 3))
    cfg = S.FeatureConfig(n_mels=20)
    first, cached1 = S.compute_features(clips, cfg, cache_dir=tmp_path / "cache")
    second, cached2 = S.compute_features(clips, cfg, cache_dir=tmp_path / "cache")
    assert (cached1, cached2) == (False, True)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    wave, sr = S.load_audio(clips[0].audio)
    assert first[0].shape == (1 + (len(wave) - 200) // 80, 20)
    # speed perturbation: features of the audio played 1.1 times as fast, cached under their own key
    fast, cached3 = S.compute_features(clips, cfg._replace(speed=1.1), cache_dir=tmp_path / "cache")
    want = F.log_mel(F.change_speed(wave, 1.1), sr, n_mels=20)
    assert not cached3 and fast[0].shape == want.shape and fast[0].shape[0] < first[0].shape[0]
    np.testing.assert_allclose(fast[0], want, atol=1e-5)
    # a lower top of the mel filters: its own cache entry, the features log_mel gives with that fmax
    narrow, cached4 = S.compute_features(clips, cfg._replace(fmax=3000.0), cache_dir=tmp_path / "cache")
    assert not cached4
    np.testing.assert_allclose(narrow[0], F.log_mel(wave, sr, n_mels=20, fmax=3000.0), atol=1e-5)
    assert not np.allclose(narrow[0], first[0], atol=1e-2)
    # with the temporal high-pass: the log-mel, then its high-pass, per frame
    both, _ = S.compute_features(clips, cfg._replace(highpass_ms=100.0), cache_dir=tmp_path / "cache")
    assert both[0].shape == (first[0].shape[0], cfg._replace(highpass_ms=100.0).n_features) == (len(first[0]), 40)
    np.testing.assert_allclose(both[0][:, :20], first[0], atol=1e-5)
    np.testing.assert_allclose(both[0][:, 20:], F.temporal_highpass(first[0], 10.0), atol=1e-4)


def test_temporal_highpass_step_and_ramp_responses_are_the_closed_forms():
    tau = 10.0
    a = np.exp(-1.0 / tau)
    step = np.zeros((40, 2))
    step[5:, 0] = 1.0  # band 0: a step at frame 5; band 1: silence
    out = F.temporal_highpass(step, tau)
    np.testing.assert_allclose(out[:5], 0.0)
    np.testing.assert_allclose(out[5:, 0], a ** np.arange(35), rtol=1e-6)  # the step decays as exp(-k / tau)
    np.testing.assert_allclose(out[:, 1], 0.0)
    ramp = -0.3 * np.arange(400.0)[:, None]  # a log-energy decay tail: a straight line
    # e[t + 1] = s + a e[t]: the offset settles at s / (1 - a)
    np.testing.assert_allclose(F.temporal_highpass(ramp, tau)[-1], -0.3 / (1 - a), rtol=1e-5)
    with pytest.raises(ValueError, match="time constant"):
        F.temporal_highpass(step, 0.0)


def _brute_force_padding(frames, n_buckets, multiple, min_size):
    """The least total padded frames over every split of the sorted padded lengths into at most
    ``n_buckets`` runs of at least ``min_size`` (cuts only between different lengths)."""
    padded = sorted(-(-f // multiple) * multiple for f in frames)
    n, best = len(padded), None
    for n_cuts in range(n_buckets):
        for cuts in itertools.combinations(range(1, n), n_cuts):
            ends = [0, *cuts, n]
            groups = [padded[a:b] for a, b in zip(ends, ends[1:])]
            if any(len(g) < min_size for g in groups) or any(g[-1] == h[0] for g, h in zip(groups, groups[1:])):
                continue
            cost = sum(len(g) * g[-1] for g in groups)
            best = cost if best is None else min(best, cost)
    return best


def test_make_normalizer_global_and_per_utterance_statistics():
    rng = np.random.default_rng(0)
    train = [rng.normal(3.0, 2.0, (n, 4)) for n in (5, 9, 13)]
    pooled = np.concatenate(ST.make_normalizer(train, "global")(train))  # pooled frames, not utterance means
    np.testing.assert_allclose(pooled.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(pooled.std(0), 1.0, atol=1e-4)
    other = [rng.normal(-1.0, 0.5, (7, 4))]
    want = (other[0] - np.concatenate(train).mean(0)) / np.concatenate(train).std(0)
    np.testing.assert_allclose(ST.make_normalizer(train)(other)[0], want, rtol=1e-4, atol=1e-4)
    for z in ST.make_normalizer(train, "utterance")(other + train):
        np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="expected norm 'global' or 'utterance'"):
        ST.make_normalizer(train, "speaker")


def test_padding_buckets_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(150):
        frames = [int(x) for x in rng.integers(1, 40, int(rng.integers(1, 9)))]
        k, min_size = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        b = S.make_buckets(frames, k, 3, min_size=min_size)
        assert sorted(int(i) for m in b.members for i in m) == list(range(len(frames)))
        assert len(b.members) <= k
        best = _brute_force_padding(frames, k, 3, min_size)
        if best is not None:
            assert sum(len(m) * n for m, n in zip(b.members, b.lengths)) == best
            assert all(len(m) >= min_size for m in b.members)
    # a long tail: fewer padded frames than equal-sized (quantile) buckets
    frames = list(rng.gamma(2.0, 150.0, 1000).astype(int) + 20)
    cost = lambda b: sum(len(m) * n for m, n in zip(b.members, b.lengths))  # noqa: E731
    assert cost(S.make_buckets(frames, 6, 3, min_size=16)) < cost(S.make_buckets(frames, 6, 3, method="quantile"))
    with pytest.raises(ValueError, match="method"):
        S.make_buckets(frames, 6, 3, method="sorted")


def test_buckets_baselines_and_vocab():
    frames = [5, 17, 9, 30, 12, 3, 22]
    b = S.make_buckets(frames, 3, 3, method="quantile")
    assert sorted(int(i) for m in b.members for i in m) == list(range(7))
    for members, length in zip(b.members, b.lengths):
        assert length % 3 == 0 and all(frames[i] <= length < frames[i] + 3 or frames[i] < length for i in members)
        assert length == -(-max(frames[i] for i in members) // 3) * 3
    hyps = S.baselines(["ab", "abcd", "abcdef"], [1.0, 1.0, 1.0], [2.0, 0.5], 2)  # 4 chars per second
    assert hyps == {"empty": ["", ""], "spaces": ["        ", "  "], "median_sentence": ["abcd", "abcd"]}
    v = S.Vocab(["ba", "c a"])
    assert v.symbols == ["", " ", "a", "b", "c"] and v.encode("abz") == [2, 3] and v.decode([3, 0, 2]) == "ba"


def test_model_loss_on_a_padded_batch_equals_each_utterance_alone():
    """Bucket padding (frames, labels, weight-0 rows) does not change the CTC loss."""
    cfg = AcousticConfig(stack=2, dropout=0.0, impl="scan")
    params = init_acoustic_model(jax.random.key(0), 4, 5, 4, stack=2, num_layers=1)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((n, 4)).astype(np.float32) for n in (9, 6)]
    labels = [[1, 2, 2], [3]]
    split = ST.Split(feats, ["", ""], labels, np.array([0.09, 0.06]))
    batch = ST.pad_batch(split, [0, 1], 12, 3, 5)
    loss, _ = jax.jit(make_ctc_loss(cfg))(params, batch, None)

    @jax.jit
    def alone(x, n, lab):
        logits, out_len = acoustic_logits(params, x[None], n[None], cfg)
        return ctc_loss(logits, out_len, lab[None], jnp.array([lab.shape[0]]))[0]

    total = 0.0
    for f, lab in zip(feats, labels):
        x = np.zeros((-(-len(f) // 2) * 2, 4), np.float32)
        x[: len(f)] = f
        total += float(alone(jnp.asarray(x), jnp.asarray(len(f)), jnp.asarray(lab)))
    assert float(loss) == pytest.approx(total / 4, rel=1e-5)


def test_map_classes_takes_layers_and_the_head_columns_of_the_same_symbols():
    source = init_acoustic_model(jax.random.key(0), 4, 5, 4, stack=2, num_layers=2)
    fresh = init_acoustic_model(jax.random.key(1), 4, 5, 5, stack=2, num_layers=2)
    old, new = ["", "a", "b", "c"], ["", "x", "c", "a", "y"]
    got, n = map_classes(source, fresh, old, new)
    assert n == 3
    for a, b in zip(jax.tree_util.tree_leaves(got.rnn), jax.tree_util.tree_leaves(source.rnn)):
        np.testing.assert_array_equal(a, b)
    for j, sym in enumerate(new):  # a plain loop over the new classes
        src, i = (source, old.index(sym)) if sym in old else (fresh, j)
        np.testing.assert_array_equal(got.w_out[:, j], src.w_out[:, i])
        assert float(got.b_out[j]) == float(src.b_out[i])
    with pytest.raises(ValueError, match="shaped like the new model"):
        map_classes(source, init_acoustic_model(jax.random.key(1), 4, 6, 5, stack=2, num_layers=2), old, new)
    with pytest.raises(ValueError, match="one symbol per class"):
        map_classes(source, fresh, old, new[:-1])


def _script():
    spec = importlib.util.spec_from_file_location("experiments_speech_ctc", ROOT / "experiments" / "speech_ctc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speech_ctc_quick_on_a_generated_manifest(tmp_path, capsys, monkeypatch):
    corpus = _write_corpus(tmp_path, 16, split_column=True)
    out = tmp_path / "out"
    with cli.fast_compile():
        argv = ["--quick", "--no-progress", "--manifest", str(corpus), "--out", str(out)]
        argv += ["--cache", str(tmp_path / "c")]
        _script().main([*argv, "--speed-perturb", "0.9,1.1"])
    data = results.load_metrics(out / "metrics.json")
    assert data["config"]["normalisation"] == S.NORMALISATION
    assert data["config"]["n_utterances"] == {"train": 8, "dev": 4, "test": 4}
    # two more copies of the training audio, at 0.9 and 1.1 times its speed (all long enough here)
    assert data["config"]["n_train_with_speeds"] == 3 * data["config"]["n_train_used"] == 24
    rows = {(r["model"], r["metric"], r["split"]): r["value"] for r in data["results"]}
    lm_model = f"beam_lm{data['config']['lm_order']}"
    for model in ("empty", "spaces", "median_sentence", "greedy", "beam", lm_model):
        for split in ("val", "test"):
            assert 0.0 <= rows[(model, "cer", split)] and 0.0 <= rows[(model, "wer", split)]
    assert rows[("empty", "cer", "test")] == 1.0 and ("greedy", "cer", "train") in rows
    assert data["updates"] == data["updates_planned"] == 6
    assert (out / "speech_ctc.png").stat().st_size > 0 and (out / "checkpoint").is_dir()
    assert "ref:" in (out / "samples.txt").read_text(encoding="utf-8")
    json.dumps(data)
    # the saved posteriors decode (best path, collapsed) to the greedy CER the run reported
    post = np.load(out / "posteriors.npz")
    chars = list(post["vocab"])
    bounds = np.cumsum([0, *post["test_lengths"]])
    hyps = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        best = post["test_log_probs"][a:b].argmax(-1)
        hyps.append("".join(chars[k - 1] for j, k in enumerate(best) if k and (j == 0 or k != best[j - 1])))
    assert len(post["test_refs"]) == len(post["test_lengths"]) == 4
    assert M.cer(list(post["test_refs"]), hyps) == pytest.approx(rows[("greedy", "cer", "test")])

    # another "language" (c written d) starting from this run: blank, space, a and b are carried over
    other = tmp_path / "other.tsv"
    other.write_text(corpus.read_text().replace("C", "D"))
    _script().main([*argv, "--manifest", str(other), "--out", str(tmp_path / "out2"), "--init-from", str(out)])
    data2 = results.load_metrics(tmp_path / "out2" / "metrics.json")
    assert data2["config"]["vocab"] == [" ", "a", "b", "d"] and data2["init_classes_mapped"] == 4
    # trained with that "language" too: its clips of this corpus's dev/test groups are left out
    monkeypatch.setattr(fillets, "load_fillets", lambda language: S.read_manifest(other))
    _script().main([*argv, "--out", str(tmp_path / "out4"), "--with-language", "nl", "--mask-bands"])
    data4 = results.load_metrics(tmp_path / "out4" / "metrics.json")
    extra_train = [c for c in S.read_manifest(other) if c.group == "train"]
    assert data4["config"]["n_train_other_languages"] == len(extra_train) == 8
    assert data4["config"]["vocab"] == [" ", "a", "b", "c", "d"] and data4["config"]["n_train_used"] == 8
    code = cli.run_main(
        _script().main, [*argv, "--out", str(tmp_path / "out3"), "--init-from", str(out), "--stack", "2"]
    )
    assert code == 2 and "expected --init-from a speech_ctc model with" in capsys.readouterr().err


def test_speech_ctc_bad_manifest_is_one_line_exit_code_2(tmp_path, capsys):
    code = cli.run_main(_script().main, ["--quick", "--manifest", str(tmp_path / "none.tsv"), "--out", str(tmp_path)])
    assert code == 2 and "expected an existing manifest" in capsys.readouterr().err
    for bad in ("1.0", "0.9,3"):  # the recorded speed is always used; factors past 2x are refused
        with pytest.raises(SystemExit) as exit_info:
            _script().parse(["--speed-perturb", bad])
        assert exit_info.value.code == 2 and "expected --speed-perturb factors in [0.5, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a mistyped folder is refused, not created
        _script().parse(["--init-from", str(tmp_path / "no_such_run")])
    assert exit_info.value.code == 2 and "expected --init-from to be the --out folder" in capsys.readouterr().err
    assert not (tmp_path / "no_such_run").exists()
    with pytest.raises(SystemExit) as exit_info:
        _script().parse(["--language", "nl", "--with-language", "nl"])
    assert exit_info.value.code == 2 and "expected --with-language other than --language nl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _script().parse(["--n-mels", "40", "--mask-bands", "--freq-width", "41"])
    assert (
        exit_info.value.code == 2 and "expected --freq-width in [0, 40] (mel bands), got 41" in capsys.readouterr().err
    )


def test_decoder_processes_give_the_texts_of_the_serial_search():
    """The beam searches spread over 2 worker processes equal ``beam_texts`` in this process, with and
    without the LM, in the utterances' order; and a bad worker count is refused."""
    from lstm_jax.speech.lm import CharNgramLM

    texts = ["ahoj", "ano ne", "nebo", "jo jo", "hej"]
    vocab = S.Vocab(texts)
    lm = CharNgramLM.train(texts, order=3)
    rng = np.random.default_rng(0)
    lps = [np.asarray(jax.nn.log_softmax(2.0 * rng.normal(size=(n, vocab.size)))) for n in (9, 3, 14, 1, 6, 11, 7)]
    with ST.Decoder(vocab, lm, workers=2) as dec:
        for w, b in ((0.0, 0.0), (0.7, 1.0)):
            want = ST.beam_texts(lps, vocab, beam=4, lm=lm, lm_weight=w, insertion_bonus=b)
            assert dec.texts(lps, beam=4, lm_weight=w, insertion_bonus=b) == want
    assert want != ST.beam_texts(lps, vocab, beam=4)  # the LM changed something: the check can fail
    with pytest.raises(ValueError, match="expected workers a positive int, got 0"):
        ST.Decoder(vocab, workers=0)
