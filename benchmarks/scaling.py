"""Multi-process scaling of a training step, measured on this machine, and a cost model for 8-64 hosts.

    python benchmarks/scaling.py                 # measure (run on a quiet machine), ~2 minutes
    python benchmarks/scaling.py --quick         # dry run: tiny model, few steps (< 1 minute)
    python benchmarks/scaling.py --out results/scaling --figure experiments/figures/multihost_scaling.png
    python benchmarks/scaling.py --replot results/scaling/scaling.json --figure experiments/figures/multihost_scaling.png

Measured: ``fit``'s jitted data-parallel training step (``lstm_jax.train.steps.fit_programs``:
params replicated, the batch split over the mesh, the gradient mean an all-reduce) of an LSTM
regression model, timed per step after compilation, in

* 1 process x 1 device (pinned to one core, and unpinned),
* 2 processes x 1 device, one per core (``benchmarks/launch_local.py``: a real
  ``jax.distributed`` job, gradients all-reduced over gloo on loopback),
* 1 process x 2 devices (``--xla_force_host_platform_device_count=2``: in-process collectives),

for weak scaling (``--local-batch`` rows per process, the global batch grows) and strong scaling
(``--global-batch`` rows in all, split); plus gloo all-reduce times of gradient-sized buffers.
On a 2-core machine "2 processes" means 2 cores: the result is honest about this machine, not a
cluster.

On paper (``cost_model``): for each experiment's default model the gradient size, the bytes a
ring all-reduce sends per host per step (``2 (N-1)/N x gradient bytes``) and its time at 10 and
100 Gb/s for N = 8..64 hosts, against the step's compute time at the training FLOP rate measured
here (``6 x tokens x recurrent weights``) and at an assumed accelerator rate.

Writes ``scaling.json``, ``scaling.md`` (tables) and ``scaling.png`` to ``--out`` (and the
figure to ``--figure`` too when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOSTS = (8, 16, 32, 64)
LINKS = {"10 Gb/s": 1.25e9, "100 Gb/s": 12.5e9}  # bytes per second per host
LATENCY_S = 20e-6  # per ring hop (assumed)
ACCELERATOR_FLOPS = 50e12  # an accelerator host's sustained training rate (assumed, for contrast)

# Each experiment's default model (the scripts' default flags, --cell lstm). Data-dependent
# sizes are assumptions, marked with "~": vocabularies, feature counts, sequence lengths.
# stack: (input, hidden, layers, bidirectional); heads: (in, out, applied per step?);
# embeddings: (rows, dim); members: vmapped ensemble members (all trained by one step).
MODELS = [
    dict(
        name="weather_forecast",
        stack=(6, 64, 1, False),
        heads=[(64, 1, False)],
        members=8,
        T=6,
        batch=32,
        note="~6 inputs",
    ),
    dict(name="stocks", stack=(2, 32, 1, False), heads=[(32, 1, False)], members=8, T=20, batch=128),
    dict(
        name="anomaly",
        stack=(1, 32, 1, False),
        heads=[(32, 1, True)],
        members=4,
        T=50,
        batch=32,
        note="~T=50, batch 32",
    ),
    dict(name="long_range", stack=(2, 32, 1, False), heads=[(32, 1, False)], T=200, batch=32, note="T=200 of 50-400"),
    dict(name="speaker_id", stack=(12, 64, 1, False), heads=[(64, 9, False)], T=29, batch=32),
    dict(name="handwriting", stack=(28, 128, 1, False), heads=[(128, 10, False)], T=28, batch=64),
    dict(
        name="sentiment",
        stack=(64, 64, 1, True),
        heads=[(128, 2, False)],
        embeddings=[(10_000, 64)],
        T=200,
        batch=32,
        note="~10k-word vocabulary",
    ),
    dict(
        name="char_lm",
        stack=(64, 256, 2, False),
        heads=[(256, 76, True)],
        embeddings=[(76, 64)],
        T=100,
        batch=64,
        note="76 characters",
    ),
    dict(name="music", stack=(88, 256, 1, False), heads=[(256, 88, True)], T=64, batch=16, note="~64 frames"),
    dict(
        name="speech_ctc",
        stack=(240, 256, 3, True),
        heads=[(512, 40, True)],
        T=300,
        batch=32,
        note="80 mels x 3 stacked, ~300 frames, ~40 symbols",
    ),
    dict(
        name="translate",
        stack=(256, 256, 1, True),
        extra_stacks=[(512, 256, 1, False)],
        heads=[(768, 256, True), (256, 4000, True), (512, 256, True)],
        embeddings=[(6000, 256), (4000, 256)],
        T=2000,
        batch=1,
        note="2000 padded tokens per batch; attention and input feeding approximated",
    ),
]


# --------------------------------------------------------------------------- model sizes (on paper)
def model_size(model: dict) -> dict:
    """Parameter count (from ``lstm_jax.init_lstm``'s shapes), gradient bytes and training FLOPs per step."""
    import jax
    import numpy as np

    import lstm_jax

    def stack_params(stack):
        d, h, layers, bidir = stack
        shapes = jax.eval_shape(
            lambda k: lstm_jax.init_lstm(k, d, h, num_layers=layers, bidirectional=bidir), jax.random.key(0)
        )
        total = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
        weights = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes) if len(x.shape) == 2)
        return total, weights

    members = model.get("members", 1)
    rec_total, rec_weights = 0, 0
    for stack in [model["stack"], *model.get("extra_stacks", [])]:
        t, w = stack_params(stack)
        rec_total, rec_weights = rec_total + t, rec_weights + w
    heads = sum(i * o + o for i, o, _ in model["heads"])
    per_step_heads = sum(i * o for i, o, per_step in model["heads"] if per_step)
    final_heads = sum(i * o for i, o, per_step in model["heads"] if not per_step)
    embed = sum(r * d for r, d in model.get("embeddings", []))
    params = members * (rec_total + heads + embed)
    tokens = model["batch"] * model["T"]
    flops = 6.0 * members * (tokens * (rec_weights + per_step_heads) + model["batch"] * final_heads)
    return {"params": int(params), "grad_bytes": int(4 * params), "train_flops": flops, "tokens": tokens}


def ring_allreduce(grad_bytes: float, hosts: int, bandwidth: float) -> tuple[float, float]:
    """(bytes sent per host, seconds) of a ring all-reduce: reduce-scatter + all-gather."""
    sent = 2.0 * (hosts - 1) / hosts * grad_bytes
    return sent, sent / bandwidth + 2 * (hosts - 1) * LATENCY_S


def cost_model(cpu_flops: float) -> list:
    rows = []
    for model in MODELS:
        size = model_size(model)
        compute = {
            "cpu_core_s": size["train_flops"] / cpu_flops,
            "accelerator_s": size["train_flops"] / ACCELERATOR_FLOPS,
        }
        hosts = {}
        for n in HOSTS:
            entry = {}
            for link, bw in LINKS.items():
                sent, seconds = ring_allreduce(size["grad_bytes"], n, bw)
                entry[link] = {
                    "sent_bytes": sent,
                    "allreduce_s": seconds,
                    "efficiency_cpu": compute["cpu_core_s"] / (compute["cpu_core_s"] + seconds),
                    "efficiency_accelerator": compute["accelerator_s"] / (compute["accelerator_s"] + seconds),
                }
            hosts[str(n)] = entry
        rows.append(
            {"experiment": model["name"], "note": model.get("note", ""), **size, "compute": compute, "hosts": hosts}
        )
    return rows


# --------------------------------------------------------------------------- measurement (in each process)
def worker(args) -> int:
    """One process of a measurement: time the step for each global batch; process 0 writes JSON."""
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    from lstm_jax import distributed

    distributed.initialize_from_env()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import lstm_jax
    from lstm_jax import sharding as shd
    from lstm_jax.train import init_train_state, make_optimizer
    from lstm_jax.train.steps import fit_programs

    H, F, T = args.hidden, args.features, args.seq_len
    mesh = shd.data_mesh()
    optimizer = make_optimizer(1e-3, clip_norm=1.0)

    def make_loss(impl):
        def loss_fn(params, batch, rng):
            ys, _ = lstm_jax.lstm(params["rnn"], batch["x"], impl=impl)
            pred = ys[:, -1] @ params["w"] + params["b"]
            return jnp.mean((pred - batch["y"]) ** 2)

        return loss_fn

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"rnn": lstm_jax.init_lstm(k1, F, H), "w": 0.1 * jax.random.normal(k2, (H, 1)), "b": jnp.zeros((1,))}
    rng = np.random.default_rng(jax.process_index())
    out = {
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "cores": len(os.sched_getaffinity(0)),
        "steps": [],
        "allreduce": [],
    }
    for impl, gb in [(impl, gb) for impl in args.impls for gb in args.batches]:
        loss_fn = make_loss(impl)
        shd.check_batch_divisible(gb, mesh)
        lo, hi = shd.process_rows(mesh, gb)
        local = {
            "x": rng.normal(size=(hi - lo, T, F)).astype(np.float32),
            "y": rng.normal(size=(hi - lo, 1)).astype(np.float32),
        }
        batch = shd.shard_batch(local, mesh, global_rows=gb)
        state = shd.replicate(init_train_state(params, optimizer, jax.random.key(1)), mesh)
        step = fit_programs(loss_fn, optimizer, None, mesh, gb, gb)[0]
        hlo = step.lower(state, batch).compile().as_text() if jax.device_count() > 1 else ""
        blocks = re.split(r"\n(?=\S)", hlo)
        in_entry = sum(len(re.findall(r" all-reduce(?:-start)?\(", b)) for b in blocks if b.startswith("ENTRY"))
        elsewhere = sum(len(re.findall(r" all-reduce(?:-start)?\(", b)) for b in blocks if not b.startswith("ENTRY"))
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        out["steps"].append(
            {
                "impl": impl,
                "global_batch": gb,
                "times_s": times,
                "median_s": float(np.median(times)),
                "compile_s": compile_s,
                "allreduce_ops": {"step": in_entry, "inside_loops": elsewhere},
            }
        )
    if jax.device_count() > 1:
        repl = shd.replicated(mesh)
        for n_bytes in args.allreduce_bytes:
            n = max(1, int(n_bytes) // 4)
            lo, hi = shd.process_rows(mesh, jax.device_count())
            x = shd.shard_batch(np.ones((hi - lo, n), np.float32), mesh, global_rows=jax.device_count())
            reduce = jax.jit(lambda a: a.sum(0), out_shardings=repl)
            jax.block_until_ready(reduce(x))
            times = []
            for _ in range(max(3, args.steps)):
                t0 = time.perf_counter()
                jax.block_until_ready(reduce(x))
                times.append(time.perf_counter() - t0)
            out["allreduce"].append({"bytes": 4 * n, "median_s": float(np.median(times))})
    out["train_flops_per_row"] = 6.0 * T * sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params["rnn"]))
    if distributed.is_main_process():
        Path(args.worker_out).write_text(json.dumps(out))
    return 0


def _worker_cmd(args, batches, out, pin=None):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-out", str(out)]
    cmd += ["--hidden", str(args.hidden), "--features", str(args.features), "--seq-len", str(args.seq_len)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batches", *map(str, batches)]
    cmd += ["--allreduce-bytes", *map(str, args.allreduce_bytes), "--impls", *args.impls]
    if pin is not None:
        cmd += ["--pin", str(pin)]
    return cmd


def _env(devices=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def measure(args, tmp: Path) -> dict:
    """Run the configurations one after another (never two at once: they would share the cores)."""
    sys.path.insert(0, str(HERE))
    import launch_local

    cores = sorted(os.sched_getaffinity(0))
    b, B = args.local_batch, args.global_batch
    runs = {}

    def single(name, batches, pin, devices=None):
        out = tmp / f"{name}.json"
        proc = subprocess.run(
            _worker_cmd(args, batches, out, pin),
            env=_env(devices),
            capture_output=True,
            text=True,
            timeout=args.timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        runs[name] = json.loads(out.read_text())

    single("1proc_1core", [b, B], pin=cores[0])
    single("1proc_allcores", [b, B], pin=None)
    if len(cores) >= 2:
        single("1proc_2dev", [2 * b, B], pin=None, devices=2)
    out = tmp / "2proc.json"
    procs = []
    for i in range(2):  # one core per process when there are 2
        cmd = _worker_cmd(args, [2 * b, B], out, pin=cores[i % len(cores)])
        procs.append(cmd)
    port = launch_local.free_port()
    started = []
    try:
        for i, cmd in enumerate(procs):
            env = launch_local.process_env(i, 2, port, base=_env())
            started.append(
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
                )
            )
        codes = launch_local.wait(started, args.timeout)
    finally:
        launch_local.stop(started)
    if codes != [0, 0]:
        logs = "".join((p.stdout.read() if p.stdout else "")[-2000:] for p in started)
        raise RuntimeError(f"2-process run failed ({codes}):\n{logs}")
    runs["2proc_1core_each"] = json.loads(out.read_text())
    return runs


def summarize(runs: dict, args) -> dict:
    def entry(name, gb, impl):
        return next(s for s in runs[name]["steps"] if s["global_batch"] == gb and s["impl"] == impl)

    def t(name, gb, impl=None):
        return entry(name, gb, impl or args.impls[0])["median_s"]

    b, B = args.local_batch, args.global_batch
    one, two = "1proc_1core", "2proc_1core_each"
    weak = [
        {"config": "1 process, 1 core", "processes": 1, "global_batch": b, "step_s": t(one, b)},
        {"config": "2 processes, 1 core each", "processes": 2, "global_batch": 2 * b, "step_s": t(two, 2 * b)},
    ]
    strong = [
        {"config": "1 process, 1 core", "processes": 1, "global_batch": B, "step_s": t(one, B)},
        {"config": "2 processes, 1 core each", "processes": 2, "global_batch": B, "step_s": t(two, B)},
    ]
    for e in weak:
        e["efficiency"] = weak[0]["step_s"] / e["step_s"]
        e["rows_per_s"] = e["global_batch"] / e["step_s"]
    for e in strong:
        e["speedup"] = strong[0]["step_s"] / e["step_s"]
    refs = [
        {
            "config": "1 process, all cores",
            "weak_step_s": t("1proc_allcores", b),
            "strong_step_s": t("1proc_allcores", B),
        }
    ]
    if "1proc_2dev" in runs:
        refs.append(
            {
                "config": "1 process, 2 devices",
                "weak_step_s": t("1proc_2dev", 2 * b),
                "strong_step_s": t("1proc_2dev", B),
            }
        )
    impls = []
    for impl in args.impls:
        e2 = entry(two, B, impl)
        impls.append(
            {
                "impl": impl,
                "strong_1proc_s": t(one, B, impl),
                "strong_2proc_s": e2["median_s"],
                "speedup": t(one, B, impl) / e2["median_s"],
                "allreduce_ops": e2["allreduce_ops"],
            }
        )
    flops_row = runs[one]["train_flops_per_row"]
    cpu_flops = flops_row * B / t(one, B)
    return {
        "impl": args.impls[0],
        "weak": weak,
        "strong": strong,
        "references": refs,
        "impls": impls,
        "allreduce": runs[two]["allreduce"],
        "cpu_core_flops": cpu_flops,
    }


# --------------------------------------------------------------------------- outputs
def _ms(s):
    return f"{1e3 * s:.3g}"


def markdown(result: dict) -> str:
    m = result["measured"]
    lines = [
        f"Training step of `fit` (impl={m['impl']!r}), median over timed steps:",
        "",
        "| scaling | configuration | global batch | step (ms) | efficiency / speedup |",
        "|---|---|---|---|---|",
    ]
    for e in m["weak"]:
        lines.append(f"| weak | {e['config']} | {e['global_batch']} | {_ms(e['step_s'])} | {e['efficiency']:.2f} |")
    for e in m["strong"]:
        lines.append(f"| strong | {e['config']} | {e['global_batch']} | {_ms(e['step_s'])} | {e['speedup']:.2f}x |")
    for r in m["references"]:
        lines.append(
            f"| ref. | {r['config']} | weak / strong | {_ms(r['weak_step_s'])} / {_ms(r['strong_step_s'])} | |"
        )
    lines += [
        "",
        "| impl | strong step, 1 process (ms) | 2 processes (ms) | speedup | all-reduces per step (in the step / inside loops) |",
        "|---|---|---|---|---|",
    ]
    for e in m["impls"]:
        ops = e["allreduce_ops"]
        lines.append(
            f"| {e['impl']} | {_ms(e['strong_1proc_s'])} | {_ms(e['strong_2proc_s'])} | {e['speedup']:.2f}x "
            f"| {ops['step']} / {ops['inside_loops']} |"
        )
    lines += ["", "| gradient all-reduce, 2 processes (gloo, loopback) | median (ms) |", "|---|---|"]
    lines += [f"| {a['bytes'] / 1e6:.3g} MB | {_ms(a['median_s'])} |" for a in m["allreduce"]]
    cpu = m["cpu_core_flops"]
    lines += [
        "",
        f"Cost model per step (ring all-reduce, {LATENCY_S * 1e6:.0f} us per hop; compute at the measured "
        f"{cpu / 1e9:.3g} GFLOP/s of one core and at an assumed {ACCELERATOR_FLOPS / 1e12:.0f} TFLOP/s accelerator; "
        "efficiency = compute / (compute + all-reduce), no overlap):",
        "",
        "| experiment | params | gradient (MB) | sent/host/step, 64 hosts (MB) | all-reduce 8 / 64 hosts, 10 Gb/s (ms) "
        "| 100 Gb/s (ms) | compute, CPU core (ms) | efficiency, 64 hosts: CPU core at 10 Gb/s / accelerator at 100 Gb/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cost_model"]:
        h8, h64 = r["hosts"]["8"], r["hosts"]["64"]
        name = r["experiment"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(
            f"| {name} | {r['params']:,} | {r['grad_bytes'] / 1e6:.3g} | {h64['10 Gb/s']['sent_bytes'] / 1e6:.3g} "
            f"| {_ms(h8['10 Gb/s']['allreduce_s'])} / {_ms(h64['10 Gb/s']['allreduce_s'])} "
            f"| {_ms(h8['100 Gb/s']['allreduce_s'])} / {_ms(h64['100 Gb/s']['allreduce_s'])} "
            f"| {_ms(r['compute']['cpu_core_s'])} "
            f"| {h64['10 Gb/s']['efficiency_cpu']:.2f} / {h64['100 Gb/s']['efficiency_accelerator']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    m = result["measured"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    ax = axes[0]
    x = [e["processes"] for e in m["weak"]]
    ax.plot(
        x, [1e3 * e["step_s"] for e in m["weak"]], "o-", label=f"weak ({m['weak'][0]['global_batch']} rows/process)"
    )
    ax.plot(
        x,
        [1e3 * e["step_s"] for e in m["strong"]],
        "s-",
        label=f"strong ({m['strong'][0]['global_batch']} rows in all)",
    )
    for e, s in zip(m["weak"], m["strong"]):
        ax.annotate(
            f"eff. {e['efficiency']:.2f}",
            (e["processes"], 1e3 * e["step_s"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
        ax.annotate(
            f"{s['speedup']:.2f}x",
            (s["processes"], 1e3 * s["step_s"]),
            textcoords="offset points",
            xytext=(5, -12),
            fontsize=8,
        )
    ax.set_xticks([1, 2])
    ax.set_xlabel("processes (1 core each)")
    ax.set_ylabel("training step (ms)")
    ax.set_title("measured: fit's step, this machine")
    ax.legend(fontsize=8)
    ax = axes[1]
    if m["allreduce"]:
        ax.loglog([a["bytes"] for a in m["allreduce"]], [1e3 * a["median_s"] for a in m["allreduce"]], "o-")
    ax.set_xlabel("all-reduced bytes")
    ax.set_ylabel("ms")
    ax.set_title("measured: gloo all-reduce, 2 processes, loopback")
    ax = axes[2]
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for i, r in enumerate(result["cost_model"]):
        cpu = [r["hosts"][str(n)]["10 Gb/s"]["allreduce_s"] / r["compute"]["cpu_core_s"] for n in HOSTS]
        acc = [r["hosts"][str(n)]["100 Gb/s"]["allreduce_s"] / r["compute"]["accelerator_s"] for n in HOSTS]
        ax.plot(HOSTS, cpu, "o-", color=colors[i], label=r["experiment"], lw=1, ms=4)
        ax.plot(HOSTS, acc, "^--", color=colors[i], lw=0.8, ms=3)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(HOSTS, [str(n) for n in HOSTS])
    ax.set_xlabel("hosts")
    ax.set_ylabel("all-reduce time / compute time per step")
    ax.set_title("on paper (—: CPU core, 10 Gb/s; --: accelerator, 100 Gb/s)", fontsize=10)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scaling.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="dry run: tiny model, few steps")
    p.add_argument("--out", default=str(ROOT / "results" / "scaling"))
    p.add_argument("--figure", help="also write the figure here (e.g. experiments/figures/multihost_scaling.png)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--local-batch", type=int, default=32, help="rows per process, weak scaling")
    p.add_argument("--global-batch", type=int, default=64, help="rows in all, strong scaling")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--allreduce-bytes", type=float, nargs="+", default=[4e3, 4e4, 4e5, 4e6, 1.6e7])
    p.add_argument("--replot", metavar="JSON", help="only redraw the figure and tables from a scaling.json")
    p.add_argument(
        "--impls",
        nargs="+",
        default=["fused", "scan"],
        help="recurrent backends to time; the first is the headline (default: %(default)s)",
    )
    # the worker side (one process of a measurement)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return worker(args)
    if args.replot:
        result = json.loads(Path(args.replot).read_text())
        figure(result, Path(args.figure or Path(args.replot).with_suffix(".png")))
        print(markdown(result))
        return 0
    if args.quick:
        args.hidden, args.features, args.seq_len, args.steps, args.warmup = 16, 4, 8, 3, 1
        args.local_batch, args.global_batch, args.allreduce_bytes = 4, 8, [4e3, 4e5]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(args, Path(tmp))
    measured = summarize(runs, args)
    result = {
        "settings": {
            "quick": args.quick,
            "model": f"lstm {args.features}->{args.hidden}, T={args.seq_len}, last-step regression",
            "local_batch": args.local_batch,
            "global_batch": args.global_batch,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "load_average": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "measured": measured,
        "runs": runs,
        "cost_model_assumptions": {
            "links_bytes_per_s": LINKS,
            "latency_per_hop_s": LATENCY_S,
            "accelerator_flops": ACCELERATOR_FLOPS,
            "cpu_core_flops": measured["cpu_core_flops"],
            "train_flops": "6 x (rows x T x recurrent and per-step head weights + rows x final head weights) x members",
            "allreduce": "ring: 2 (N-1)/N x gradient bytes sent per host; float32 gradients of every parameter",
        },
        "cost_model": cost_model(measured["cpu_core_flops"]),
        "wall_s": None,
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (out / "scaling.md").write_text(table)
    figure(result, out / "scaling.png")
    if args.figure:
        figure(result, Path(args.figure))
    print(table)
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} CPUs: the timings are not from a quiet machine")
    print(f"({result['wall_s']} s, results in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
