"""The translation recipe (lstm_jax.tasks.translate), the Bible extraction (tasks.bible) and
``experiments/translate.py --quick`` on a generated toy language pair. Oracles: a toy pair
whose word-for-word dictionary is known (IBM Model 1 must recover it), hand-made TSV files,
sacrebleu's own values for identical text, and verses checked by hand in printed Bibles."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.datasets import DatasetError
from lstm_jax.tasks import bible, cli
from lstm_jax.tasks import translate as T

ROOT = Path(__file__).resolve().parents[1]
SRC_WORDS = "ka mo ri su te na po li ve zu ga bo".split()
TGT_WORDS = "dog cat sun moon tree river stone bird fish house road hill".split()


@pytest.fixture(autouse=True)
def _fast_compile():
    with cli.fast_compile():
        yield


def _toy_pairs(n=300, seed=0):
    """A deterministic toy language pair: the target is the source word by word through a fixed dictionary."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        idx = rng.integers(0, len(SRC_WORDS), rng.integers(3, 7))
        pairs.append((" ".join(SRC_WORDS[i] for i in idx), " ".join(TGT_WORDS[i] for i in idx)))
    return pairs


def _write_tsv(path, pairs, splits=None):
    lines = ["\t".join(p + ((splits[k],) if splits else ())) for k, p in enumerate(pairs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_ibm1_recovers_a_known_word_dictionary_and_identical_text_scores_100():
    pairs = _toy_pairs()
    table = T.fit_ibm1(pairs[:240])
    assert {s: table[s] for s in SRC_WORDS} == dict(zip(SRC_WORDS, TGT_WORDS))
    hyps = [T.ibm1_translate(table, s) for s, _ in pairs[240:]]
    sc = T.score(hyps, [t for _, t in pairs[240:]])
    assert sc["bleu"] == pytest.approx(100.0) and sc["chrf"] == pytest.approx(100.0)
    assert T.score([s for s, _ in pairs[240:]], [t for _, t in pairs[240:]])["bleu"] < 5.0
    assert T.ibm1_translate({"casa": "house"}, "Casa, casa.") == "House, house."


def test_tsv_corpus_splits_and_errors(tmp_path):
    pairs = _toy_pairs(30)
    names = ["train"] * 20 + ["dev"] * 5 + ["test"] * 5
    c = T.tsv_corpus(str(_write_tsv(tmp_path / "three.tsv", pairs, names)))
    assert (c.train, c.val, c.test) == (pairs[:20], pairs[20:25], pairs[25:])
    a = T.tsv_corpus(str(_write_tsv(tmp_path / "two.tsv", pairs)), seed=1)
    b = T.tsv_corpus(str(tmp_path / "two.tsv"), seed=1)
    assert a == b and (len(a.train), len(a.val), len(a.test)) == (24, 3, 3)
    assert sorted(a.train + a.val + a.test) == sorted(pairs)
    (tmp_path / "bad.tsv").write_text("a\tb\tc\td\n" * 12, encoding="utf-8")
    with pytest.raises(DatasetError, match="2 or 3 tab-separated columns"):
        T.tsv_corpus(str(tmp_path / "bad.tsv"))
    with pytest.raises(DatasetError, match="no file"):
        T.tsv_corpus(str(tmp_path / "missing.tsv"))
    capped = T.cap_words(c, 4)
    assert all(len(s.split()) <= 4 and len(t.split()) <= 4 for s, t in capped.train)


def test_batches_are_bucketed_and_shifted_by_one():
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 50, n).astype(np.int32) for n in rng.integers(1, 40, 200)]
    tgt = [rng.integers(4, 50, n).astype(np.int32) for n in rng.integers(1, 40, 200)]
    batches = T.Batches(src, tgt, tokens=256, seed=0)
    seen = set()
    for step in range(30):
        b = batches(step)
        width = b["src"].shape[1]
        assert width in T.BUCKETS and b["tgt_in"].shape == b["tgt_out"].shape == (b["src"].shape[0], width)
        for k in range(b["src"].shape[0]):
            n = b["tgt_len"][k]
            assert b["tgt_in"][k, 0] == T.BOS and b["tgt_out"][k, n - 1] == T.EOS
            np.testing.assert_array_equal(b["tgt_in"][k, 1:n], b["tgt_out"][k, : n - 1])
            assert (b["tgt_out"][k, n:] == T.PAD).all() and (b["src"][k, b["src_len"][k] :] == T.PAD).all()
            seen.add(tuple(b["src"][k, : b["src_len"][k]]))
    assert len(seen) > 100


def test_translate_quick_on_a_toy_tsv(tmp_path):
    spec = importlib.util.spec_from_file_location("experiments_translate", ROOT / "experiments" / "translate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tsv = _write_tsv(tmp_path / "toy.tsv", _toy_pairs())
    out = tmp_path / "out"
    script.main(["--quick", "--tsv", str(tsv), "--out", str(out), "--no-progress"])
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {(r["model"], r["metric"], r["split"]): r["value"] for r in metrics["results"]}
    for model in ("copy", "ibm1", "lstm_greedy", "lstm_beam2"):
        for metric in ("bleu", "chrf"):
            for split in ("val", "test"):
                assert 0.0 <= rows[(model, metric, split)] <= 100.0 + 1e-6
    assert rows[("ibm1", "bleu", "test")] == pytest.approx(100.0)  # the toy pair is word for word
    assert metrics["updates"] == metrics["updates_planned"] == 40
    assert [h["step"] for h in metrics["history"]][-1] == 40 and "dev_bleu" in metrics["history"][-1]
    for name in ("attention.png", "samples.txt", "spm_src.model", "spm_tgt.model", "checkpoint"):
        assert (out / name).exists(), name
    assert "reference: " in (out / "samples.txt").read_text()


def _sword_installed() -> bool:
    return all(
        os.path.exists(f"/usr/share/sword/mods.d/{m}.conf")
        or os.path.exists(f"/usr/share/sword/mods.d/{m.lower()}.conf")
        for m in (bible.EN_MODULE, bible.ES_MODULE)
    )


@pytest.mark.skipif(
    not _sword_installed(), reason="needs apt-get install sword-text-kjv sword-text-sparv python3-sword"
)
def test_bible_extraction_known_verses_and_cache(tmp_path):
    pairs = bible.bible_pairs(str(tmp_path))
    by_ref = {p.ref: p for p in pairs}
    gen = by_ref["Gen.1.1"]
    assert gen.en == "In the beginning God created the heaven and the earth."
    assert gen.es == "En el principio crió Dios los cielos y la tierra."  # drop capital 'EN' re-cased
    ps = by_ref["Ps.23.1"]  # the KJV Psalm title is kept: the Spanish verse 1 has it too
    assert ps.en == "A Psalm of David. The LORD is my shepherd; I shall not want."
    assert ps.es.startswith("Salmo de David.") and ps.es.endswith("es mi pastor; nada me faltará.")
    john = by_ref["John.3.16"]
    assert john.en.startswith("For God so loved the world, that he gave his only begotten Son,")
    assert john.es.startswith("Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito,")
    assert "<" not in john.en + john.es and "strong" not in john.en
    jonah = by_ref["Jonah.2.1"]  # the Spanish module numbers this verse 2:2
    assert jonah.es_ref == "Jonah.2.2"
    assert jonah.en.startswith("Then Jonah prayed unto the LORD his God") and jonah.es.startswith("Y oró Jonás")
    assert 30_500 <= len(pairs) <= 31_102
    counts = {s: sum(bible.split_of(p.book) == s for p in pairs) for s in ("train", "val", "test")}
    assert 2_000 <= counts["test"] <= 2_100 and 1_150 <= counts["val"] <= 1_250
    assert bible.bible_pairs(str(tmp_path), verbose=False) == pairs  # the cached copy reads back equal
