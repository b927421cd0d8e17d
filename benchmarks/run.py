#!/usr/bin/env python
"""lstm_jax benchmark suite: LSTM/GRU forward and train step against torch, flax and equinox.

    python benchmarks/run.py [--quick] [--out DIR] [--reps N] [--kinds lstm,gru]
                             [--configs small,medium] [--peers torch,flax_linen,...]
                             [--no-sweeps] [--no-memory]

Writes ``DIR/results.json``, ``DIR/results.md`` (tables of ms, ratios to torch and flax
linen, % of floor, the issue-5 targets) and PNG plots (``DIR/*.png``). Default ``DIR`` is
``benchmarks/results``.

Method: all contenders of one config are built (compiled, run once) in this process, then
timed interleaved round-robin (the start rotates each repetition), ``--reps`` times each
(default 7); the median is reported. float32. A train step is the value and gradient of a
mean-squared loss of the layer's outputs, then an Adam update. ``torch.set_num_threads``
is the number of cores (``--torch-threads``). Peers whose package is missing are skipped
with a printed note (they come with the ``bench`` extra).

``--quick`` is a tiny end-to-end run of the whole harness (every peer, sweep, the memory
table and the plots) for CI: its timings mean nothing; it compiles with XLA's backend
optimisation off to stay fast.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_floors  # noqa: E402
import bench_memory  # noqa: E402
import bench_peers  # noqa: E402
import bench_report  # noqa: E402
import jax  # noqa: E402

from lstm_jax.tasks import hugepages  # noqa: E402

PEERS = ("torch", "flax_linen", "flax_nnx", "equinox", "ours", "ours_fused")

DEFAULT = dict(
    configs={
        "small": (16, 128, 16, 64),
        "medium": (64, 256, 64, 256),
        "long": (8, 4096, 8, 64),
        "large": (128, 512, 128, 512),
    },
    reps=7,
    kinds=("lstm", "gru"),
    sweep_base=(16, 128, 32, 128),
    sweeps={"T": [32, 128, 512, 2048], "B": [1, 8, 32, 128], "H": [32, 128, 512]},
    sweep_peers=("torch", "flax_linen", "ours", "ours_fused"),
    unrolls=[1, 2, 4, 8, 16],
    hoists=[0, 8, 16, 32, 128],
    knob_peers=("ours", "ours_fused"),  # contenders of the unroll and hoist sweeps
    memory_T=[1024, 4096, 16384],
    memory_shape=(8, 64, 256),  # B, D, H
    compiler_options=None,
)
QUICK = dict(
    configs={"tiny": (4, 16, 4, 8)},
    reps=3,
    kinds=("lstm", "gru"),
    sweep_base=(4, 16, 4, 8),  # = the tiny config: most sweep points reuse its compiled contenders
    sweeps={"T": [16], "B": [4], "H": [8]},
    sweep_peers=("torch", "ours", "ours_fused"),
    unrolls=[2],
    hoists=[4],
    knob_peers=("ours_fused",),
    memory_T=[64],
    memory_shape=(2, 4, 8),
    compiler_options={"xla_backend_optimization_level": 0},
)


def _machine(torch_threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"jax": jax.__version__}
    for name in ("jaxlib", "flax", "optax", "equinox", "torch"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "torch_threads": torch_threads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class Suite:
    """Builds contenders (remembering which peers are unavailable) and times them."""

    def __init__(self, settings: dict, peers, fused_kw: dict):
        self.s = settings
        self.peers = peers
        self.fused_kw = fused_kw
        self.jit = (
            partial(jax.jit, compiler_options=settings["compiler_options"]) if settings["compiler_options"] else jax.jit
        )
        self.skipped: list = []
        self._missing: set = set()
        self._built: dict = {}
        self._floors: dict = {}

    def build(self, peer: str, kind: str, cfg, **kw):
        """Compiled ``{"fwd": fn, "train": fn}`` of one contender (cached), or None if unavailable."""
        key = (peer, kind, tuple(cfg), tuple(sorted(kw.items())))
        if key not in self._built:
            self._built[key] = self._build(peer, kind, cfg, **kw)
        return self._built[key]

    def _build(self, peer: str, kind: str, cfg, **kw):
        if peer in self._missing:
            return None
        try:
            if peer == "ours":
                return bench_peers.build_ours(kind, cfg, self.jit, **kw)
            if peer == "ours_fused":
                if kind != "lstm":
                    return None
                return bench_peers.build_ours(kind, cfg, self.jit, impl="fused", **{**self.fused_kw, **kw})
            return bench_peers.BUILDERS[peer](kind, cfg, self.jit)
        except ImportError as err:
            self._missing.add(peer)
            note = f"{peer}: not installed ({err.name or err}); install the 'bench' extra"
            print(f"  note: skipping {note}", flush=True)
            self.skipped.append(note)
        except Exception as err:  # a peer failing must not stop the suite
            note = f"{peer} {kind} {tuple(cfg)}: {type(err).__name__}: {err}"
            print(f"  note: {note}", flush=True)
            self.skipped.append(note)
        return None

    def time(self, cands: dict, reps: int) -> dict:
        """Interleaved round-robin timing; ``cands``: name -> {mode: fn}."""
        order = [(name, mode) for name, fns in cands.items() for mode in ("fwd", "train") if mode in fns]
        times: dict = {key: [] for key in order}
        for r in range(reps):
            shift = r % max(1, len(order))
            for name, mode in order[shift:] + order[:shift]:
                start = time.perf_counter()
                cands[name][mode]()
                times[(name, mode)].append((time.perf_counter() - start) * 1e3)
        out: dict = {}
        for (name, mode), ts in times.items():
            out.setdefault(name, {})[mode] = {"median_ms": statistics.median(ts), "min_ms": min(ts), "times_ms": ts}
        return out

    def entry(self, kind: str, cfg, peers, reps: int, peak: float, floors: bool = True, **kw) -> dict:
        cands = {}
        for peer in peers:
            fns = self.build(peer, kind, cfg, **(kw if peer.startswith("ours") else {}))
            if fns is not None:
                cands[peer] = fns
        result = {"kind": kind, "cfg": list(cfg), "results": self.time(cands, reps)}
        if floors:
            key = (kind, tuple(cfg))
            if key not in self._floors:
                self._floors[key] = bench_floors.floors(kind, cfg, peak, reps=reps, jit=self.jit)
            result["floors"] = self._floors[key]
        return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny end-to-end run of the harness (CI)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per contender (default 7)")
    parser.add_argument("--kinds", default=None, help="comma list of lstm,gru")
    parser.add_argument("--configs", default=None, help="comma list of config names to run")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {','.join(PEERS)}")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count())
    parser.add_argument("--fused-unroll", type=int, default=1, help="unroll of impl='fused'")
    parser.add_argument("--fused-hoist", type=int, default=0, help="hoist of impl='fused'")
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)

    settings = dict(QUICK if args.quick else DEFAULT)
    if args.reps:
        settings["reps"] = args.reps
    if args.kinds:
        settings["kinds"] = tuple(args.kinds.split(","))
    if args.configs:
        settings["configs"] = {k: v for k, v in settings["configs"].items() if k in args.configs.split(",")}
    peers = tuple(p for p in args.peers.split(",") if p)
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"expected peers among {PEERS}, got {sorted(unknown)}")
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        pass
    fused_kw = {"unroll": args.fused_unroll, "hoist": args.fused_hoist}
    suite = Suite(settings, peers, fused_kw)
    reps = settings["reps"]
    start = time.perf_counter()
    peak = bench_floors.peak(256 if args.quick else 1024)
    print(f"peak matmul: {peak:.0f} GFLOP/s", flush=True)
    results = {
        "machine": _machine(args.torch_threads),
        "settings": {
            "quick": args.quick,
            "reps": reps,
            "torch_threads": args.torch_threads,
            "fused": fused_kw,
            "peers": list(peers),
            "compiler_options": settings["compiler_options"],
        },
        "peak_gflops": peak,
        "configs": [],
        "sweeps": [],
        "memory": [],
    }

    def elapsed():
        return f"[{time.perf_counter() - start:.0f} s]"

    for kind in settings["kinds"]:
        for name, cfg in settings["configs"].items():
            print(f"{elapsed()} {kind} {name} {cfg}", flush=True)
            e = suite.entry(kind, cfg, peers, reps, peak)
            e["name"] = name
            results["configs"].append(e)
            for peer, r in e["results"].items():
                print(f"  {peer:12s} " + "  ".join(f"{m} {v['median_ms']:.2f} ms" for m, v in r.items()), flush=True)

    if not args.no_sweeps:
        base = settings["sweep_base"]
        sweep_peers = [p for p in settings["sweep_peers"] if p in peers]
        for param, values in settings["sweeps"].items():
            print(f"{elapsed()} sweep {param} {values}", flush=True)
            points = []
            for v in values:
                cfg = list(base)
                cfg["BTDH".index(param)] = v
                pt = suite.entry("lstm", tuple(cfg), sweep_peers, reps, peak)
                pt["value"] = v
                points.append(pt)
            results["sweeps"].append({"param": param, "base": list(base), "points": points})
        ours = [p for p in settings["knob_peers"] if p in peers]
        for param, values in (("unroll", settings["unrolls"]), ("hoist", settings["hoists"])):
            print(f"{elapsed()} sweep {param} {values}", flush=True)
            points = []
            for v in values:
                pt = suite.entry("lstm", base, ours, reps, peak, floors=False, **{param: v})
                pt["value"] = v
                points.append(pt)
            results["sweeps"].append({"param": param, "base": list(base), "points": points})

    if not args.no_memory:
        b, d, h = settings["memory_shape"]
        for t in settings["memory_T"]:
            print(f"{elapsed()} memory T={t}", flush=True)
            results["memory"] += bench_memory.measure(t, b=b, d=d, h=h, compiler_options=settings["compiler_options"])

    results["skipped"] = suite.skipped
    results["wall_s"] = time.perf_counter() - start
    paths = bench_report.write_all(results, args.out)
    print(
        f"wrote {paths['json']}, {paths['markdown']} and {len(paths['plots'])} plots in {results['wall_s']:.0f} s",
        flush=True,
    )
    return results


if __name__ == "__main__":
    hugepages.reexec()  # the same numbers as the experiment scripts see: malloc on huge pages
    main()
