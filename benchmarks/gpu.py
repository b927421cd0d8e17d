#!/usr/bin/env python
"""GPU benchmark: every registered lstm_jax backend against flax linen and torch ``nn.LSTM``
(cuDNN), forward and train step, plus XLA/scan variants, in one process.

    python benchmarks/gpu.py [--out DIR] [--reps N] [--configs small,medium,...] [--backends scan,fused,...]
                             [--no-peers] [--no-variants] [--budget-s S] [--dry-run]

Contenders per config ``(B, T, D, H, L)``: each name of ``lstm_jax.backends.names()`` whose
``backends.unsupported`` is None for the call (so backends registered later are included
without edits), flax linen ``nn.RNN(nn.OptimizedLSTMCell)`` (L stacked) and torch
``nn.LSTM`` on CUDA. float32, TF32 off on both sides (``jax_default_matmul_precision=highest``,
``torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False``).
A forward is ``ys = net(xs)``; a train step is the value and gradient of ``sum(ys ** 2)``
w.r.t. params and inputs. Everything is compiled and run once, then timed in ``--reps``
interleaved rounds (rotating start), each call followed by ``block_until_ready`` /
``torch.cuda.synchronize``; medians are reported, with µs per time step and ratios to torch
and to flax (``ms / peer ms``: < 1 is faster than the peer).

Variants (configs ``--variant-configs``, default small and long; backends scan and fused where supported): scan
``unroll`` 4 and 8 (1 is the baseline), ``hoist=T`` (input projection of the whole sequence
up front), ``compute_dtype=bfloat16`` with a float32 carry, and XLA command buffers (CUDA
graphs) for every command type,
``--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL``,
applied per function with ``jax.jit(f).lower(...).compile(compiler_options=...)`` (XLA parses
and validates the option there); ratios are to the same backend's baseline.

Writes ``DIR/gpu.json`` (after every config, so a run cut short keeps what it measured) and
``DIR/gpu.md``; ``DIR`` defaults to ``$OUT`` if set, else ``results/gpu``. ``--budget-s`` skips
what would start after that many seconds. ``--dry-run``: tiny shapes on CPU, every path but
torch on CUDA (torch on CPU instead) and the command-buffer flag; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lstm_jax import backends  # noqa: E402
from lstm_jax.backends import LayerCall  # noqa: E402
from lstm_jax.layers import init_lstm, lstm  # noqa: E402

CONFIGS = {  # name: (B, T, D, H, L)
    "small": (16, 128, 16, 64, 1),
    "medium": (64, 256, 64, 256, 1),
    "long": (8, 4096, 8, 64, 1),
    "large": (128, 512, 128, 512, 1),
    "medium_3layer": (64, 256, 64, 256, 3),
}
DRY_CONFIGS = {
    "small": (2, 6, 3, 4, 1),
    "medium": (3, 5, 4, 6, 1),
    "long": (1, 12, 2, 4, 1),
    "large": (4, 4, 5, 8, 1),
    "medium_3layer": (3, 5, 4, 6, 3),
}
CMD_BUFFER = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
VARIANT_BACKENDS = ("scan", "fused")


def _variants(t: int, dry_run: bool) -> dict:
    """``{variant: (LayerCall options, compiler_options)}`` besides the baseline."""
    out = {
        "unroll=4": (dict(unroll=4), None),
        "unroll=8": (dict(unroll=8), None),
        "hoist=T": (dict(hoist=t), None),
        "bf16 compute": (dict(compute_dtype=jnp.bfloat16), None),
    }
    if not dry_run:
        out["cmdbuf all"] = ({}, {"xla_gpu_enable_command_buffer": CMD_BUFFER})
    return out


def _data(cfg, seed=0):
    b, t, d, h, num_layers = cfg
    xs = np.random.default_rng(seed).standard_normal((b, t, d)).astype(np.float32)
    return xs


# --------------------------------------------------------------------------- builders
def _compile(f, args, compiler_options):
    if compiler_options:
        return jax.jit(f).lower(*args).compile(compiler_options=compiler_options)
    return jax.jit(f)


def build_lstm_jax(impl: str, cfg, options: dict, compiler_options=None):
    """``({"fwd": fn, "train": fn}, ys)`` for ``lstm(..., impl=impl, **options)``; fns take no args and block."""
    b, t, d, h, num_layers = cfg
    params = init_lstm(jax.random.key(0), d, h, num_layers=num_layers)
    xs = jnp.asarray(_data(cfg))

    def fwd(p, x):
        return lstm(p, x, impl=impl, **options)[0]

    def loss(p, x):
        return jnp.sum(fwd(p, x).astype(jnp.float32) ** 2)

    f = _compile(fwd, (params, xs), compiler_options)
    g = _compile(jax.value_and_grad(loss, argnums=(0, 1)), (params, xs), compiler_options)
    ys = jax.block_until_ready(f(params, xs))
    jax.block_until_ready(g(params, xs))
    return {
        "fwd": lambda: jax.block_until_ready(f(params, xs)),
        "train": lambda: jax.block_until_ready(g(params, xs)),
    }, np.asarray(ys, np.float32)


def build_flax(cfg):
    """flax linen ``nn.RNN(nn.OptimizedLSTMCell)``, ``L`` stacked."""
    import flax.linen as nn

    b, t, d, h, num_layers = cfg

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(num_layers):
                x = nn.RNN(nn.OptimizedLSTMCell(h))(x)
            return x

    model = Stack()
    xs = jnp.asarray(_data(cfg))
    params = model.init(jax.random.key(0), xs)
    f = jax.jit(model.apply)
    g = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2), argnums=(0, 1)))
    jax.block_until_ready(f(params, xs))
    jax.block_until_ready(g(params, xs))
    return {
        "fwd": lambda: jax.block_until_ready(f(params, xs)),
        "train": lambda: jax.block_until_ready(g(params, xs)),
    }, None


def build_torch(cfg, device: str):
    """torch ``nn.LSTM`` (cuDNN on CUDA), TF32 off."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    b, t, d, h, num_layers = cfg
    torch.manual_seed(0)
    net = torch.nn.LSTM(d, h, num_layers=num_layers, batch_first=True).to(device)
    x = torch.from_numpy(_data(cfg)).to(device).requires_grad_(True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            y, _ = net(x)
        sync()
        return y

    def train():
        net.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = net(x)
        loss = (y**2).sum()
        loss.backward()
        sync()
        return loss

    fwd(), train()
    return {"fwd": fwd, "train": train}, None


# --------------------------------------------------------------------------- timing
def time_rounds(fns: dict, reps: int) -> dict:
    """Median ms of each zero-arg ``fns[name]`` over ``reps`` interleaved rounds (rotating start)."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(reps):
        k = r % max(1, len(names))
        for n in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(1e3 * (time.perf_counter() - t0))
    return {n: statistics.median(v) for n, v in times.items()}


# --------------------------------------------------------------------------- one config
def _contenders(cfg, names, peers: bool, torch_device: str, variants: dict):
    """Build every contender of one config. Returns ``(fns: {(who, variant, kind): fn}, rows_meta)``."""
    b, t, d, h, num_layers = cfg
    params = init_lstm(jax.random.key(0), d, h, num_layers=num_layers)
    xs = jnp.zeros((b, t, d), jnp.float32)
    fns, info, ref = {}, {}, None

    def add(who, variant, build):
        try:
            built, ys = build()
        except Exception as e:  # one failing contender must not stop the run
            info[(who, variant)] = dict(error=f"{type(e).__name__}: {e}"[:500])
            traceback.print_exc()
            return None
        for kind, fn in built.items():
            fns[(who, variant, kind)] = fn
        info[(who, variant)] = {}
        return ys

    for name in names:
        reason = backends.unsupported(name, params, xs, LayerCall())
        if reason is not None:
            info[(name, "base")] = dict(skipped=reason)
            continue
        ys = add(name, "base", lambda: build_lstm_jax(name, cfg, {}))
        if name == "scan":
            ref = ys
        if ys is not None and ref is not None:
            info[(name, "base")]["max_err_vs_scan"] = float(np.abs(ys - ref).max())
        if name in VARIANT_BACKENDS:
            for variant, (opts, copts) in variants.items():
                if backends.unsupported(name, params, xs, LayerCall(**opts)) is None:
                    add(name, variant, lambda: build_lstm_jax(name, cfg, opts, copts))
    if peers:
        add("flax_linen", "base", lambda: build_flax(cfg))
        add(f"torch_{torch_device}", "base", lambda: build_torch(cfg, torch_device))
    return fns, info


def bench_config(cname: str, cfg, names, reps: int, peers: bool, torch_device: str, variants: dict) -> list:
    """Rows ``{config, who, variant, kind, ms, us_per_step, vs_torch, vs_flax, vs_base, ...}`` of one config."""
    fns, info = _contenders(cfg, names, peers, torch_device, variants)
    ms = time_rounds(fns, reps)
    b, t, d, h, num_layers = cfg
    torch_name = f"torch_{torch_device}"
    rows = []
    for (who, variant), extra in info.items():
        kinds = ("fwd", "train") if (who, variant, "fwd") in fns else (None,)
        for kind in kinds:
            row = dict(config=cname, B=b, T=t, D=d, H=h, L=num_layers, who=who, variant=variant, kind=kind, **extra)
            if kind is not None:
                m = ms[(who, variant, kind)]
                row.update(ms=m, us_per_step=1e3 * m / t)
                for peer, key in ((torch_name, "vs_torch"), ("flax_linen", "vs_flax"), (who, "vs_base")):
                    other = ms.get((peer, "base", kind))
                    if other and not (key == "vs_base" and variant == "base"):
                        row[key] = m / other
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- report
def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(rows: list, meta: dict) -> str:
    """One table of all rows: ms, µs per step and ratios (``ms / peer ms``)."""
    lines = [
        f"# lstm_jax GPU benchmark ({meta['device']}, jax {meta['jax']}, torch {meta.get('torch', '-')})",
        "",
        f"float32, TF32 off, medians of {meta['reps']} interleaved rounds. Ratios are ms / peer ms "
        "(< 1: faster than the peer); `vs base` is to the same backend without the variant.",
        "",
        "| config (B,T,D,H,L) | contender | variant | kind | ms | µs/step | vs torch | vs flax | vs base | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r['config']} ({r['B']},{r['T']},{r['D']},{r['H']},{r['L']})"
        note = r.get("error") or r.get("skipped") or ""
        if "max_err_vs_scan" in r:
            note = f"max err vs scan {r['max_err_vs_scan']:.1e}"
        lines.append(
            f"| {shape} | {r['who']} | {r['variant']} | {r['kind'] or '-'} | {_fmt(r.get('ms'), '.3f')} | "
            f"{_fmt(r.get('us_per_step'), '.2f')} | {_fmt(r.get('vs_torch'), '.2f')} | "
            f"{_fmt(r.get('vs_flax'), '.2f')} | {_fmt(r.get('vs_base'), '.2f')} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _meta(args, torch_device: str) -> dict:
    meta = dict(
        backend=jax.default_backend(),
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
        python=platform.python_version(),
        reps=args.reps,
        dry_run=args.dry_run,
        torch_device=torch_device,
        matmul_precision="highest",
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        backends=list(backends.names()),
    )
    try:
        import torch

        meta.update(torch=torch.__version__, cudnn=torch.backends.cudnn.version(), cuda=torch.version.cuda)
    except Exception as e:  # torch missing: the torch rows carry the error
        meta.update(torch=f"unavailable ({type(e).__name__})")
    return meta


def _write(out: str, rows: list, meta: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(markdown(rows, meta))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join("results", "gpu"))
    ap.add_argument("--reps", type=int, default=None, help="default 7 (2 with --dry-run)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--variant-configs", default=None, help="default small,long (small with --dry-run)")
    ap.add_argument("--backends", default="", help="comma list; default every registered backend")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--budget-s", type=float, default=0.0, help="skip configs starting after this many s (0: none)")
    ap.add_argument("--dry-run", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.reps = args.reps or (2 if args.dry_run else 7)
    args.variant_configs = args.variant_configs or ("small" if args.dry_run else "small,long")
    start = time.perf_counter()
    jax.config.update("jax_default_matmul_precision", "highest")
    if not args.dry_run and jax.default_backend() != "gpu":
        raise SystemExit(f"expected a GPU (use --dry-run on CPU), got default backend {jax.default_backend()}")
    torch_device = "cpu" if args.dry_run else "cuda"
    table = DRY_CONFIGS if args.dry_run else CONFIGS
    names = [n for n in (args.backends.split(",") if args.backends else backends.names())]
    meta, rows = _meta(args, torch_device), []
    for cname in args.configs.split(","):
        if cname not in table:
            raise SystemExit(f"expected configs in {sorted(table)}, got {cname!r}")
        cfg = table[cname]
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            rows.append(
                dict(
                    config=cname,
                    B=cfg[0],
                    T=cfg[1],
                    D=cfg[2],
                    H=cfg[3],
                    L=cfg[4],
                    who="-",
                    variant="-",
                    kind=None,
                    skipped=f"time budget {args.budget_s:.0f} s spent",
                )
            )
            continue
        variants = (
            {} if args.no_variants or cname not in args.variant_configs.split(",") else _variants(cfg[1], args.dry_run)
        )
        rows += bench_config(cname, cfg, names, args.reps, not args.no_peers, torch_device, variants)
        meta["elapsed_s"] = time.perf_counter() - start
        _write(args.out, rows, meta)
        print(f"[gpu.py] {cname} done at {meta['elapsed_s']:.0f} s", flush=True)
    _write(args.out, rows, meta)
    print(markdown(rows, meta))
    return dict(meta=meta, rows=rows)


if __name__ == "__main__":
    main()
