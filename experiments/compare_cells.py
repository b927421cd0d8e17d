"""LSTM vs GRU on every experiment: run each task with both cells (each run writing its own
metrics.json, figure and checkpoint) and write one markdown table, or tabulate existing results.

    python experiments/compare_cells.py                   # reduced budgets, ~10 minutes in all
    python experiments/compare_cells.py --full            # each script's default budget (about an hour)
    python experiments/compare_cells.py --collect results # only tabulate metrics.json files found under results/
    python experiments/compare_cells.py --seeds 5         # every run over 5 seeds (summaries, intervals)
    python experiments/compare_cells.py --quick           # smoke test

Outputs in ``--out``: ``<task>/<cell>/`` (each run's metrics.json, figure, checkpoint),
``cells.md`` (the table), ``metrics.json`` (all result rows) and ``cells.png``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from lstm_jax.tasks import cli, compare, results

HERE = Path(__file__).resolve().parent
TASKS = ("weather_forecast", "long_range", "speaker_id", "handwriting", "char_lm", "sentiment")
# extra flags per task for the default (reduced) budget: ~50 s per run, 12 runs
REDUCED = {
    "weather_forecast": ["--ensemble", "4", "--epochs", "30"],
    "long_range": ["--tasks", "adding", "--lengths", "50", "200", "--steps", "1200"],
    "speaker_id": ["--epochs", "60", "--min-updates", "0"],
    "handwriting": ["--epochs", "8"],
    "char_lm": ["--steps", "150"],  # an update budget, never a wall-clock cap
    "sentiment": ["--epochs", "4"],
}


def parse(argv):
    p = cli.make_parser("compare_cells", __doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"subset of {', '.join(TASKS)}")
    p.add_argument("--cells", nargs="+", choices=cli.CELLS, default=["lstm", "gru"])
    p.add_argument("--full", action="store_true", help="each script's default budget instead of the reduced one")
    p.add_argument("--collect", metavar="DIR", help="do not run: tabulate every metrics.json under DIR")
    args = p.parse_args(argv)
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        p.error(f"expected --tasks among {list(TASKS)}, got {unknown}")
    return args


def run_task(task, cell, args, out):
    """Run ``experiments/<task>.py`` in this process (as if from the shell) and read its metrics.json."""
    argv = ["--cell", cell, "--seed", str(args.seed), "--impl", args.impl, "--out", str(out)]
    if args.quick:
        argv.append("--quick")
    elif not args.full:
        argv += REDUCED[task]
    if args.no_progress:
        argv.append("--no-progress")
    if args.seeds > 1:
        argv += ["--seeds", str(args.seeds)]
    print(f"$ python experiments/{task}.py {' '.join(argv)}", flush=True)
    spec = importlib.util.spec_from_file_location(f"experiments_{task}", HERE / f"{task}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = sys.argv
    sys.argv = [f"experiments/{task}.py"] + argv  # so the run records its own command line
    try:
        module.main(argv)
    finally:
        sys.argv = saved
    return results.load_metrics(Path(out) / "metrics.json")


def main(argv=None):
    args = parse(argv)
    res = results.Results("compare_cells", dict(vars(args)))
    runs = []
    if args.collect:
        paths = sorted(Path(args.collect).rglob("metrics.json"))
        paths = [p for p in paths if p.resolve() != (Path(args.out) / "metrics.json").resolve()]
        if not paths:
            raise cli.UsageError(f"expected metrics.json files under {args.collect!r}, got none")
        runs = [results.load_metrics(p) for p in paths]
        runs = [r for r in runs if r.get("task") in args.tasks]
    else:
        jobs = [(t, c) for t in args.tasks for c in args.cells]
        for task, cell in cli.progress_bar(jobs, desc="compare_cells", disable=args.no_progress):
            runs.append(run_task(task, cell, args, Path(args.out) / task / cell))
    for run in runs:
        for row in run["results"]:
            res.add(
                row["dataset"],
                row["model"],
                row["metric"],
                row["split"],
                row["value"],
                source_task=row["task"],
                **{k: v for k, v in row.items() if k not in ("task", "dataset", "model", "metric", "split", "value")},
            )
    rows = compare.summarize_runs(runs, cells=cli.CELLS)
    cells = [c for c in cli.CELLS if any(c in r for r in rows)] or list(args.cells)
    table = compare.cells_markdown(rows, cells=cells)
    out = Path(args.out)
    budget = "collected" if args.collect else ("quick" if args.quick else ("full" if args.full else "reduced"))
    results.write_text(out / "cells.md", f"<!-- budget: {budget} -->\n" + table + "\n")
    plot(rows, cells, out / "cells.png")
    res.extra = {"table": rows}
    res.write(out)
    print(table)
    print(f"({res.timer():.0f} s, {budget} budget, results in {out})")


def plot(rows, cells, path):
    """Each cell's score relative to the best baseline (>1 = better than the baseline)."""
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(rows), 2) + 1.2))
    labels, width, labelled = [], 0.8 / max(len(cells), 1), set()
    colors = {"lstm": "tab:red", "gru": "tab:blue", "rnn": "tab:gray"}
    for i, row in enumerate(rows):
        labels.append(f"{row['task']} {row['dataset']}" + (f" T={row['T']}" if row.get("T") is not None else ""))
        base = float(row["baseline"].rsplit(" ", 1)[1]) if row.get("baseline") else None
        lower_better = compare.PRIMARY_METRIC.get(row["task"], ("", "min"))[1] == "min" or row["metric"] in (
            "mse",
            "rmse",
        )
        for j, cell in enumerate(cells):
            v = row.get(cell)
            if v is None or base is None or v == 0:
                continue
            ratio = base / v if lower_better else v / base
            ax.barh(
                i + (j - (len(cells) - 1) / 2) * width,
                ratio,
                height=width,
                color=colors[cell],
                label=None if cell in labelled else cell,
            )
            labelled.add(cell)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("score relative to the best baseline (> 1: better)")
    if labelled:
        ax.legend(fontsize=8)
    results.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
