"""Seeds as an axis of every experiment: per-seed rows summarised over seeds, and every
recurrent model compared with the best simple baseline of the same run on the same examples.

A script records, beside a result row, the per-example values behind it
(``Results.add_examples``: correctness for accuracy, squared errors for RMSE, per-example
losses), marked as a model's or a baseline's. From them ``comparisons`` computes, for each
model, the difference to the best baseline with a 95 % paired-bootstrap interval over the
examples (``lstm_jax.stats.paired_bootstrap``), McNemar's test for paired classifiers and the
Diebold-Mariano test for forecasts. A model trained with several seeds is compared through its
per-example values averaged over the seeds (the expected score of one training run); the
interval then covers the test-set sampling, and the seed spread is in the summary rows.

``summary_rows`` turns rows that carry a ``seed`` into one summary row per result (``mean``
as ``value``, and ``sd``, ``min``, ``max``, ``seeds``). ``run_seeds`` is the generic loop
behind ``--seeds N`` for scripts that do not train their seeds in one vmapped program: it runs
the script once per seed (``<out>/seed<k>``) and merges the runs into ``<out>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from lstm_jax import stats

__all__ = [
    "Examples",
    "PAIRED_TESTS",
    "summary_rows",
    "comparisons",
    "run_seeds",
    "merge_runs",
    "plot_spread",
]

PAIRED_TESTS = ("none", "mcnemar", "dm")
_PER_RUN = frozenset({"seed", "value", "updates", "best_epoch", "wall_time_s"})


class Examples(NamedTuple):
    """Per-example values behind one result row (``values: [n]``, the same examples for every
    model and baseline of a ``(dataset, metric, split)``)."""

    dataset: str
    model: str
    metric: str
    split: str
    values: np.ndarray  # [n]
    baseline: bool  # a simple baseline (True) or a model being evaluated (False)
    higher_is_better: bool
    statistic: str  # "mean" or "rmse" (values are squared errors)
    paired_test: str  # "mcnemar" (values 0/1), "dm" (values are losses in time order) or "none"
    seed: Optional[int] = None
    dm_horizon: int = 1  # forecast horizon of the losses: the Diebold-Mariano test uses h - 1 lags


def check_examples(ex: Examples) -> Examples:
    """``ex`` with ``values`` as a finite float64 ``[n]`` array; ValueError naming what is wrong."""
    values = np.asarray(ex.values, np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"expected per-example values of shape [n] with n >= 2 for {ex.model}, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"expected finite per-example values for {ex.model} {ex.metric}, got NaN or Inf")
    if ex.statistic not in ("mean", "rmse"):
        raise ValueError(f"expected statistic 'mean' or 'rmse', got {ex.statistic!r}")
    if ex.paired_test not in PAIRED_TESTS:
        raise ValueError(f"expected paired_test in {PAIRED_TESTS}, got {ex.paired_test!r}")
    if ex.paired_test == "mcnemar" and not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"expected 0/1 values for McNemar's test ({ex.model} {ex.metric}), got other values")
    return ex._replace(values=values)


def _key(row: dict) -> str:
    return json.dumps({k: v for k, v in sorted(row.items()) if k not in _PER_RUN}, default=str)


def summary_rows(rows: Iterable[dict]) -> list:
    """One summary row per result that carries a ``seed``: the row's fields, ``value`` = mean over
    the seeds, and ``sd`` (sample sd, 0 for one seed), ``min``, ``max``, ``seeds`` (how many),
    ``summary: True``. Rows without a ``seed`` are not summarised. (``Results`` adds these rows
    when its rows carry two or more seeds and the script wrote no summary rows of its own.)

    >>> rows = [{"model": "lstm", "metric": "accuracy", "split": "test", "value": v, "seed": s}
    ...         for s, v in enumerate([0.9, 0.8, 1.0])]
    >>> (summary,) = summary_rows(rows)
    >>> summary["value"], summary["sd"], summary["seeds"]
    (0.9, 0.1, 3)
    """
    groups: dict = {}
    for row in rows:
        if row.get("seed") is None or row.get("summary"):
            continue
        groups.setdefault(_key(row), []).append(row)
    out = []
    for members in groups.values():
        s = stats.summarize([r["value"] for r in members])
        first = {k: v for k, v in members[0].items() if k not in _PER_RUN}
        out.append(
            dict(
                first,
                value=round(s["mean"], 12),
                sd=round(s["sd"], 12),
                min=s["min"],
                max=s["max"],
                seeds=s["n"],
                summary=True,
            )
        )
    return out


def _stat(ex: Examples, values: np.ndarray) -> float:
    return float(np.sqrt(values.mean()) if ex.statistic == "rmse" else values.mean())


def comparisons(examples: Sequence[Examples], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> list:
    """Every model against the best baseline of its ``(dataset, metric, split)``.

    Returns one dict per (group, model): ``dataset, metric, split, model, baseline, model_value,
    baseline_value, difference`` (model minus baseline, in the metric's units), ``low, high,
    level`` (paired bootstrap percentile interval), ``p_bootstrap``, ``seeds`` (of the model,
    averaged per example), ``better`` (``"model"`` / ``"baseline"`` when the interval excludes
    0, else ``"neither"``), and ``p_mcnemar`` or ``p_dm`` where the group asks for that test
    (McNemar only for one run's 0/1 values; averaged seeds use the bootstrap alone).
    """
    groups: dict = {}
    for ex in examples:
        groups.setdefault((ex.dataset, ex.metric, ex.split), []).append(ex)
    out = []
    for (dataset, metric, split), members in groups.items():
        by_model: dict = {}
        for e in members:
            by_model.setdefault((e.baseline, e.model), []).append(e)
        # a baseline recorded by several seeds' runs enters with its values averaged, like a model
        bases = [
            runs[0]._replace(values=np.mean([r.values for r in runs], axis=0)) for (b, _), runs in by_model.items() if b
        ]
        models = {name: runs for (b, name), runs in by_model.items() if not b}
        if not bases or not models:
            continue
        sign = 1.0 if bases[0].higher_is_better else -1.0
        best = max(bases, key=lambda e: sign * _stat(e, e.values))
        for name, runs in models.items():
            values = np.mean([r.values for r in runs], axis=0)
            if values.shape != best.values.shape:
                raise ValueError(
                    f"expected {name} and {best.model} on the same {split} examples of {dataset}, "
                    f"got {values.shape[0]} and {best.values.shape[0]} values"
                )
            boot = stats.paired_bootstrap(
                values, best.values, statistic=best.statistic, n_boot=n_boot, level=level, seed=seed
            )
            row: dict[str, Any] = dict(
                dataset=dataset,
                metric=metric,
                split=split,
                model=name,
                baseline=best.model,
                model_value=_stat(best, values),
                baseline_value=_stat(best, best.values),
                difference=boot.difference,
                low=boot.low,
                high=boot.high,
                level=boot.level,
                p_bootstrap=boot.p_value,
                seeds=len(runs),
                n=int(values.size),
            )
            good_low, good_high = (boot.low, boot.high) if sign > 0 else (-boot.high, -boot.low)
            row["better"] = "model" if good_low > 0 else "baseline" if good_high < 0 else "neither"
            if best.paired_test == "mcnemar" and len(runs) == 1:
                row["p_mcnemar"] = stats.mcnemar(values, best.values).p_value
            if best.paired_test == "dm":
                row["p_dm"] = stats.diebold_mariano(values, best.values, h=best.dm_horizon).p_value
            out.append(row)
    return out


def comparison_lines(rows: Sequence[dict]) -> str:
    """One line per comparison: ``model - baseline = d [low, high] (p ...)``."""
    lines = []
    for r in rows:
        tests = ", ".join(f"{k[2:]} p={r[k]:.3g}" for k in ("p_mcnemar", "p_dm") if k in r)
        seeds = f", mean of {r['seeds']} seeds" if r["seeds"] > 1 else ""
        lines.append(
            f"{r['dataset']} {r['metric']} ({r['split']}{seeds}): {r['model']} - {r['baseline']} = "
            f"{r['difference']:+.4g} [{r['low']:+.4g}, {r['high']:+.4g}] (bootstrap p={r['p_bootstrap']:.3g}"
            f"{', ' + tests if tests else ''}); better: {r['better']}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the generic loop
def run_seeds(run: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Path:
    """Run ``run`` once per seed ``args.seed .. args.seed + args.seeds - 1`` (each with its own
    ``--out <out>/seed<k>``) and merge their ``metrics.json`` into ``<out>/metrics.json``
    (``merge_runs``); returns that path."""
    out = Path(args.out)
    folders = []
    for k in range(args.seeds):
        one = argparse.Namespace(**dict(vars(args), seed=args.seed + k, seeds=1, out=str(out / f"seed{args.seed + k}")))
        run(one)
        folders.append(Path(one.out))
    return merge_runs(folders, out, command_seeds=args.seeds)


def merge_runs(folders: Sequence[Path], out: Path, *, command_seeds: Optional[int] = None) -> Path:
    """Merge the ``metrics.json`` (and ``examples.npz``) of single-seed runs into ``out``: their
    rows tagged with ``seed``, the summary rows, the comparisons over the seeds, ``runs`` (seed,
    wall time, folder of each) and ``seeds.png``; prints the summary table."""
    from lstm_jax.tasks import results as R

    merged: Optional[R.Results] = None
    runs = []
    for folder in folders:
        data = R.load_metrics(folder / "metrics.json")
        seed = int(data["config"]["seed"])
        if merged is None:
            config = dict(data["config"], seed=seed, seeds=command_seeds or len(folders))
            merged = R.Results(data["task"], config, command=data.get("command"))
        for row in data["results"]:
            merged.rows.append(dict(row, seed=row.get("seed", seed)))
        for ex in R.load_examples(folder):
            merged.examples.append(ex._replace(seed=seed if ex.seed is None else ex.seed))
        runs.append({"seed": seed, "wall_time_s": data["wall_time_s"], "out": str(folder)})
    if merged is None:
        raise ValueError("expected at least one run folder to merge, got none")
    merged.extra["runs"] = runs
    path = merged.write(out)
    plot_spread(merged.rows, out / "seeds.png")
    if R.is_main():
        print(f"over {len(folders)} seeds (mean ± sd):")
        print(merged.table())
        print(comparison_lines(merged.comparisons()))
    return path


def plot_spread(rows: Sequence[dict], path) -> Optional[Path]:
    """Per test metric of each dataset: every seed's value of every model as a dot, the mean as
    a bar (``seeds.png``); nothing when no row has a ``seed``."""
    from lstm_jax.tasks import results as R

    seeded = [r for r in rows if r.get("seed") is not None and not r.get("summary") and r["split"] == "test"]
    panels = list(dict.fromkeys((r["dataset"], r["metric"]) for r in seeded if r.get("horizon") in (None, "mean")))
    if not panels:
        return None
    plt = R.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (dataset, metric) in zip(axes[0], panels):
        chosen = [
            r for r in seeded if (r["dataset"], r["metric"]) == (dataset, metric) and r.get("horizon") in (None, "mean")
        ]
        label = lambda r: r["model"] + (f" T={r['seq_len']}" if r.get("seq_len") is not None else "")  # noqa: E731
        models = list(dict.fromkeys(label(r) for r in chosen))
        for i, m in enumerate(models):
            vals = [r["value"] for r in chosen if label(r) == m]
            ax.barh(i, np.mean(vals), color="0.85")
            ax.plot(vals, [i] * len(vals), "o", ms=4, color="tab:blue")
            sd = np.std(vals, ddof=1) if len(vals) > 1 else 0.0
            ax.text(
                0.99,
                i,
                f"{np.mean(vals):.4g} ± {sd:.2g}",
                transform=ax.get_yaxis_transform(),
                ha="right",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(models)), models, fontsize=7)
        lo = min(r["value"] for r in chosen)
        hi = max(r["value"] for r in chosen)
        ax.set_xlim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_title(f"{dataset}: test {metric} per seed", fontsize=9)
    return R.save_figure(fig, path)
