"""Polyphonic music: LSTM and GRU next-frame models of Bach chorales against per-key baselines.

The 4-part chorales of music21's corpus as binary 88-key piano rolls (one frame per quarter
note, ``--step 0.5`` for eighth notes), split 60/20/20 by chorale (seeded); an LSTM and a GRU,
trained in the same run on the training chorales and their transpositions by up to 3
semitones either way (``--transpose``), predict each frame's 88 keys as independent Bernoulli
outputs given all the frames before it; the epoch with the lowest validation NLL is kept.
Scored in nats per frame on the test chorales against a per-key Bernoulli and a per-key
first-order Markov chain counted on the same training chorales; then chorales sampled from an
8-frame primer of each test chorale, written as MIDI through music21, their notes per frame
against the data's.

The budget is a number of epochs (``--epochs``), so the numbers do not depend on the machine's
speed or load. The first run parses the scores (tens of seconds) and caches the rolls under
``~/.cache/lstm_jax`` (or ``$LSTM_JAX_CACHE``).

    python experiments/music.py                  # LSTM and GRU, quarter-note frames
    python experiments/music.py --cell lstm      # one cell only
    python experiments/music.py --step 0.5       # eighth-note frames
    python experiments/music.py --quick

Outputs in ``--out``: ``metrics.json``, ``music.png`` (validation NLL per epoch against the
baselines), ``piano_rolls.png`` (a test chorale and each cell's continuation of its primer),
``sample_<cell>.mid``, ``checkpoint/`` (the first cell's params).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from lstm_jax.tasks import cli, music, results

DATASET = "bach_chorales"


def parse(argv):
    p = cli.make_parser("music", __doc__.splitlines()[0], default_cell=None)
    for action in p._actions:  # the shared --cell flag: here without it both cells train
        if action.dest == "cell":
            action.help = "train only this cell (default: lstm and gru in the same run)"
    p.add_argument("--step", type=float, default=1.0, help="frame length in quarter notes (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs, the budget (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--dropout", type=float, default=0.3, help="on the head's input and between layers")
    p.add_argument(
        "--transpose",
        type=int,
        default=3,
        help="add training chorales shifted by -N..N semitones (default: %(default)s)",
    )
    p.add_argument("--primer", type=int, default=8, help="frames of a test chorale read before sampling")
    p.add_argument("--sample-frames", type=int, default=48, help="frames sampled after each primer")
    p.add_argument("--samples", type=int, default=20, help="sampled chorales per cell, for notes per frame")
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.step <= 0:
        p.error(f"expected --step > 0, got {args.step}")
    return args


def run(args):
    cells = [args.cell] if args.cell else ["lstm", "gru"]
    epochs, hidden, limit, n_samples, sample_frames = args.epochs, args.hidden, None, args.samples, args.sample_frames
    if args.quick:
        epochs, hidden, limit, n_samples, sample_frames = 2, 16, 10, 1, 8
    names, rolls = music.load_chorales(args.step, limit=limit)
    data = music.split_chorales(names, rolls, seed=args.seed)
    train, test = data.rolls["train"], data.rolls["test"]
    config = dict(
        vars(args),
        cells=cells,
        epochs=epochs,
        hidden=hidden,
        **{f"n_{k}": len(v) for k, v in data.rolls.items()},
        max_len=max(len(r) for r in rolls),
    )
    res = results.Results("music", config)
    for name, model in (("bernoulli", music.fit_bernoulli(train)), ("markov", music.fit_markov(train))):
        for split in ("val", "test"):
            res.add(DATASET, name, "nll_per_frame", split, music.baseline_nll(model, data.rolls[split]))
    data_stats = voice_stats(test, train)
    for metric, value in data_stats.items():
        res.add(DATASET, "data", metric, "test", value)

    runs, samples = {}, {}
    for cell in cells:
        fitted = music.train_music(
            data,
            cell=cell,
            hidden=hidden,
            layers=args.layers,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            dropout=args.dropout,
            transpose=args.transpose,
            seed=args.seed,
            impl=args.impl,
            progress=not args.no_progress,
            desc=f"{cell} {DATASET}",
        )
        runs[cell] = fitted
        for split in ("val", "test"):
            nll = music.music_nll(fitted.params, data.rolls[split], max_len=config["max_len"], impl=args.impl)
            res.add(DATASET, cell, "nll_per_frame", split, nll, best_epoch=fitted.best_epoch, updates=fitted.updates)
        samples[cell] = draw_samples(fitted.params, test, args, n_samples, sample_frames)
        for metric, value in voice_stats([s[args.primer :] for s in samples[cell]], train).items():
            res.add(DATASET, cell, metric, "test", value, temperature=args.temperature)
        music.write_midi(samples[cell][0], Path(args.out) / f"sample_{cell}.mid", args.step)
    res.extra["history"] = {cell: r.history for cell, r in runs.items()}

    first = cells[0]
    results.finish(
        res,
        args.out,
        runs[first].params,
        step=runs[first].updates,
        meta={"cell": first, "step": args.step},
        figures={
            "music.png": lambda path: plot_curves(runs, res, path),
            "piano_rolls.png": lambda path: plot_rolls(test[0], data.names["test"][0], samples, args, path),
        },
        header=f"{DATASET}: {config['n_train']} train / {config['n_val']} val / {config['n_test']} test chorales, "
        f"one frame per {args.step:g} quarter note (longest chorale {config['max_len']} frames); {args.layers}x({hidden}) "
        f"{'/'.join(cells)}, {epochs} epochs",
        footer=f"notes per frame: data {data_stats['notes_per_frame']:.2f}, "
        + ", ".join(f"{c} samples {res.value(c, 'notes_per_frame'):.2f}" for c in cells),
    )


def draw_samples(params, test, args, n_samples: int, n_frames: int) -> list:
    """One sampled chorale per test chorale (cycling), each from its first ``--primer`` frames;
    sample ``i`` is drawn with ``jax.random.key(i)``."""
    out = []
    for i in range(n_samples):
        primer = test[i % len(test)][: args.primer]
        out.append(
            music.sample_roll(params, primer, n_frames, jax.random.key(i), temperature=args.temperature, impl=args.impl)
        )
    return out


def voice_stats(rolls, train) -> dict:
    """Notes per frame, the fraction of frames with exactly four notes, and the fraction of
    notes within the training chorales' pitch range."""
    frames = np.concatenate(rolls)
    used = np.flatnonzero(np.concatenate(train).any(0))
    inside = frames[:, used[0] : used[-1] + 1].sum()
    return {
        "notes_per_frame": music.notes_per_frame(rolls),
        "four_note_frames": float(np.mean(frames.sum(1) == 4)),
        "notes_in_range": float(inside / max(frames.sum(), 1)),
    }


def plot_curves(runs, res, path):
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for cell, r in runs.items():
        ev = [h for h in r.history if "val_loss" in h]
        ax.plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], label=f"{cell} (validation)")
        ax.axhline(res.value(cell, "nll_per_frame"), ls=":", lw=1, color=ax.lines[-1].get_color())
    for name, color in (("bernoulli", "gray"), ("markov", "black")):
        value = res.value(name, "nll_per_frame", "val")
        ax.axhline(value, ls="--", lw=1, color=color, label=f"{name} (validation) {value:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL, nats per frame")
    ax.set_ylim(7.0, 12.5)
    ax.set_title("Bach chorales: next-frame NLL (dotted: test, best epoch)")
    ax.legend(fontsize=8)
    results.save_figure(fig, path)


def plot_rolls(real, name, samples, args, path):
    plt = results.pyplot()
    panels = [(f"real: {name}", real)] + [
        (f"{cell}: sampled after the first {args.primer} frames", s[0]) for cell, s in samples.items()
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels)), squeeze=False)
    for ax, (title, roll) in zip(axes[:, 0], panels):
        ax.imshow(np.asarray(roll).T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest")
        ax.axvline(args.primer - 0.5, color="tab:red", lw=1)
        ax.set_ylim(10, 70)  # MIDI 31-91: where chorales live
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("key (0 = A0)")
    axes[-1, 0].set_xlabel(f"frame (one per {args.step:g} quarter note)")
    results.save_figure(fig, path)


main = cli.make_main(parse, run)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
