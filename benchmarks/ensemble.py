"""Ensemble throughput: N members trained by ONE vmapped program vs N sequential runs.

Both sides run the identical pure ``train(key)`` from ``lstm_jax.train.make_train`` (whole
training in one jit: epochs and minibatches are ``lax.scan``s), compiled once and timed after
compilation; the sequential side calls the jitted single-run program N times.

    python benchmarks/ensemble.py                # N = 16, five model sizes (run on a quiet machine)
    python benchmarks/ensemble.py --quick        # tiny smoke run (seconds)
    python benchmarks/ensemble.py --out result.json

Reports wall times, member-runs per second for each side and their ratio (goal: >= 3x on a
2-core CPU) for several model sizes (``--sizes batch:hidden,...``): the ratio depends on how
much of a single run is per-step overhead (tiny models) and how much is matmul work that
already keeps a core busy (larger models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import lstm_jax
from lstm_jax import losses
from lstm_jax.data import prepare_windows
from lstm_jax.tasks import hugepages
from lstm_jax.train import TrainConfig, make_train


def make_task(n_rows: int, window: int, seed: int = 0):
    """A multivariate daily-like series -> 'last `window` days -> next day' windows."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows)
    season = np.sin(2 * np.pi * t / 365.0)
    temp = 10 + 8 * season + rng.normal(scale=2.0, size=n_rows)
    rain = np.clip(rng.gamma(0.6, 2.0, size=n_rows) - 0.5 * season, 0, None)
    wind = 3 + rng.normal(scale=1.0, size=n_rows)
    series = np.stack([temp, rain, wind], axis=1)
    return prepare_windows(series, window=window, target_cols=[0], val_fraction=0.15, test_fraction=0.0)


def make_model(hidden: int, features: int, impl: str = "scan"):
    def init_fn(key):
        k1, k2 = jax.random.split(key)
        return {
            "rnn": lstm_jax.init_lstm(k1, features, hidden),
            "w": jax.random.normal(k2, (hidden, 1)) / np.sqrt(hidden),
            "b": jnp.zeros((1,)),
        }

    def loss_fn(params, batch, rng):
        ys, _ = lstm_jax.lstm(params["rnn"], batch["x"], impl=impl)
        pred = ys[:, -1] @ params["w"] + params["b"][None, :]
        return losses.last_step_mse(pred, batch["y"]), {"mae": losses.mae(pred, batch["y"])}

    return init_fn, loss_fn


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def run(
    members: int, epochs: int, hidden: int, batch_size: int, rows: int, window: int, repeats: int, impl: str = "scan"
) -> dict:
    splits = make_task(rows, window)
    init_fn, loss_fn = make_model(hidden, splits.train["x"].shape[-1], impl)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=3e-3, warmup_steps=10, cosine_decay=True)
    train = make_train(config, loss_fn, init_fn, splits.train, splits.val)
    keys = jnp.stack([jax.random.key(i) for i in range(members)])

    single = jax.jit(train)
    many = jax.jit(jax.vmap(train))

    t0 = time.perf_counter()
    single_c = single.lower(keys[0]).compile()
    compile_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    many_c = many.lower(keys).compile()
    compile_many = time.perf_counter() - t0

    key_list = [keys[i] for i in range(members)]
    _block(single_c(key_list[0]))  # warm-up: first-call allocations are not throughput
    _block(many_c(keys))
    seq_times, vmap_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solo = [_block(single_c(k)) for k in key_list]
        seq_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched = _block(many_c(keys))
        vmap_times.append(time.perf_counter() - t0)

    # sanity: the vmapped members reproduce the sequential runs
    diff = max(
        float(np.max(np.abs(np.asarray(batched.best_metric[i]) - np.asarray(solo[i].best_metric))))
        for i in range(members)
    )
    t_seq, t_vmap = min(seq_times), min(vmap_times)
    steps = epochs * (splits.train["x"].shape[0] // batch_size)
    return {
        "members": members,
        "epochs": epochs,
        "steps_per_member": steps,
        "hidden": hidden,
        "impl": impl,
        "batch_size": batch_size,
        "train_windows": int(splits.train["x"].shape[0]),
        "window": window,
        "compile_s": {"single": round(compile_single, 3), "vmapped": round(compile_many, 3)},
        "sequential_s": round(t_seq, 6),  # µs: a quick run takes a few ms
        "vmapped_s": round(t_vmap, 6),
        "sequential_runs_per_s": round(members / t_seq, 3),
        "vmapped_runs_per_s": round(members / t_vmap, 3),
        "speedup": round(t_seq / t_vmap, 3),
        "goal": ">= 3x",
        "max_best_val_diff_vmapped_vs_sequential": diff,
        "val_loss_best_mean": float(np.mean(batched.best_metric)),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }


def _sizes(text: str) -> list:
    try:
        sizes = [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise SystemExit(f"error: expected --sizes like '8:8,32:64' (batch:hidden pairs), got {text!r}")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--sizes",
        default="8:8,32:8,8:32,32:32,32:64",
        help="comma list of batch_size:hidden model sizes (default: %(default)s)",
    )
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 4 members, 2 epochs, 1 repeat")
    parser.add_argument("--out", default=None, help="also write the result JSON here")
    parser.add_argument("--impl", default="auto", help="the layer backend of both sides (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = _sizes(args.sizes)
    if args.quick:
        args.members, args.epochs, args.rows, args.repeats = 4, 2, 300, 1
        sizes = [(8, 4), (16, 8)]
    runs = []
    for batch_size, hidden in sizes:
        runs.append(run(args.members, args.epochs, hidden, batch_size, args.rows, args.window, args.repeats, args.impl))
        r = runs[-1]
        print(
            f"batch {batch_size:4d} hidden {hidden:4d}: {args.members} sequential {r['sequential_s']:.3f} s, "
            f"vmapped {r['vmapped_s']:.3f} s, speedup {r['speedup']:.2f}x",
            flush=True,
        )
    result = {
        "quick": bool(args.quick),
        "members": args.members,
        "goal": ">= 3x",
        "runs": runs,
        "best_speedup": max(r["speedup"] for r in runs),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    hugepages.reexec()  # the same numbers as the experiment scripts see: malloc on huge pages
    raise SystemExit(main())
