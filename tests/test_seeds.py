"""Seeds as an axis: summaries over seeds, comparisons against the best baseline, the generic
``--seeds`` loop, and classifiers trained over seeds in one vmapped program.

Oracles: numpy (means, sample sd), scipy's paired percentile bootstrap, statsmodels' McNemar,
standalone one-seed training runs, and a Python loop for the shift augmentation.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.tasks import classify, cli, results, seeds


def _rows(values, model="lstm", metric="accuracy"):
    return [
        {"task": "t", "dataset": "d", "model": model, "metric": metric, "split": "test", "value": v, "seed": s}
        for s, v in enumerate(values)
    ]


def test_summary_rows_match_numpy_and_keep_unseeded_rows_out():
    vals = [0.91, 0.95, 0.90, 0.97]
    rows = _rows(vals) + _rows([0.5, 0.7], model="gru") + [dict(_rows([0.8])[0], model="svc", seed=None)]
    out = {r["model"]: r for r in seeds.summary_rows(rows)}
    assert set(out) == {"lstm", "gru"}
    assert out["lstm"]["value"] == pytest.approx(np.mean(vals))
    assert out["lstm"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert (out["lstm"]["min"], out["lstm"]["max"], out["lstm"]["seeds"]) == (0.90, 0.97, 4)
    assert out["lstm"]["summary"] is True and "seed" not in out["lstm"]


def _examples(model, values, *, baseline, metric="accuracy", seed=None, **kw):
    defaults = dict(higher_is_better=metric == "accuracy", statistic="rmse" if metric == "rmse" else "mean")
    defaults["paired_test"] = "mcnemar" if metric == "accuracy" else "none"
    defaults.update(kw)
    return seeds.Examples("d", model, metric, "test", np.asarray(values, np.float64), baseline, seed=seed, **defaults)


def test_comparison_of_a_classifier_matches_scipy_bootstrap_and_statsmodels_mcnemar():
    from scipy import stats as st
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(0)
    n = 600
    base_good = (rng.random(n) < 0.85).astype(float)
    weak = (rng.random(n) < 0.70).astype(float)
    model = np.where(rng.random(n) < 0.6, 1.0, base_good)  # better than the best baseline
    ex = [_examples("lstm", model, baseline=False), _examples("b1", base_good, baseline=True)]
    ex.append(_examples("b2", weak, baseline=True))
    (row,) = seeds.comparisons(ex, n_boot=4000)
    assert row["baseline"] == "b1"  # the best baseline (higher accuracy) is chosen
    assert row["difference"] == pytest.approx(model.mean() - base_good.mean())
    ref = st.bootstrap(
        (model, base_good),
        lambda a, b, axis: a.mean(axis) - b.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        random_state=1,
    ).confidence_interval
    assert row["low"] == pytest.approx(ref.low, abs=0.008) and row["high"] == pytest.approx(ref.high, abs=0.008)
    table = [[np.sum((model == 1) & (base_good == 1)), np.sum((model == 1) & (base_good == 0))]]
    table.append([np.sum((model == 0) & (base_good == 1)), np.sum((model == 0) & (base_good == 0))])
    assert row["p_mcnemar"] == pytest.approx(mcnemar(np.array(table), exact=False, correction=True).pvalue, rel=1e-9)
    assert row["better"] == "model" and row["low"] > 0


def test_comparison_averages_seeds_per_example_and_picks_the_lowest_rmse_baseline():
    rng = np.random.default_rng(1)
    y_err = [rng.normal(0, s, 300) ** 2 for s in (1.0, 1.1)]
    base = [rng.normal(0, 0.8, 300) ** 2, rng.normal(0, 2.0, 300) ** 2]
    ex = [_examples("lstm", e, baseline=False, metric="rmse", seed=k) for k, e in enumerate(y_err)]
    ex += [_examples(f"b{k}", b, baseline=True, metric="rmse") for k, b in enumerate(base)]
    (row,) = seeds.comparisons(ex)
    assert row["baseline"] == "b0" and row["seeds"] == 2
    avg = (y_err[0] + y_err[1]) / 2
    assert row["model_value"] == pytest.approx(np.sqrt(avg.mean()))
    assert row["difference"] == pytest.approx(np.sqrt(avg.mean()) - np.sqrt(base[0].mean()))
    assert row["better"] == "baseline" and row["low"] > 0  # the model's RMSE is higher
    assert "p_mcnemar" not in row


def test_comparison_rejects_models_on_different_examples():
    ex = [_examples("lstm", [1, 0, 1], baseline=False), _examples("b", [1, 0, 1, 1], baseline=True)]
    with pytest.raises(ValueError, match="same test examples"):
        seeds.comparisons(ex)


def test_results_save_and_load_examples_and_write_comparisons(tmp_path):
    res = results.Results("t", {"seed": 0})
    res.add("d", "lstm", "accuracy", "test", 0.75)
    res.add_examples("d", "lstm", "accuracy", "test", [1, 1, 1, 0], baseline=False)
    res.add_examples("d", "svc", "accuracy", "test", [1, 0, 1, 0], baseline=True)
    with pytest.raises(ValueError, match="0/1 values"):
        res.add_examples("d", "x", "accuracy", "test", [0.5, 1.0], baseline=True)
    res.write(tmp_path)
    loaded = results.load_examples(tmp_path)
    assert [(e.model, e.baseline) for e in loaded] == [("lstm", False), ("svc", True)]
    np.testing.assert_array_equal(loaded[0].values, [1, 1, 1, 0])
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["comparisons"][0]["difference"] == pytest.approx(0.25)


def test_run_seeds_merges_per_seed_runs(tmp_path):
    def run(args):  # a stand-in script: the value depends on the seed, the baseline does not
        res = results.Results("fake", dict(vars(args)))
        rng = np.random.default_rng(args.seed)
        correct = (rng.random(200) < 0.9).astype(float)
        res.add("d", "lstm", "accuracy", "test", correct.mean())
        res.add("d", "base", "accuracy", "test", 0.5)
        res.add_examples("d", "lstm", "accuracy", "test", correct, baseline=False)
        res.add_examples("d", "base", "accuracy", "test", np.arange(200) % 2, baseline=True)
        res.write(args.out)

    args = argparse.Namespace(seed=3, seeds=3, out=str(tmp_path), quick=True)
    seeds.run_seeds(run, args)
    data = results.load_metrics(tmp_path / "metrics.json")
    per_seed = [r for r in data["results"] if r["model"] == "lstm" and not r.get("summary")]
    assert sorted(r["seed"] for r in per_seed) == [3, 4, 5]
    (summary,) = [r for r in data["results"] if r["model"] == "lstm" and r.get("summary")]
    assert summary["value"] == pytest.approx(np.mean([r["value"] for r in per_seed]))
    assert summary["sd"] == pytest.approx(np.std([r["value"] for r in per_seed], ddof=1))
    (cmp,) = data["comparisons"]
    assert cmp["seeds"] == 3 and cmp["difference"] == pytest.approx(summary["value"] - 0.5)
    assert (tmp_path / "seeds.png").stat().st_size > 1000
    assert data["config"]["seeds"] == 3 and len(data["runs"]) == 3


def test_seeds_flag_is_validated():
    p = cli.make_parser("x", "x")
    assert p.parse_args([]).seeds == 1
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "0"])


def _problem(n=96, t=6, d=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, d)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32) + (x[:, -1, 1] > 1).astype(np.int32)
    return {"x": x[:64], "y": y[:64]}, {"x": x[64:], "y": y[64:]}, classes


def test_vmapped_seeds_equal_standalone_runs():
    train, val, classes = _problem()
    kw = dict(cell="lstm", input_size=3, hidden=8, n_classes=classes, epochs=3, batch_size=16, progress=False)
    both = classify.train_classifier(train, val, seeds=(4, 7), dropout=0.1, augment="jitter", **kw)
    for k, s in enumerate((4, 7)):
        one = classify.train_classifier(train, val, seeds=(s,), dropout=0.1, augment="jitter", **kw)
        member = jax.tree_util.tree_map(lambda a: a[k], both.params)
        for a, b in zip(jax.tree_util.tree_leaves(member), jax.tree_util.tree_leaves(one.params)):
            np.testing.assert_allclose(a, b, atol=2e-5)
        assert both.best_epoch[k] == one.best_epoch[0]
        np.testing.assert_allclose(
            [h["val_loss"] for h in both.histories[k]], [h["val_loss"] for h in one.histories[0]], rtol=1e-4
        )


def test_shift_augmentation_matches_a_python_loop():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7, 6)), jnp.float32)
    key = jax.random.key(3)
    got = np.asarray(classify.augment_inputs(x, key, "shift", max_shift=2))
    shifts = np.asarray(jax.random.randint(key, (5, 2), 0, 5))
    for i in range(5):
        dt, dd = shifts[i] - 2  # output[t, f] = input[t + dt, f + dd], zero outside
        want = np.zeros((7, 6), np.float32)
        for t in range(7):
            for f in range(6):
                if 0 <= t + dt < 7 and 0 <= f + dd < 6:
                    want[t, f] = x[i, t + dt, f + dd]
        np.testing.assert_array_equal(got[i], want)
    with pytest.raises(ValueError, match="expected augment"):
        classify.augment_inputs(x, key, "rotate")


def test_classifier_experiment_with_seeds_adds_rows_ensemble_and_comparison():
    train, val, classes = _problem()
    res = results.Results("t", {})
    classify.add_baseline(res, "d", "majority", np.zeros(32, np.int32), val["y"])
    kw = dict(cell="gru", input_size=3, hidden=8, n_classes=classes, epochs=2, batch_size=16, progress=False)
    run, preds = classify.classifier_experiment(res, "d", train, val, val, seeds=(0, 1, 2), **kw)
    tests = [r for r in res.rows if r["model"] == "gru" and r["split"] == "test"]
    assert sorted(r["seed"] for r in tests) == [0, 1, 2]
    probs = classify.predict_proba(run.params, val, members=True)  # [N, E, C]
    assert probs.shape == (32, 3, classes)
    np.testing.assert_array_equal(preds, np.argmax(probs.mean(1), -1))
    assert res.value("gru_ensemble", "accuracy") == pytest.approx(np.mean(preds == val["y"]))
    compared = {r["model"]: r for r in res.comparisons()}
    assert compared["gru"]["seeds"] == 3 and compared["gru_ensemble"]["baseline"] == "majority"
    assert "±" in res.table()
