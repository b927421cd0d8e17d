#!/usr/bin/env python
"""CPU speed of the LSTM backends against torch nn.LSTM and flax linen, 1- and 3-layer networks.

    python benchmarks/cpu_speed.py                 # run on a quiet machine (minutes)
    python benchmarks/cpu_speed.py --quick         # tiny end-to-end run of the harness (CI)
    python benchmarks/cpu_speed.py --configs small,medium_3l --reps 9 --out DIR

Contenders per config ``(B, T, D, H, layers)``: torch ``nn.LSTM(num_layers=L)`` (oneDNN,
``torch.set_num_threads(cores)``), flax linen ``L x nn.RNN(nn.OptimizedLSTMCell)``, and lstm_jax
``lstm(...)`` with ``impl`` = ``scan``, ``fused``, ``cpu_kernel``, ``cpu_hybrid`` and ``auto`` (what
``backends.choose`` picks here), and ``cpu_kernel_bf16`` (the kernel with
``compute_dtype=bfloat16``: mixed precision, so not float32 like the others; it is not part of
``auto``). A forward pass is the network's outputs; a train step is
value and gradient of a mean-squared loss of the outputs, then an Adam update. All contenders of
a config are compiled and warmed first, then timed interleaved (every contender once per round,
in a new random order each round), ``--reps`` rounds; medians. float32. Writes
``DIR/cpu_speed.json`` and ``DIR/cpu_speed.md`` (ms, and each of ours as a speed ratio to torch and to flax: > 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_peers  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import lstm_jax  # noqa: E402
from lstm_jax import backends  # noqa: E402
from lstm_jax.tasks import hugepages  # noqa: E402

CONFIGS = {  # B, T, D, H, layers
    "small": (16, 128, 16, 64, 1),
    "medium": (64, 256, 64, 256, 1),
    "long": (8, 4096, 8, 64, 1),
    "small_3l": (16, 128, 16, 64, 3),
    "medium_3l": (64, 256, 64, 256, 3),
}
QUICK_CONFIGS = {"tiny": (4, 16, 4, 8, 1), "tiny_3l": (4, 16, 4, 8, 3)}
OURS = ("scan", "fused", "cpu_kernel", "cpu_hybrid", "auto", "cpu_kernel_bf16")


def build_ours(cfg, jit, name):
    b, t, d, h, layers = cfg
    impl = name.removesuffix("_bf16")
    dtype = jnp.bfloat16 if name.endswith("_bf16") else None
    params = jit(partial(lstm_jax.init_lstm, input_size=d, hidden_size=h, num_layers=layers))(jax.random.key(0))
    fn = lambda p, xs: lstm_jax.lstm(p, xs, impl=impl, compute_dtype=dtype)[0]  # noqa: E731
    return bench_peers._jax_fns(fn, params, cfg[:4], jit)


def cpu_name() -> str:
    """The CPU's model name (machines differ between runs; ratios in one run do not)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_flax(cfg, jit):
    from flax import linen as nn

    b, t, d, h, layers = cfg

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, xs):
            for _ in range(layers):
                xs = nn.RNN(nn.OptimizedLSTMCell(h))(xs)
            return xs

    model = Stack()
    xs, _ = bench_peers._data(cfg[:4])
    params = jit(model.init)(jax.random.key(0), jnp.asarray(xs))
    return bench_peers._jax_fns(model.apply, params, cfg[:4], jit)


def build_torch(cfg):
    return bench_peers.build_torch("lstm", cfg[:4], layers=cfg[4])


def contenders(cfg, jit) -> dict:
    out = {"torch": build_torch(cfg), "flax_linen": build_flax(cfg, jit)}
    for impl in OURS:
        out[f"ours_{impl}"] = build_ours(cfg, jit, impl)
    return out


def time_round_robin(cands: dict, reps: int) -> dict:
    """Each contender and mode once per round, ``reps`` rounds, in a new (seeded) random order each
    round: no contender always follows the same one (whose threads or freed memory may linger)."""
    order = [(name, mode) for name in cands for mode in ("fwd", "train")]
    times: dict = {key: [] for key in order}
    for r in range(reps):
        for name, mode in random.Random(r).sample(order, len(order)):
            start = time.perf_counter()
            cands[name][mode]()
            times[(name, mode)].append((time.perf_counter() - start) * 1e3)
    out: dict = {}
    for (name, mode), ts in times.items():  # the median, the best run (least disturbed by load), all runs
        out.setdefault(name, {})[mode] = statistics.median(ts)
        out[name][f"{mode}_min"] = min(ts)
        out[name][f"{mode}_runs"] = [round(v, 3) for v in ts]
    return out


def auto_choice(cfg) -> str:
    """What ``impl="auto"`` runs for config ``cfg`` on this machine."""
    b, t, d, h, layers = cfg
    params = lstm_jax.init_lstm(jax.random.key(0), d, h, num_layers=layers)
    return backends.choose(params, jnp.ones((b, t, d)), backends.LayerCall())


def markdown(results: dict, machine: dict) -> str:
    lines = [
        f"CPU speed, {machine.get('cpu', '?')}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
        f"jax {machine['jax']}, torch {machine['torch']}; medians of {machine['reps']} interleaved runs; "
        f"`auto` runs {', '.join(f'{v} at {k}' for k, v in machine['auto'].items())}.",
        "",
        "| config (B, T, D, H, L) | mode | torch ms | flax ms | "
        + " | ".join(f"{i} ms (x torch, x flax)" for i in OURS)
        + " |",
        "|---|---|---:|---:|" + "---:|" * len(OURS),
    ]
    for name, res in results.items():
        for mode in ("fwd", "train"):
            t, f = res["torch"][mode], res["flax_linen"][mode]
            cells = [
                f"{res[f'ours_{i}'][mode]:.2f} ({t / res[f'ours_{i}'][mode]:.2f}, {f / res[f'ours_{i}'][mode]:.2f})"
                for i in OURS
            ]
            lines.append(f"| {name} {tuple(res['cfg'])} | {mode} | {t:.2f} | {f:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end run (CI): timings mean nothing")
    parser.add_argument("--configs", default=None, help=f"comma list of {','.join(CONFIGS)}")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7, quick 2)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.configs:
        unknown = [c for c in args.configs.split(",") if c not in configs]
        if unknown:
            parser.error(f"expected --configs among {list(configs)}, got {unknown}")
        configs = {c: configs[c] for c in args.configs.split(",")}
    reps = args.reps or (2 if args.quick else 7)
    jit = partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0}) if args.quick else jax.jit
    machine = {
        "cores": os.cpu_count(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "cpu": cpu_name(),
        "torch_threads": args.torch_threads,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "reps": reps,
        "auto": {name: auto_choice(cfg) for name, cfg in configs.items()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results = {}
    for name, cfg in configs.items():
        print(f"{name} {cfg}: building", flush=True)
        res = time_round_robin(contenders(cfg, jit), reps)
        results[name] = {"cfg": list(cfg), **res}
        print("  " + ", ".join(f"{k} {v['fwd']:.2f}/{v['train']:.2f} ms" for k, v in res.items()), flush=True)
        results[name]["auto"] = machine["auto"][name]
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": machine, "results": results}
    with open(os.path.join(args.out, "cpu_speed.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(results, machine)
    with open(os.path.join(args.out, "cpu_speed.md"), "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    hugepages.reexec()  # the same numbers as the experiment scripts see: malloc on huge pages
    main()
