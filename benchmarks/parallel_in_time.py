#!/usr/bin/env python
"""Parallel-in-time LSTM (``impl="parallel"``): iterations to converge and time against the
sequential scan, for long sequences and small hidden sizes.

    python benchmarks/parallel_in_time.py [--quick] [--out DIR] [--reps N]
                                          [--T 1000,16000,100000] [--H 8,64] [--batch 1]
                                          [--jacobians diag,block] [--train]

Per (T, H): the forward of one plain LSTM layer (input size 8, batch ``--batch``) by
``impl="scan"`` and by the parallel solver with each Jacobian (``diag`` = quasi-DEER,
``block`` = 2x2 per unit), without the sequential fallback so the time is that of the
iterations; ``--train`` adds the value-and-gradient of a sum of squares (the parallel
backward is a sequential adjoint scan). Reports iterations, converged, max |error| vs scan,
median ms over ``--reps`` interleaved rounds and the ratio scan / parallel (> 1: parallel
faster). Writes ``DIR/parallel_in_time.json`` and ``.md`` (default ``$OUT`` if set, else
``results/parallel_in_time``). The default list takes ~5 minutes on a CPU; ``--quick`` is a
seconds-long check of the harness (its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lstm_jax.backends import parallel as P  # noqa: E402
from lstm_jax.layers import init_lstm, lstm  # noqa: E402

D_IN = 8


def _timed(fn, *args):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return 1e3 * (time.perf_counter() - t0)


def _contenders(t: int, h: int, batch: int, jacobians, train: bool):
    """``{name: (fn, args)}`` compiled and run once, plus the iteration info per Jacobian."""
    params = init_lstm(jax.random.key(0), D_IN, h)
    xs = jax.random.normal(jax.random.key(1), (batch, t, D_IN))
    out = {"scan fwd": (jax.jit(lambda p, x: lstm(p, x, impl="scan")[0]), (params, xs))}
    ref = jax.block_until_ready(out["scan fwd"][0](params, xs))
    info = {}
    for jac in jacobians:
        cfg = P.SolverConfig(jacobian=jac, fallback=False, max_iters=max(100, min(t, 1000)))
        fwd = jax.jit(lambda p, x, cfg=cfg: P.parallel_stack(p, x, config=cfg, return_info=True))
        ys, _, infos = jax.block_until_ready(fwd(params, xs))
        info[jac] = dict(
            iterations=int(infos[0].iterations),
            converged=bool(infos[0].converged),
            residual=float(infos[0].residual),
            max_err=float(jnp.abs(ys - ref).max()),
        )
        out[f"{jac} fwd"] = (jax.jit(lambda p, x, cfg=cfg: P.parallel_stack(p, x, config=cfg)[0]), (params, xs))
        if train:
            loss = lambda p, x, cfg=cfg: jnp.sum(P.parallel_stack(p, x, config=cfg)[0] ** 2)  # noqa: E731
            out[f"{jac} train"] = (jax.jit(jax.value_and_grad(loss)), (params, xs))
    if train:
        out["scan train"] = (
            jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(lstm(p, x, impl="scan")[0] ** 2))),
            (params, xs),
        )
    for fn, args in out.values():
        jax.block_until_ready(fn(*args))  # compile + warm
    return out, info


def bench(t: int, h: int, batch: int, reps: int, jacobians, train: bool) -> dict:
    """One (T, H) row: iterations, errors and median ms per contender (interleaved rounds)."""
    fns, info = _contenders(t, h, batch, jacobians, train)
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            times[n].append(_timed(fns[n][0], *fns[n][1]))
    ms = {n: statistics.median(v) for n, v in times.items()}
    return dict(T=t, H=h, batch=batch, ms=ms, info=info)


def markdown(rows: list, meta: dict) -> str:
    lines = [
        f"# Parallel-in-time LSTM vs sequential scan ({meta['backend']}, {meta['device']})",
        "",
        "| T | H | method | iterations | converged | max err | fwd ms | scan fwd ms | speed-up fwd | train ms | "
        "speed-up train |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["ms"]
        for jac, inf in row["info"].items():
            tr = ms.get(f"{jac} train")
            sp_tr = f"{ms['scan train'] / tr:.2f}x" if tr else "-"
            lines.append(
                f"| {row['T']} | {row['H']} | {jac} | {inf['iterations']} | {inf['converged']} | "
                f"{inf['max_err']:.1e} | {ms[f'{jac} fwd']:.2f} | {ms['scan fwd']:.2f} | "
                f"{ms['scan fwd'] / ms[f'{jac} fwd']:.2f}x | {'-' if tr is None else f'{tr:.2f}'} | {sp_tr} |"
            )
    lines += [
        "",
        "speed-up = scan ms / parallel ms (> 1: parallel faster). Batch "
        f"{rows[0]['batch'] if rows else '-'}, input size {D_IN}, float32, medians of {meta['reps']} rounds.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join("results", "parallel_in_time"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--T", default="1000,16000,100000")
    ap.add_argument("--H", default="8,64")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--jacobians", default="diag,block")
    ap.add_argument("--train", action="store_true")
    args = ap.parse_args(argv)
    ts, hs = [int(v) for v in args.T.split(",")], [int(v) for v in args.H.split(",")]
    reps = args.reps
    if args.quick:
        ts, hs, reps = [64], [8], 1
    jacobians = tuple(args.jacobians.split(","))
    rows = []
    for t in ts:
        for h in hs:
            rows.append(bench(t, h, args.batch, reps, jacobians, args.train or args.quick))
            print(json.dumps(rows[-1]), flush=True)
    meta = dict(
        backend=jax.default_backend(),
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
        python=platform.python_version(),
        reps=reps,
        quick=args.quick,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "parallel_in_time.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(os.path.join(args.out, "parallel_in_time.md"), "w") as f:
        f.write(markdown(rows, meta))
    print(markdown(rows, meta))
    return dict(meta=meta, rows=rows)


if __name__ == "__main__":
    main()
