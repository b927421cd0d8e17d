"""Experiment plumbing (lstm_jax.tasks) against independent computations, every script
end to end in --quick mode (outputs exist, metrics finite, baselines present), bad command
lines (one line on stderr, exit code 2), and the quickstart notebook."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax
from lstm_jax import baselines as B
from lstm_jax import checkpoint, datasets, train
from lstm_jax.tasks import (
    char_lm,
    classify,
    cli,
    compare,
    forecast,
    loops,
    results,
    seqmodel,
    text,
)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


@pytest.fixture(autouse=True)
def _fast_compile():
    """These tests are dominated by compiling many small programs: skip XLA's optimisation passes."""
    with cli.fast_compile():
        yield


def _script(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_apply_seq_model_readouts_match_layer_outputs(cell):
    params = seqmodel.init_seq_model(jax.random.key(0), cell, 3, 5, 2, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (3, 6, 3))
    lengths = jnp.array([6, 4, 1])
    forward = lstm_jax.lstm if cell == "lstm" else lstm_jax.gru
    ys, _ = forward(params.rnn, xs, lengths=lengths)  # [b, t, 2*5]
    ys, L = np.asarray(ys), np.asarray(lengths)
    head = lambda f: f @ np.asarray(params.w_out) + np.asarray(params.b_out)  # noqa: E731
    # final: forward half at the last valid step, backward half at step 0 (it ends there)
    final = np.stack([np.concatenate([ys[i, L[i] - 1, :5], ys[i, 0, 5:]]) for i in range(3)])
    mean = np.stack([ys[i, : L[i]].mean(0) for i in range(3)])
    mx = np.stack([ys[i, : L[i]].max(0) for i in range(3)])
    for readout, feats in (("final", final), ("mean", mean), ("max", mx)):
        got = seqmodel.apply_seq_model(params, xs, lengths=lengths, readout=readout)
        chex.assert_trees_all_close(got, head(feats), atol=1e-5, rtol=1e-5)
    seq = seqmodel.apply_seq_model(params, xs, lengths=lengths, readout="sequence")
    chex.assert_shape(seq, (3, 6, 2))
    with pytest.raises(ValueError, match="expected readout"):
        seqmodel.apply_seq_model(params, xs, readout="last")


def test_apply_seq_model_embedding_equals_feeding_vectors():
    params = seqmodel.init_seq_model(jax.random.key(0), "lstm", 4, 6, 3, vocab_size=11, num_layers=2)
    ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    got = seqmodel.apply_seq_model(params, ids)
    plain = params._replace(embed=None)
    chex.assert_trees_all_close(got, seqmodel.apply_seq_model(plain, params.embed[ids]), atol=1e-6)
    with pytest.raises(TypeError, match="expected int token ids"):
        seqmodel.apply_seq_model(params, jnp.ones((2, 5, 4)))


def test_ensemble_loss_is_mean_of_member_losses_and_members_are_independent():
    init = lambda k: seqmodel.init_seq_model(k, "lstm", 2, 4, 1)  # noqa: E731
    params = seqmodel.init_ensemble(init, jax.random.key(0), 3)
    apply = lambda p, x, rng: seqmodel.apply_seq_model(p, x, dropout_key=rng)  # noqa: E731
    loss_fn = seqmodel.make_ensemble_regression_loss(apply)
    batch = {"x": jax.random.normal(jax.random.key(1), (5, 4, 2)), "y": jax.random.normal(jax.random.key(2), (5, 1))}
    member = lambda i: jax.tree_util.tree_map(lambda a: a[i], params)  # noqa: E731
    single = lambda p: jnp.mean((seqmodel.apply_seq_model(p, batch["x"]) - batch["y"]) ** 2)  # noqa: E731
    loss, metrics = loss_fn(params, batch, None)
    chex.assert_trees_all_close(loss, np.mean([single(member(i)) for i in range(3)]), rtol=1e-6)
    mean_pred = np.mean([seqmodel.apply_seq_model(member(i), batch["x"]) for i in range(3)], axis=0)
    chex.assert_trees_all_close(metrics["ens_mse"], np.mean((mean_pred - batch["y"]) ** 2), rtol=1e-5)
    grads = jax.grad(lambda p: loss_fn(p, batch, None)[0])(params)
    expected = jax.tree_util.tree_map(lambda g: g / 3, jax.grad(single)(member(1)))
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda g: g[1], grads), expected, atol=1e-6)


# --------------------------------------------------------------------------- data helpers
def test_forecast_data_windows_match_a_loop():
    n = 80
    dates = np.arange(np.datetime64("2001-01-01"), np.datetime64("2001-01-01") + n)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, 2)).astype(np.float32)
    observed = np.ones(n, bool)
    observed[40] = False
    table = datasets.DailyTable(dates, values, ("a", "b"), "a", observed, "toy", "")
    d = forecast.forecast_data(table, window=3, test_days=10, val_days=10)
    feats = np.concatenate([values, forecast.day_of_year_features(dates)], axis=1)
    mean, std = feats[:60].mean(0), feats[:60].std(0)
    expected_targets = [r for r in range(3, 60) if not (r - 3 <= 40 <= r)]
    assert list(d.dates["train"]) == [dates[r] for r in expected_targets]
    for r in expected_targets[:5] + expected_targets[-2:]:
        k = expected_targets.index(r)
        chex.assert_trees_all_close(d.train["x"][k], ((feats[r - 3 : r] - mean) / std).astype(np.float32), atol=1e-5)
        chex.assert_trees_all_close(d.raw["train"]["y"][k], values[r, 0], atol=1e-6)
    assert len(d.test["x"]) == 10 and d.dates["test"][-1] == dates[-1]
    chex.assert_trees_all_close(d.test["y"][:, 0] * d.y_std + d.y_mean, d.raw["test"]["y"], atol=1e-4)
    with pytest.raises(datasets.DatasetError, match="training days"):
        forecast.forecast_data(table, window=3, test_days=40, val_days=30)


def test_stratified_split_partitions_each_class():
    labels = np.repeat(np.arange(4), [10, 20, 3, 1])
    keep, held = classify.stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=4)
    np.testing.assert_array_equal(counts, [2, 4, 1, 0])  # at least one held out, never the only one


def test_text_helpers():
    assert text.tokenize("Great <br />taste!! Don't buy") == ["great", "taste", "!", "!", "don't", "buy"]
    vocab = text.build_vocab([["a", "b", "a"], ["a", "c", "b"]], min_count=2)
    assert vocab.words == ("<pad>", "<unk>", "a", "b")
    ids, lengths = text.encode_texts([["a", "zz", "b"], [], ["b"] * 9], vocab, max_len=4)
    np.testing.assert_array_equal(ids, [[2, 1, 3, 0], [1, 0, 0, 0], [3, 3, 3, 3]])
    np.testing.assert_array_equal(lengths, [3, 1, 4])


def test_ppmi_svd_vectors_span_the_top_singular_directions():
    corpus = [
        ["the", "cat", "sat", "on", "the", "mat"],
        ["the", "dog", "sat", "on", "the", "log"],
        ["a", "cat", "and", "a", "dog"],
    ] * 3
    vocab = text.build_vocab(corpus, min_count=1)
    vectors = text.ppmi_svd_vectors(corpus, vocab, 3, window=2)
    assert vectors.shape == (len(vocab.words), 3) and not vectors[0].any()
    # dense reference: PPMI with the same smoothing, exact SVD
    idx = vocab.index
    v = len(vocab.words)
    counts = np.zeros((v, v))
    for toks in corpus:
        ids = [idx[t] for t in toks]
        for k in (1, 2):
            for a, b in zip(ids[:-k], ids[k:]):
                counts[a, b] += 1
                counts[b, a] += 1
    total, rows = counts.sum(), counts.sum(1)
    ctx = rows**0.75 / (rows**0.75).sum() * total
    with np.errstate(divide="ignore"):
        pmi = np.log(counts * total / (rows[:, None] * ctx[None, :] + 1e-12))
    ppmi = np.where(counts > 0, np.maximum(pmi, 0.0), 0.0)
    u, s, _ = np.linalg.svd(ppmi)
    ref = u[:, :3] * s[:3]
    ref[0] = 0
    # same subspace and Gram matrix up to the global RMS scale
    scale = np.sqrt(np.mean(ref**2))
    gram = lambda a: a @ a.T  # noqa: E731
    chex.assert_trees_all_close(gram(vectors.astype(np.float64)), gram(ref / scale), atol=2e-3)


def test_char_lm_helpers_against_whole_sequence_computation():
    vocab = char_lm.CharVocab.of("hello world")
    assert vocab.decode(vocab.encode("hold owl")) == "hold owl" and vocab.encode("z")[0] == 0
    params = seqmodel.init_seq_model(
        jax.random.key(0), "lstm", 4, 8, len(vocab.chars), num_layers=2, vocab_size=len(vocab.chars)
    )
    ids = np.random.default_rng(0).integers(0, len(vocab.chars), 2 * 15 + 1).astype(np.int32)
    got = char_lm.lm_bits_per_char(params, ids, streams=2, chunk=5)
    # reference: each stream read in one call, no chunking
    streams = np.stack([ids[:15], ids[15:30]])
    targets = np.stack([ids[1:16], ids[16:31]])
    logp = jax.nn.log_softmax(seqmodel.apply_seq_model(params, jnp.asarray(streams), readout="sequence"), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1).mean()
    np.testing.assert_allclose(got, nll / np.log(2.0), rtol=1e-5)
    # per block (the bootstrap's units): stream i, chunk c = targets [i, 5c : 5c + 5]
    tok = -np.take_along_axis(np.asarray(logp), targets[..., None], axis=-1)[..., 0] / np.log(2.0)
    blocks = char_lm.lm_block_bits(params, ids, streams=2, chunk=5)
    np.testing.assert_allclose(blocks, tok.reshape(2, 3, 5).mean(-1), rtol=1e-5)
    model = B.fit_ngram(ids[:20], len(vocab.chars), order=2, smoothing="witten_bell")
    bits = -B.ngram_log_probs(model, ids) / np.log(2.0)
    loop = [[bits[i * 15 + c * 5 + 1 : i * 15 + c * 5 + 6].mean() for c in range(3)] for i in range(2)]
    np.testing.assert_allclose(char_lm.ngram_block_bits(model, ids, streams=2, chunk=5), loop, rtol=1e-12)
    batch = char_lm.lm_random_windows(ids, 3, 6, np.random.default_rng(1))
    np.testing.assert_array_equal(batch["x"][:, 1:], batch["y"][:, :-1])
    text = char_lm.lm_sample(params, vocab, "he", 7, 0.8, jax.random.key(0))
    assert text.startswith("he") and len(text) == 9


# --------------------------------------------------------------------------- training loops
def _toy_problem():
    params = seqmodel.init_seq_model(jax.random.key(0), "gru", 2, 4, 1)

    def loss_fn(p, batch, rng):
        loss = jnp.mean((seqmodel.apply_seq_model(p, batch["x"]) - batch["y"]) ** 2)
        return loss, {"mse": loss}

    sample = lambda k: datasets.adding_problem(k, 8, 6)  # noqa: E731
    return params, loss_fn, sample


def test_train_generated_is_independent_of_chunking_and_matches_a_python_loop():
    params, loss_fn, sample = _toy_problem()
    opt = train.make_optimizer(1e-2)
    key = jax.random.key(3)
    p5, hist5 = loops.train_generated(loss_fn, params, opt, sample, steps=10, key=key, chunk=5, progress=False)
    p10, _ = loops.train_generated(loss_fn, params, opt, sample, steps=10, key=key, chunk=10, progress=False)
    chex.assert_trees_all_close(p5, p10, atol=1e-6)
    data_key, rng_key = jax.random.split(key)
    state = train.init_train_state(params, opt, rng_key)
    step = jax.jit(train.make_train_step(loss_fn, opt))
    for s in range(10):
        state, _ = step(state, sample(jax.random.fold_in(data_key, s)))
    chex.assert_trees_all_close(p5, state.params, atol=1e-6)
    assert [h["step"] for h in hist5] == [5, 10]


def test_train_steps_until_and_monitor():
    params, loss_fn, sample = _toy_problem()
    opt = train.make_optimizer(1e-2)
    batches = [sample(jax.random.key(i)) for i in range(30)]
    calls = []

    def eval_fn(p):
        calls.append(1)
        return {"score": float(len(calls))}  # increasing: 'min' keeps the first evaluation

    run = loops.train_steps(
        loss_fn,
        params,
        opt,
        lambda s: batches[s],
        steps=30,
        eval_fn=eval_fn,
        eval_every=5,
        monitor="score",
        until=lambda r: r["score"] >= 3,
        progress=False,
    )
    assert [h["step"] for h in run.history] == [5, 10, 15]
    # an `until` stop is the intended end of a run, not a cut by the clock
    assert (run.steps, run.steps_planned, run.stopped_early) == (15, 30, False)
    state = train.init_train_state(params, opt, jax.random.key(0))
    step = jax.jit(train.make_train_step(loss_fn, opt))
    for s in range(5):
        state, _ = step(state, batches[s])
    chex.assert_trees_all_close(run.params, state.params, atol=1e-6)


def test_train_steps_runs_its_step_budget_and_reports_a_wall_clock_cut():
    params, loss_fn, sample = _toy_problem()
    opt = train.make_optimizer(1e-2)
    batches = [sample(jax.random.key(i)) for i in range(12)]
    full = loops.train_steps(loss_fn, params, opt, lambda s: batches[s], steps=12, progress=False)
    assert (full.steps, full.steps_planned, full.stopped_early) == (12, 12, False)
    assert full.history[-1]["step"] == 12
    roomy = loops.train_steps(loss_fn, params, opt, lambda s: batches[s], steps=12, max_seconds=1e6, progress=False)
    assert (roomy.steps, roomy.stopped_early) == (12, False)
    chex.assert_trees_all_close(roomy.params, full.params, atol=0)
    # a cap of 0 s stops after the first (compiling) step, and says so
    cut = loops.train_steps(loss_fn, params, opt, lambda s: batches[s], steps=12, max_seconds=0.0, progress=False)
    assert (cut.steps, cut.steps_planned, cut.stopped_early) == (1, 12, True)
    assert [h["step"] for h in cut.history] == [1]
    state = train.init_train_state(params, opt, jax.random.key(0))
    state, _ = jax.jit(train.make_train_step(loss_fn, opt))(state, batches[0])
    chex.assert_trees_all_close(cut.params, state.params, atol=1e-6)


# --------------------------------------------------------------------------- results
def test_results_round_trip_table_and_summary(tmp_path):
    res = results.Results("weather_forecast", {"cell": "lstm"}, command="python experiments/weather_forecast.py")
    res.add("seattle", "lstm", "rmse", "test", 2.5, ensemble=2)
    res.add("seattle", "persistence", "rmse", "test", 2.9)
    res.add("seattle", "linear_ar", "rmse", "test", 2.7)
    path = res.write(tmp_path)
    data = results.load_metrics(path)
    assert data["results"][0] == {
        "task": "weather_forecast",
        "dataset": "seattle",
        "model": "lstm",
        "metric": "rmse",
        "split": "test",
        "value": 2.5,
        "ensemble": 2,
    }
    assert "persistence" in res.table() and res.value("linear_ar", "rmse") == 2.7
    gru = json.loads(json.dumps(data))
    gru["results"][0]["model"] = "gru"
    gru["results"][0]["value"] = 2.6
    rows = compare.summarize_runs([data, gru])
    assert len(rows) == 1 and rows[0]["lstm"] == 2.5 and rows[0]["gru"] == 2.6
    assert rows[0]["baseline"] == "linear_ar 2.7"
    table = compare.cells_markdown(rows)
    assert "| weather_forecast | seattle | rmse | linear_ar 2.7 | 2.5 | 2.6 |" in table
    with pytest.raises(ValueError, match="expected split"):
        res.add("seattle", "lstm", "rmse", "holdout", 1.0)
    (tmp_path / "bad.json").write_text(json.dumps({"config": {}, "results": []}))
    with pytest.raises(ValueError, match="expected key 'wall_time_s'"):
        results.load_metrics(tmp_path / "bad.json")


def test_run_main_turns_data_errors_into_exit_code_2(capsys):
    def main(argv):
        raise datasets.DatasetError("expected a target column named 'x', got columns ['a']")

    assert cli.run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a target column" in err


# --------------------------------------------------------------------------- scripts, --quick
def _check_outputs(out, task, figures, baselines, models):
    data = results.load_metrics(out / "metrics.json")
    assert data["task"] == task and data["wall_time_s"] > 0
    assert all(math.isfinite(r["value"]) for r in data["results"])
    found = {r["model"] for r in data["results"]}
    assert set(baselines) <= found and set(models) <= found, found
    for fig in figures:
        assert (out / fig).stat().st_size > 1000
    assert any((out / "checkpoint").iterdir())
    return data


def test_weather_forecast_quick(tmp_path, capsys):
    _script("weather_forecast").main(["--quick", "--no-progress", "--out", str(tmp_path)])
    data = _check_outputs(
        tmp_path, "weather_forecast", ["forecast.png"], ["persistence", "climatology", "linear_ar"], ["lstm"]
    )
    assert {r["metric"] for r in data["results"]} >= {"rmse", "mae"}
    assert "persistence" in capsys.readouterr().out
    like = seqmodel.init_ensemble(lambda k: seqmodel.init_seq_model(k, "lstm", 6, 16, 1), jax.random.key(0), 2)
    params, _ = checkpoint.restore(tmp_path / "checkpoint", like)
    assert jax.tree_util.tree_leaves(params)[0].shape[0] == 2  # ensemble members


def test_weather_forecast_quick_gru_on_a_user_csv(tmp_path):
    import pandas as pd

    n = 400
    t = np.arange(n)
    pd.DataFrame(
        {
            "when": pd.date_range("2000-01-01", periods=n).astype(str),
            "high": 20 + 8 * np.sin(2 * np.pi * t / 365) + np.random.default_rng(0).normal(size=n),
            "low": 10 + 6 * np.sin(2 * np.pi * t / 365),
        }
    ).to_csv(tmp_path / "w.csv", index=False)
    out = tmp_path / "out"
    _script("weather_forecast").main(
        [
            "--quick",
            "--no-progress",
            "--cell",
            "gru",
            "--csv",
            str(tmp_path / "w.csv"),
            "--target",
            "high",
            "--date-col",
            "when",
            "--out",
            str(out),
        ]
    )
    data = _check_outputs(out, "weather_forecast", ["forecast.png"], ["persistence", "linear_ar"], ["gru"])
    assert data["config"]["test_days"] == 80  # 20 % of a CSV


def test_long_range_quick(tmp_path):
    _script("long_range").main(["--quick", "--no-progress", "--out", str(tmp_path)])
    data = _check_outputs(
        tmp_path,
        "long_range",
        ["long_range.png", "gradients.png"],
        ["mean_predictor", "chance"],
        ["lstm", "gru", "rnn"],
    )
    assert {r["dataset"] for r in data["results"]} == {"adding", "temporal_order"}


def test_long_range_seeds_rows_and_summary(tmp_path):
    script = _script("long_range")
    script.main(["--quick", "--no-progress", "--cell", "lstm", "--tasks", "adding", "--out", str(tmp_path / "one")])
    script.main(
        [
            "--quick",
            "--no-progress",
            "--cell",
            "lstm",
            "--tasks",
            "adding",
            "--seeds",
            "3",
            "--out",
            str(tmp_path / "three"),
        ]
    )
    one = results.load_metrics(tmp_path / "one" / "metrics.json")
    three = results.load_metrics(tmp_path / "three" / "metrics.json")
    per_seed = [r for r in three["results"] if r["model"] == "lstm" and "seed" in r]
    summary = [r for r in three["results"] if r["model"] == "lstm" and "seed" not in r]
    assert [r["seed"] for r in per_seed] == [0, 1, 2] and len(summary) == 1
    # the first of the seeds is the single-seed run: same init, data and test set
    (single,) = [r for r in one["results"] if r["model"] == "lstm"]
    np.testing.assert_allclose(per_seed[0]["value"], single["value"], rtol=1e-6)
    assert len({r["value"] for r in per_seed}) == 3  # the other seeds train differently
    values = [r["value"] for r in per_seed]
    assert summary[0]["value"] == pytest.approx(float(np.median(values)))
    assert summary[0]["solved_runs"] == sum(v < 0.01 for v in values) and summary[0]["seeds"] == 3
    # the cell table takes the summary row, not the last seed's
    (row,) = compare.summarize_runs([three])
    assert row["lstm"] == pytest.approx(summary[0]["value"])
    assert row["lstm_solved_runs"] == (summary[0]["solved_runs"], 3)
    assert "median of 3" in compare.cells_markdown([row], cells=["lstm"])


def test_speaker_id_quick(tmp_path):
    _script("speaker_id").main(["--quick", "--no-progress", "--out", str(tmp_path)])
    _check_outputs(tmp_path, "speaker_id", ["confusion.png"], ["majority_class", "1nn_dtw", "1nn_euclidean"], ["lstm"])


def test_handwriting_quick(tmp_path):
    _script("handwriting").main(["--quick", "--no-progress", "--bidirectional", "--out", str(tmp_path)])
    _check_outputs(tmp_path, "handwriting", ["handwriting.png"], ["majority_class", "svc_pixels"], ["lstm"])


def test_char_lm_quick(tmp_path, capsys):
    _script("char_lm").main(["--quick", "--no-progress", "--out", str(tmp_path)])
    data = _check_outputs(tmp_path, "char_lm", ["char_lm.png"], ["5gram_wb", "5gram_kn"], ["lstm"])
    assert "temperature 0.8" in (tmp_path / "samples.txt").read_text(encoding="utf-8")
    # no wall-clock cap by default: the whole update budget runs (--quick: 10 windows of 2 chunks)
    assert (data["stopped_early"], data["updates"], data["updates_planned"]) == (False, 20, 20)
    (row,) = [r for r in data["results"] if r["model"] == "lstm"]
    assert row["updates"] == 20 and data["history"][-1]["updates"] == 20
    assert "STOPPED EARLY" not in capsys.readouterr().out


def test_char_lm_wall_clock_cap_that_cuts_the_run_is_reported(tmp_path, capsys):
    _script("char_lm").main(["--quick", "--no-progress", "--minutes", "1e-9", "--out", str(tmp_path)])
    data = results.load_metrics(tmp_path / "metrics.json")
    assert data["stopped_early"] is True and data["updates_planned"] == 20
    assert data["updates"] < 20 and data["updates"] % 2 == 0  # whole windows of 2 chunks
    (row,) = [r for r in data["results"] if r["model"] == "lstm"]
    assert row["updates"] == data["updates"] == data["history"][-1]["updates"]
    out = capsys.readouterr().out
    assert "STOPPED EARLY" in out and f"{data['updates']} of 20 planned updates" in out


def test_compare_cells_budgets_are_updates_not_minutes():
    reduced = _script("compare_cells").REDUCED
    assert not any("--minutes" in flags for flags in reduced.values())
    assert "--steps" in reduced["char_lm"]


def test_sentiment_quick(tmp_path):
    _script("sentiment").main(["--quick", "--no-progress", "--cell", "gru", "--out", str(tmp_path)])
    _check_outputs(tmp_path, "sentiment", ["sentiment.png"], ["majority_class", "tfidf_logreg"], ["gru"])


def test_compare_cells_collects_a_table(tmp_path):
    for cell, value in (("lstm", 0.98), ("gru", 0.97)):
        res = results.Results("speaker_id", {"cell": cell}, command=f"python experiments/speaker_id.py --cell {cell}")
        res.add("JapaneseVowels", cell, "accuracy", "test", value)
        res.add("JapaneseVowels", "1nn_dtw", "accuracy", "test", 0.949)
        res.write(tmp_path / "runs" / cell)
    out = tmp_path / "table"
    _script("compare_cells").main(["--collect", str(tmp_path / "runs"), "--out", str(out), "--no-progress"])
    table = (out / "cells.md").read_text()
    assert "| speaker_id | JapaneseVowels | accuracy | 1nn_dtw 0.949 | 0.98 | 0.97 |" in table
    assert (out / "cells.png").stat().st_size > 1000


def test_compare_cells_quick_runs_both_cells(tmp_path):
    _script("compare_cells").main(["--quick", "--no-progress", "--tasks", "weather_forecast", "--out", str(tmp_path)])
    for cell in ("lstm", "gru"):
        _check_outputs(
            tmp_path / "weather_forecast" / cell, "weather_forecast", ["forecast.png"], ["linear_ar"], [cell]
        )
    table = (tmp_path / "cells.md").read_text()
    assert "| weather_forecast | seattle | rmse | linear_ar 2.696 |" in table
    assert results.load_metrics(tmp_path / "metrics.json")["task"] == "compare_cells"


# --------------------------------------------------------------------------- bad command lines
BAD_INPUT = [
    ("weather_forecast", ["--csv", "{csv}", "--target", "nope"], "expected a target column named 'nope'"),
    ("weather_forecast", ["--csv", "{csv}", "--target", "note"], "expected a numeric target column 'note'"),
    ("weather_forecast", ["--dataset", "paris"], "expected dataset in"),
    ("speaker_id", ["--dataset", "NoSuchSet"], "expected a data set bundled with sktime"),
    ("speaker_id", ["--ts-train", "{missing}", "--ts-test", "{missing}"], "expected an existing .ts file"),
    ("handwriting", ["--dataset", "kanji"], "expected --dataset in"),
    ("char_lm", ["--text-file", "{missing}"], "expected an existing text file"),
    ("char_lm", ["--minutes", "0"], "expected --minutes > 0, got 0.0"),
    ("long_range", ["--lengths", "5"], "expected every --lengths value >= 20"),
    ("long_range", ["--seeds", "0"], "argument --seeds: expected an integer >= 1, got 0"),
    ("sentiment", ["--readout", "last"], "invalid choice"),
    ("compare_cells", ["--collect", "{empty}"], "expected metrics.json files"),
]


def _bad_args(tmp_path, extra):
    import pandas as pd

    csv = tmp_path / "w.csv"
    pd.DataFrame({"t": np.arange(50.0), "note": ["x"] * 50}).to_csv(csv, index=False)
    (tmp_path / "empty").mkdir(exist_ok=True)
    fill = dict(csv=csv, missing=tmp_path / "none.txt", empty=tmp_path / "empty")
    return [a.format(**fill) for a in extra] + ["--out", str(tmp_path / "out")]


@pytest.mark.parametrize("script, extra, message", BAD_INPUT)
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys, script, extra, message):
    module = _script(script)
    try:
        code = cli.run_main(module.main, _bad_args(tmp_path, extra))
    except SystemExit as e:  # argparse errors exit from inside main
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert message in err


@pytest.mark.parametrize("script, extra, message", [BAD_INPUT[1], BAD_INPUT[-2]])
def test_bad_input_from_the_shell(tmp_path, script, extra, message):
    """The same through a real process: exit status 2 and one stderr line, no traceback."""
    args = [sys.executable, str(EXPERIMENTS / f"{script}.py")] + _bad_args(tmp_path, extra)
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert message in done.stderr


# --------------------------------------------------------------------------- notebook
def test_quickstart_notebook_executes():
    import nbclient
    import nbformat

    nb = nbformat.read(EXPERIMENTS / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "LSTM RMSE" in text and "persistence RMSE" in text


@pytest.mark.parametrize("impl", ["fused", "auto"])
def test_lm_chunk_loss_fused_impl_equals_scan_value_grads_and_carry(impl):
    # the fused layer behind --impl must give the scan path's loss, gradients and carried state
    params = seqmodel.init_seq_model(jax.random.key(0), "lstm", 4, 8, 6, num_layers=2, vocab_size=6)
    ids = jax.random.randint(jax.random.key(1), (3, 9), 0, 6)
    piece = {"x": ids[:, :-1], "y": ids[:, 1:]}
    carry = jax.tree_util.tree_map(lambda s: 0.3 * jnp.ones_like(s), char_lm.lm_zero_state(params, 3))

    def run(which):
        fn = lambda p: char_lm.lm_chunk_loss(p, carry, piece, None, impl=which)  # noqa: E731
        (loss, (state, _)), grads = jax.value_and_grad(fn, has_aux=True)(params)
        return loss, state, grads

    chex.assert_trees_all_close(run(impl), run("scan"), atol=1e-5)


def test_lm_chunk_loss_dropout_only_with_a_key_and_matches_apply_seq_model():
    # dropout > 0 without a key is the deterministic loss; with a key it is apply_seq_model's dropout
    params = seqmodel.init_seq_model(jax.random.key(0), "lstm", 4, 8, 6, num_layers=2, vocab_size=6)
    ids = jax.random.randint(jax.random.key(1), (3, 9), 0, 6)
    piece = {"x": ids[:, :-1], "y": ids[:, 1:]}
    carry = char_lm.lm_zero_state(params, 3)
    plain = char_lm.lm_chunk_loss(params, carry, piece, None)[0]
    np.testing.assert_allclose(char_lm.lm_chunk_loss(params, carry, piece, None, dropout=0.5)[0], plain, rtol=1e-6)
    key = jax.random.key(2)
    noisy = char_lm.lm_chunk_loss(params, carry, piece, key, dropout=0.5)[0]
    logits = seqmodel.apply_seq_model(
        params, piece["x"], readout="sequence", initial_state=carry, dropout=0.5, dropout_key=key
    )
    ref = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), piece["y"][..., None], axis=-1))
    np.testing.assert_allclose(noisy, ref, rtol=1e-5)
    assert abs(float(noisy) - float(plain)) > 1e-4


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("name", sorted(p.stem for p in EXPERIMENTS.glob("*.py")))
def test_every_experiment_takes_seeds(name):
    # (anomaly's --seeds are its injected-protocol seeds; compare_cells passes it to each task)
    assert _script(name).parse(["--seeds", "3"]).seeds == 3


def test_speaker_id_quick_trains_two_seeds_in_one_program(tmp_path):
    _script("speaker_id").main(["--quick", "--no-progress", "--seeds", "2", "--out", str(tmp_path)])
    data = _check_outputs(tmp_path, "speaker_id", ["confusion.png"], ["1nn_dtw"], ["lstm", "lstm_ensemble"])
    rows = [r for r in data["results"] if r["model"] == "lstm" and r["split"] == "test"]
    assert sorted(r["seed"] for r in rows if not r.get("summary")) == [0, 1]
    (summary,) = [r for r in rows if r.get("summary")]
    assert summary["value"] == pytest.approx(np.mean([r["value"] for r in rows if not r.get("summary")]))
    compared = {c["model"]: c for c in data["comparisons"]}
    assert compared["lstm"]["seeds"] == 2 and compared["lstm"]["baseline"] in ("1nn_dtw", "1nn_euclidean")
    assert compared["lstm"]["low"] <= compared["lstm"]["difference"] <= compared["lstm"]["high"]


def test_weather_forecast_quick_over_two_seeds_merges_the_runs(tmp_path):
    _script("weather_forecast").main(["--quick", "--no-progress", "--seeds", "2", "--out", str(tmp_path)])
    data = results.load_metrics(tmp_path / "metrics.json")
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    assert all((tmp_path / f"seed{s}" / "metrics.json").exists() for s in (0, 1))
    (cmp,) = [c for c in data["comparisons"] if c["metric"] == "rmse"]
    assert cmp["seeds"] == 2 and cmp["model"] == "lstm" and 0.0 <= cmp["p_dm"] <= 1.0
    assert (tmp_path / "seeds.png").stat().st_size > 1000
