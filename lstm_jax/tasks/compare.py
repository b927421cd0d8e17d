"""Tables across runs: one row per (task, data set[, T]) from several ``metrics.json`` files,
each cell's score beside the best baseline's (``experiments/compare_cells.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from lstm_jax.tasks.cli import CELLS

__all__ = ["PRIMARY_METRIC", "summarize_runs", "cells_markdown"]

# task -> (primary metric, "min"|"max" is better); long_range picks its metric per data set
PRIMARY_METRIC = {
    "weather_forecast": ("rmse", "min"),
    "speaker_id": ("accuracy", "max"),
    "handwriting": ("accuracy", "max"),
    "char_lm": ("bits_per_char", "min"),
    "sentiment": ("accuracy", "max"),
    "long_range": (None, None),
}
_LONG_RANGE_METRIC = {"adding": ("mse", "min"), "temporal_order": ("accuracy", "max")}


def summarize_runs(runs: Sequence[dict], *, cells: Sequence[str] = CELLS) -> list:
    """One table row per (task, data set[, T]) from several ``metrics.json`` dicts.

    Each row: ``task, dataset, metric, baseline`` (the best baseline, "name value"), one value
    per cell found (test split), ``wall_time_s`` per cell and the ``command`` of each cell's run.
    Runs of the same task and data set with different cells are merged into one row. A
    multi-seed run (``config["seeds"] > 1``) contributes its summary rows (the median over
    seeds, ``{cell}_solved_runs = (solved, seeds)``), not its per-seed rows.
    """
    table: dict = {}
    for run in runs:
        task = run.get("task") or (run["results"][0]["task"] if run["results"] else None)
        multi_seed = (run.get("config") or {}).get("seeds", 1) > 1
        for row in run["results"]:
            if row["split"] != "test" or (multi_seed and "seed" in row):
                continue
            metric, mode = PRIMARY_METRIC.get(task, (None, None))  # type: ignore[arg-type]
            if task == "long_range":
                metric, mode = _LONG_RANGE_METRIC.get(row["dataset"], (row["metric"], "min"))
            if metric is None or row["metric"] != metric:
                continue
            key = (task, row["dataset"], row.get("seq_len"))
            entry = table.setdefault(
                key,
                {
                    "task": task,
                    "dataset": row["dataset"],
                    "metric": metric,
                    "T": row.get("seq_len"),
                    "_mode": mode,
                    "_baselines": {},
                },
            )
            if row["model"] in cells:
                entry[row["model"]] = row["value"]
                entry[f"{row['model']}_wall_time_s"] = run.get("wall_time_s")
                entry[f"{row['model']}_command"] = run.get("command")
                if "solved" in row:
                    entry[f"{row['model']}_solved"] = row["solved"]
                if "solved_runs" in row:
                    entry[f"{row['model']}_solved_runs"] = (row["solved_runs"], row["seeds"])
            else:
                entry["_baselines"][row["model"]] = row["value"]
    rows = []
    for entry in table.values():
        base = entry.pop("_baselines")
        mode = entry.pop("_mode")
        if base:
            name = (min if mode == "min" else max)(base, key=base.get)
            entry["baseline"] = f"{name} {base[name]:.4g}"
        rows.append(entry)
    return rows


def cells_markdown(rows: Sequence[dict], *, cells: Sequence[str] = ("lstm", "gru")) -> str:
    """Markdown table of ``summarize_runs`` rows: task, data, metric, best baseline, each cell, wall time, command."""

    def cell_value(row, c):
        v = row.get(c)
        if v is None:
            return "-"
        mark = " (solved)" if row.get(f"{c}_solved") else ""
        if row.get(f"{c}_solved_runs") is not None:
            solved, seeds = row[f"{c}_solved_runs"]
            mark = f" (median of {seeds}; solved {solved}/{seeds})"
        return f"{v:.4g}{mark}"

    header = ["task", "data", "metric", "best baseline"] + [c.upper() for c in cells] + ["wall time (s)", "command"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        data = row["dataset"] + (f" T={row['T']}" if row.get("T") is not None else "")
        times = " / ".join(f"{row[f'{c}_wall_time_s']:.0f}" for c in cells if row.get(f"{c}_wall_time_s") is not None)
        commands = "<br>".join(f"`{row[f'{c}_command']}`" for c in cells if row.get(f"{c}_command"))
        lines.append(
            "| "
            + " | ".join(
                [row["task"], data, row["metric"], row.get("baseline", "-")]
                + [cell_value(row, c) for c in cells]
                + [times or "-", commands or "-"]
            )
            + " |"
        )
    return "\n".join(lines)
