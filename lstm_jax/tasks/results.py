"""Results of one run: ``metrics.json``, markdown tables, checkpoints and figures.

``metrics.json`` shape (the same for every script, so code can tabulate results)::

    {"task": ..., "command": "python experiments/...", "config": {...}, "wall_time_s": ...,
     "platform": "cpu" / "gpu" / "tpu", "device": e.g. "cpu" or "NVIDIA H200",
     "auto_backends": what ``impl="auto"`` tries on this platform, in order,
     "results": [{"task", "dataset", "model", "metric", "split", "value", ...extra}, ...],
     "comparisons": [each model against the best baseline, ``lstm_jax.tasks.seeds.comparisons``],
     "examples": [index of the per-example values saved in ``examples.npz``],
     ...extra top-level keys (history, and for step-budgeted runs
        "updates", "updates_planned", "stopped_early")}

In a multi-process job (``lstm_jax.distributed``) every process runs the same script; only
process 0 writes ``metrics.json`` and figures and prints, while checkpoints are saved by every
process together, as orbax requires (``save_checkpoint``). Figure code runs on every process
(it may compute with arrays that span all of them); ``save_figure`` writes from process 0.

Runs over several seeds (``--seeds N``) carry a ``seed`` in each row and one summary row per
result (``summary: true``, ``value`` = mean, ``sd``, ``min``, ``max``, ``seeds``); see
``lstm_jax.tasks.seeds``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from lstm_jax import backends
from lstm_jax.tasks.cli import Timer
from lstm_jax.typing import PyTree

__all__ = [
    "Results",
    "load_metrics",
    "load_examples",
    "is_main",
    "results_markdown",
    "save_checkpoint",
    "pyplot",
    "save_figure",
    "write_text",
    "finish",
]


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


class Results:
    """Collects result rows of one run and writes ``metrics.json``.

    >>> res = Results("weather_forecast", {"cell": "lstm"})
    >>> res.add("seattle", "lstm", "rmse", "test", 2.6)
    >>> res.add("seattle", "persistence", "rmse", "test", 2.9)
    >>> path = res.write("results/weather_forecast")
    """

    def __init__(self, task: str, config: dict, *, command: Optional[str] = None):
        self.task = task
        self.config = dict(config)
        self.command = command or " ".join(["python", f"experiments/{task}.py"] + sys.argv[1:])
        self.rows: list = []
        self.timer = Timer()
        self.extra: dict = {}
        self.examples: list = []
        self._compared: tuple = (None, [])

    def add(self, dataset: str, model: str, metric: str, split: str, value: float, **extra) -> None:
        """One row: ``model`` is a cell name or a baseline's name; ``split`` ``val`` or ``test``."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"expected split 'train', 'val' or 'test', got {split!r}")
        row = {
            "task": self.task,
            "dataset": dataset,
            "model": model,
            "metric": metric,
            "split": split,
            "value": float(value),
        }
        row.update(extra)
        self.rows.append(row)

    def add_examples(
        self,
        dataset: str,
        model: str,
        metric: str,
        split: str,
        values,
        *,
        baseline: bool,
        higher_is_better: Optional[bool] = None,
        statistic: Optional[str] = None,
        paired_test: Optional[str] = None,
        seed: Optional[int] = None,
        dm_horizon: int = 1,
    ) -> None:
        """The per-example values ``[n]`` behind a row, for the paired comparisons written to
        ``metrics.json`` (``lstm_jax.tasks.seeds.comparisons``) and saved in ``examples.npz``.

        ``values``: correctness 0/1 for ``accuracy``, squared errors for ``rmse``, per-example
        losses otherwise; ``baseline``: a simple baseline (True) or a model under test. The
        defaults follow the metric: ``accuracy`` is higher-is-better with McNemar's test,
        ``rmse`` lower-is-better over squared errors, anything else a lower-is-better mean.
        ``paired_test="dm"`` marks losses in time order (Diebold-Mariano with ``dm_horizon - 1``
        autocovariance lags).
        """
        from lstm_jax.tasks import seeds

        acc = metric == "accuracy"
        ex = seeds.Examples(
            dataset,
            model,
            metric,
            split,
            np.asarray(values),
            bool(baseline),
            acc if higher_is_better is None else bool(higher_is_better),
            statistic or ("rmse" if metric == "rmse" else "mean"),
            paired_test or ("mcnemar" if acc else "none"),
            seed,
            int(dm_horizon),
        )
        self.examples.append(seeds.check_examples(ex))

    def comparisons(self) -> list:
        """Every model against the best baseline on the same examples (computed once per change)."""
        from lstm_jax.tasks import seeds

        key = tuple((e.dataset, e.model, e.metric, e.split, e.seed) for e in self.examples)
        if self._compared[0] != key:
            self._compared = (key, seeds.comparisons(self.examples))
        return self._compared[1]

    def value(self, model: str, metric: str, split: str = "test", **match) -> float:
        """The value of the first row matching ``model``, ``metric``, ``split`` (and extra fields)."""
        for row in self.rows:
            if (row["model"], row["metric"], row["split"]) == (model, metric, split) and all(
                row.get(k) == v for k, v in match.items()
            ):
                return row["value"]
        raise KeyError(f"no row for model={model!r} metric={metric!r} split={split!r} {match}")

    def record_budget(self, updates: int, updates_planned: int, *, stopped_early: bool, why: str = "") -> None:
        """Write ``updates``, ``updates_planned`` and ``stopped_early`` at the top of ``metrics.json``;
        a run cut short (``why``: by what) is announced on stdout, loudly."""
        self.extra.update(updates=int(updates), updates_planned=int(updates_planned), stopped_early=bool(stopped_early))
        if stopped_early and _main():
            print(
                f"WARNING: STOPPED EARLY{' by ' + why if why else ''}: {updates} of {updates_planned} planned "
                "updates ran; these numbers depend on the speed and load of the machine",
                flush=True,
            )

    def as_dict(self) -> dict:
        return _jsonable(
            {
                "task": self.task,
                "command": self.command,
                "config": self.config,
                "wall_time_s": round(self.timer(), 2),
                "platform": jax.default_backend(),
                "device": jax.devices()[0].device_kind,
                "auto_backends": list(backends.AUTO_ORDER.get(jax.default_backend(), ("scan",))),
                "results": self.rows + _summaries(self.rows),
                "comparisons": self.comparisons(),
                "examples": [
                    dict({k: v for k, v in e._asdict().items() if k != "values"}, key=f"e{i}", n=len(e.values))
                    for i, e in enumerate(self.examples)
                ],
                **self.extra,
            }
        )

    def write(self, out_dir) -> Path:
        """Write ``<out_dir>/metrics.json`` (process 0 only) and return its path."""
        out = Path(out_dir)
        path = out / "metrics.json"
        if _main():
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
            if self.examples:
                np.savez_compressed(out / "examples.npz", **{f"e{i}": e.values for i, e in enumerate(self.examples)})
            elif (out / "examples.npz").exists():
                (out / "examples.npz").unlink()
        return path

    def summary(self, split: str = "test") -> list:
        """The rows of ``split`` with one row per result: over several seeds the summary row
        (mean, ``sd``...), else the row itself."""
        rows = [r for r in self.rows + _summaries(self.rows) if r["split"] == split]
        if any(r.get("summary") for r in rows):
            rows = [r for r in rows if r.get("summary") or r.get("seed") is None]
        return rows

    def table(self, split: str = "test") -> str:
        """A short text table of the rows of ``split`` (model x metric per dataset)."""
        rows = self.summary(split)
        if not rows:
            return "(no results)"
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        keys = list(dict.fromkeys((r["dataset"], r["model"], r.get("seq_len")) for r in rows))
        header = ["dataset", "model"] + (["T"] if any(k[2] is not None for k in keys) else []) + metrics
        lines = [header]
        for ds, model, t in keys:
            cells = [ds, model] + ([str(t)] if len(header) > 2 + len(metrics) else [])
            for m in metrics:
                vals = [
                    r for r in rows if (r["dataset"], r["model"], r.get("seq_len"), r["metric"]) == (ds, model, t, m)
                ]
                cells.append(_cell(vals[0]) if vals else "-")
            lines.append(cells)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        fmt = lambda line: "  ".join(str(c).ljust(w) for c, w in zip(line, widths))  # noqa: E731
        return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines[1:]])


def _summaries(rows: list) -> list:
    from lstm_jax.tasks import seeds

    if any(r.get("summary") for r in rows) or len({r.get("seed") for r in rows} - {None}) < 2:
        return []  # summarised by the script itself, or fewer than two seeds
    return seeds.summary_rows(rows)


def _cell(row: dict) -> str:
    if row.get("summary") and row.get("seeds", 1) > 1 and "sd" in row:
        return f"{row['value']:.4g}±{row['sd']:.2g}"
    return f"{row['value']:.4g}"


def load_examples(folder) -> list:
    """The per-example values a run saved (``metrics.json``'s ``examples`` index and
    ``examples.npz``) as ``lstm_jax.tasks.seeds.Examples``; ``[]`` when it saved none."""
    from lstm_jax.tasks import seeds

    folder = Path(folder)
    index = load_metrics(folder / "metrics.json").get("examples") or []
    if not index:
        return []
    with np.load(folder / "examples.npz") as arrays:
        return [
            seeds.Examples(**{k: v for k, v in e.items() if k not in ("key", "n")}, values=arrays[e["key"]])
            for e in index
        ]


def load_metrics(path) -> dict:
    """Read a ``metrics.json`` and check its shape (``results`` rows with the shared keys)."""
    data = json.loads(Path(path).read_text())
    for key in ("config", "wall_time_s", "results"):
        if key not in data:
            raise ValueError(f"expected key {key!r} in {path}, got keys {sorted(data)}")
    for row in data["results"]:
        missing = {"task", "dataset", "model", "metric", "split", "value"} - set(row)
        if missing:
            raise ValueError(
                f"expected result rows with task/dataset/model/metric/split/value in {path}, got one missing {sorted(missing)}"
            )
    return data


def results_markdown(rows: Iterable[dict], columns: Sequence[str]) -> str:
    """A markdown table of dict rows with the given columns (missing values shown as ``-``)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def save_checkpoint(out_dir, params: PyTree, *, step: int = 0, meta: Optional[dict] = None) -> Path:
    """Save ``params`` with ``lstm_jax.checkpoint`` under ``<out_dir>/checkpoint`` (replacing a
    checkpoint of an earlier run there) and return that folder; ``checkpoint.restore(folder,
    like)`` reads it back.

    In a multi-process job every process calls it (orbax saves collectively): process 0 clears
    the folder, the others wait for that, then all save the values (host copies; every process
    holds the same params) and process 0's are written."""
    import shutil

    from lstm_jax import checkpoint, distributed

    folder = Path(out_dir).resolve() / "checkpoint"
    if _main() and folder.exists():
        shutil.rmtree(folder)
    distributed.barrier("lstm_jax.results.save_checkpoint")
    values = params if jax.process_count() == 1 else distributed.gather(params)
    checkpoint.save(folder, step, values, meta=_jsonable(meta or {}), keep=1)
    return folder


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (scripts run headless)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Save a figure as PNG (tight layout, 120 dpi; process 0 only) and close it."""
    path = Path(path)
    if _main():
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def write_text(path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write a text file of the run's outputs (samples, tables), from process 0 only."""
    path = Path(path)
    if _main():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding=encoding)
    return path


def finish(
    res: Results,
    out_dir,
    params: Optional[PyTree] = None,
    *,
    step: int = 0,
    meta: Optional[dict] = None,
    figures: Optional[Mapping[str, Callable[[Path], object]]] = None,
    header: str = "",
    footer: str = "",
    note: str = "",
) -> Path:
    """The end of every script: checkpoint ``params`` (meta: the run's config and ``meta``), draw
    each figure (``{file name: draw(path)}``; ``seeds.png`` too when rows carry seeds), write
    ``metrics.json``; then print ``header``, the
    test table, ``footer`` and ``note`` with the wall time (process 0 prints and writes; every
    process checkpoints and runs the figure code). Returns the path of ``metrics.json``."""
    out = Path(out_dir)
    if params is not None:
        save_checkpoint(out, params, step=step, meta={"config": res.config, **(meta or {})})
    for name, draw in (figures or {}).items():
        draw(out / name)
    if any(r.get("seed") is not None for r in res.rows):  # a run over several seeds: their spread
        from lstm_jax.tasks import seeds

        seeds.plot_spread(res.rows, out / "seeds.png")
    path = res.write(out)
    if not _main():
        return path
    if header:
        print(header)
    print(res.table())
    compared = res.comparisons()
    if compared:
        from lstm_jax.tasks import seeds

        print(seeds.comparison_lines(compared))
    if footer:
        print(footer)
    print(f"{note}({res.timer():.0f} s, results in {out_dir})")
    return path


def is_main() -> bool:
    """Process 0 of a multi-process job (always True in a single-process run)."""
    return jax.process_index() == 0


_main = is_main
