"""Write the suite's results: ``results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import os

LABELS = {
    "torch": "torch",
    "flax_linen": "flax linen",
    "flax_nnx": "flax NNX",
    "equinox": "equinox",
    "ours": "lstm_jax",
    "ours_fused": "lstm_jax fused",
}
OURS = ("ours", "ours_fused")
TARGETS = {  # issue 5: ratios (peer ms / ours ms) to reach, and the forward floor
    "train": {"torch": 1.3, "flax_linen": 1.8},
    "fwd": {"torch": 1.0, "flax_linen": 1.3},
    "fwd_chain_floor": 1.2,  # forward within 1.2x of the GEMM-chain floor
}


def _ms(entry, peer, mode):
    r = entry["results"].get(peer, {}).get(mode)
    return None if r is None else r["median_ms"]


def _fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def best_ours(entry, mode):
    """(name, ms) of the faster of our implementations in this entry."""
    options = [(p, _ms(entry, p, mode)) for p in OURS if _ms(entry, p, mode) is not None]
    return min(options, key=lambda o: o[1]) if options else (None, None)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# lstm_jax benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Peak matmul (1024³ float32, XLA): {results['peak_gflops']:.0f} GFLOP/s. "
        f"Median of {results['settings']['reps']} repetitions, peers interleaved round-robin in one process; "
        f"torch threads = {results['settings']['torch_threads']}. Float32. Train step = value_and_grad of an MSE loss "
        "through the layer + Adam update.",
        "",
    ]
    for kind in dict.fromkeys(e["kind"] for e in results["configs"]):
        entries = [e for e in results["configs"] if e["kind"] == kind]
        peers = [p for p in LABELS if any(p in e["results"] for e in entries)]
        lines += [f"## {kind.upper()}: milliseconds", ""]
        head = ["config (B, T, D, H)", "mode"] + [LABELS[p] for p in peers] + ["GEMM-chain floor", "FLOP floor"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in entries:
            for mode in ("fwd", "train"):
                row = [f"{e['name']} {tuple(e['cfg'])}", mode]
                row += [_fmt(_ms(e, p, mode)) for p in peers]
                row += [_fmt(e["floors"]["chain_ms"][mode]), _fmt(e["floors"]["flop_ms"][mode], "{:.3g}")]
                lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"## {kind.upper()}: ratios (peer ms / ours ms, > 1 = ours faster) and % of floor", ""]
        ours = [p for p in OURS if p in peers]
        head = ["config", "mode"]
        for p in ours:
            head += [
                f"{LABELS[p]} ×torch",
                f"{LABELS[p]} ×flax linen",
                f"{LABELS[p]} % chain floor",
                f"{LABELS[p]} % FLOP floor",
            ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in entries:
            for mode in ("fwd", "train"):
                row = [e["name"], mode]
                for p in ours:
                    ms = _ms(e, p, mode)
                    row += [
                        _fmt(_ratio(_ms(e, "torch", mode), ms)),
                        _fmt(_ratio(_ms(e, "flax_linen", mode), ms)),
                        _fmt(None if ms is None else 100 * e["floors"]["chain_ms"][mode] / ms, "{:.0f}%"),
                        _fmt(None if ms is None else 100 * e["floors"]["flop_ms"][mode] / ms, "{:.0f}%"),
                    ]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if kind == "lstm":
            lines += _targets(entries)
    if results.get("sweeps"):
        lines += ["## Sweeps (LSTM, milliseconds)", ""]
        for sweep in results["sweeps"]:
            peers = [p for p in LABELS if p in sweep["points"][0]["results"]]
            head = [sweep["param"], "mode"] + [LABELS[p] for p in peers] + ["GEMM-chain floor"]
            lines += [
                f"Base config (B, T, D, H) = {tuple(sweep['base'])}, varying {sweep['param']}:",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head),
            ]
            for pt in sweep["points"]:
                for mode in ("fwd", "train"):
                    row = [str(pt["value"]), mode] + [_fmt(_ms(pt, p, mode)) for p in peers]
                    row.append(_fmt(pt["floors"]["chain_ms"][mode]) if pt.get("floors") else "–")
                    lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    if results.get("memory"):
        lines += [
            "## Train-step compile time and memory (LSTM)",
            "",
            "peak = XLA buffer assignment (args + outputs + temporaries); residual = kept from forward "
            "for backward beyond the inputs; (h, c) = 2·T·B·H·4 bytes.",
            "",
            "| T | B | H | impl | compile s | peak MB | temp MB | residual MB | residual / (h, c) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results["memory"]:
            lines.append(
                f"| {r['T']} | {r['B']} | {r['H']} | {r['impl']} | {r['compile_s']:.2f} | "
                f"{r['peak_bytes'] / 1e6:.1f} | "
                f"{r['temp_bytes'] / 1e6:.1f} | {r['residual_bytes'] / 1e6:.1f} | "
                f"{r['residual_bytes'] / r['hc_bytes']:.2f} |"
            )
        lines.append("")
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(lines)


def _targets(entries) -> list:
    lines = [
        "### Issue-5 targets (best of our implementations)",
        "",
        "| config | target | measured | met |",
        "|---|---|---|---|",
    ]
    for e in entries:
        for mode in ("train", "fwd"):
            name, ms = best_ours(e, mode)
            for peer, goal in TARGETS[mode].items():
                r = _ratio(_ms(e, peer, mode), ms)
                if r is not None:
                    lines.append(
                        f"| {e['name']} | {mode} ≥ {goal}× {LABELS[peer]} | {r:.2f}× ({LABELS[name]}) | "
                        f"{'yes' if r >= goal else 'no'} |"
                    )
        name, ms = best_ours(e, "fwd")
        if ms is not None:
            r = ms / e["floors"]["chain_ms"]["fwd"]
            goal = TARGETS["fwd_chain_floor"]
            lines.append(
                f"| {e['name']} | fwd ≤ {goal}× GEMM-chain floor | {r:.2f}× ({LABELS[name]}) | "
                f"{'yes' if r <= goal else 'no'} |"
            )
    return lines + [""]


def plots(results: dict, out_dir: str) -> list:
    """Write PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in dict.fromkeys(e["kind"] for e in results["configs"]):
        entries = [e for e in results["configs"] if e["kind"] == kind]
        peers = [p for p in LABELS if any(p in e["results"] for e in entries)]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, mode in zip(axes, ("fwd", "train")):
            width = 0.8 / (len(peers) + 1)
            for i, p in enumerate(peers):
                vals = [_ms(e, p, mode) or 0.0 for e in entries]
                ax.bar([j + i * width for j in range(len(entries))], vals, width, label=LABELS[p])
            floor = [e["floors"]["chain_ms"][mode] for e in entries]
            ax.bar(
                [j + len(peers) * width for j in range(len(entries))],
                floor,
                width,
                label="GEMM-chain floor",
                color="lightgray",
                hatch="//",
            )
            ax.set_xticks([j + 0.4 for j in range(len(entries))], [e["name"] for e in entries])
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title(f"{kind.upper()} {mode}")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{kind}_configs.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    for sweep in results.get("sweeps", []):
        peers = [p for p in LABELS if p in sweep["points"][0]["results"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        xs = [pt["value"] for pt in sweep["points"]]
        for ax, mode in zip(axes, ("fwd", "train")):
            for p in peers:
                ax.plot(xs, [_ms(pt, p, mode) for pt in sweep["points"]], marker="o", label=LABELS[p])
            if sweep["points"][0].get("floors"):
                ax.plot(xs, [pt["floors"]["chain_ms"][mode] for pt in sweep["points"]], "k--", label="GEMM-chain floor")
            if min(xs) > 0 and len(xs) > 1:
                ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(sweep["param"])
            ax.set_ylabel("ms")
            ax.set_title(f"LSTM {mode}, base (B, T, D, H) = {tuple(sweep['base'])}")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"sweep_{sweep['param']}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    if results.get("memory"):
        rows = results["memory"]
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for impl in impls:
            sel = [r for r in rows if r["impl"] == impl]
            axes[0].plot([r["T"] for r in sel], [r["peak_bytes"] / 1e6 for r in sel], marker="o", label=impl)
            axes[1].plot([r["T"] for r in sel], [r["compile_s"] for r in sel], marker="o", label=impl)
        for ax, label in zip(axes, ("peak MB (XLA buffer assignment)", "first-call compile s")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("T")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        axes[0].set_yscale("log")
        fig.suptitle(f"LSTM train step, B = {rows[0]['B']}, H = {rows[0]['H']}")
        fig.tight_layout()
        path = os.path.join(out_dir, "memory.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_all(results: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md")}
    results["plots"] = [os.path.basename(p) for p in plots(results, out_dir)]
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(results))
    paths["plots"] = [os.path.join(out_dir, p) for p in results["plots"]]
    return paths
