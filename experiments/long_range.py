"""Long time lags: the adding problem and the temporal-order task (Hochreiter & Schmidhuber
1997) for LSTM, GRU and a vanilla tanh RNN at several sequence lengths, with the same step
budget each, plus the vanishing-gradient picture ||dloss/dx_t|| against t.

    python experiments/long_range.py                      # T = 50 100 200 400, all cells
    python experiments/long_range.py --cell lstm --lengths 100 200 --tasks adding
    python experiments/long_range.py --seeds 3            # 3 trainings per (task, T, cell): solved k/3
    python experiments/long_range.py --quick

Solved = test MSE < 0.01 (adding; always predicting the mean gives ~0.167) or test accuracy
>= 0.99 (temporal order; chance 0.25). Training stops early once a validation set is solved
with a margin (MSE < 0.007, accuracy >= 0.995), so the step budget is a maximum. Data are
fresh ``jax.random`` batches every step.

With ``--seeds N`` every (task, T, cell) is trained N times (init and training data from seeds
``seed .. seed+N-1``; the validation and test sets stay those of ``--seed``, so the first of
the N runs is the single-seed run): ``metrics.json`` has one row per run (``seed``) plus one
per (task, T, cell) with the median and how many runs solved it (``solved_runs``).

Outputs in ``--out``: ``metrics.json``, ``long_range.png``, ``gradients.png``, ``checkpoint/``.
"""

from __future__ import annotations

import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import datasets, losses, train
from lstm_jax.tasks import cli, loops, results, seqmodel

UNROLL = 1  # scan unroll of the recurrent layer

TASKS = {
    # name: (generator, input size, outputs, metric, solved test)
    "adding": (datasets.adding_problem, 2, 1, "mse", lambda v: v < 0.01),
    "temporal_order": (datasets.temporal_order, 8, 4, "accuracy", lambda v: v >= 0.99),
}
# training stops once the validation batch is solved with a margin (the test set decides "solved")
STOP = {"adding": lambda v: v < 0.007, "temporal_order": lambda v: v >= 0.995}


def parse(argv):
    p = cli.make_parser("long_range", __doc__.splitlines()[0], default_cell=None)
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    p.add_argument("--lengths", nargs="+", type=int, default=[50, 100, 200, 400], help="sequence lengths T")
    p.add_argument("--steps", type=int, default=3000, help="max optimiser steps per run (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--grad-length", type=int, default=200, help="T of the gradient figure (adding problem)")
    args = p.parse_args(argv)
    if any(t < 20 for t in args.lengths):
        p.error(f"expected every --lengths value >= 20, got {args.lengths}")
    return args


def make_loss(task, impl="auto"):
    _, _, _, metric, _ = TASKS[task]

    def loss_fn(params, batch, rng):
        out = seqmodel.apply_seq_model(params, batch["x"], unroll=UNROLL, impl=impl)
        if metric == "mse":
            loss = losses.last_step_mse(out, batch["y"])
            return loss, {"mse": loss}
        return losses.classification_loss(out, batch["y"]), {"accuracy": losses.accuracy(out, batch["y"])}

    return loss_fn


def input_gradient_norms(loss_fn, params, batch):
    """``||dloss/dx_t||`` (mean over the batch) -> ``[T]``: how much each step's input still moves the loss."""
    grads = jax.grad(lambda x: loss_fn(params, {**batch, "x": x}, None)[0])(batch["x"])
    return jnp.sqrt(jnp.sum(grads**2, axis=-1)).mean(axis=0) * grads.shape[0]


def run(args):
    cells = [args.cell] if args.cell else list(cli.CELLS)
    lengths, steps, eval_every, n_test = args.lengths, args.steps, 100, 1000
    grad_length = args.grad_length
    if args.quick:
        lengths, steps, eval_every, n_test, grad_length = [20], 40, 40, 256, 20
    seeds = [args.seed + i for i in range(args.seeds)]
    res = results.Results("long_range", dict(vars(args), cells=cells, lengths=lengths, steps=steps, n_test=n_test))
    runs = [(task, t, cell) for task in args.tasks for t in lengths for cell in cells]
    bar = cli.progress_bar(total=len(runs) * len(seeds) * steps, desc="long_range", disable=args.no_progress)
    trained, grad_curves = {}, {}
    eval_sets = {}
    for task, t, cell in runs:
        gen, d_in, d_out, metric, solved = TASKS[task]
        run_keys = lambda seed: jax.random.split(  # noqa: E731  (k_init, k_data, k_val, k_test)
            jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), t), list(TASKS).index(task)), 4
        )
        if (task, t) not in eval_sets:  # the same validation and test sets for every cell and seed
            _, _, k_val, k_test = run_keys(args.seed)
            make = jax.jit(partial(gen, batch_size=n_test, length=t))
            eval_sets[task, t] = make(k_val), make(k_test)
        val, test = eval_sets[task, t]
        loss_fn = make_loss(task, args.impl)
        evaluate = jax.jit(lambda p, b: loss_fn(p, b, None)[1])
        values = []
        for seed in seeds:
            k_init, k_data, _, _ = run_keys(seed)
            params = jax.jit(
                partial(seqmodel.init_seq_model, cell=cell, input_size=d_in, hidden_size=args.hidden, output_size=d_out)
            )(k_init)
            optimizer = train.make_optimizer(args.lr, clip_norm=1.0)
            label = f"{task} T={t} {cell}" + (f" seed {seed}" if len(seeds) > 1 else "")
            final, history = loops.train_generated(
                loss_fn,
                params,
                optimizer,
                partial(gen, batch_size=args.batch_size, length=t),
                steps=steps,
                key=k_data,
                chunk=eval_every,
                eval_fn=lambda p: {f"val_{metric}": evaluate(p, val)[metric]},
                until=lambda r: STOP[task](r[f"val_{metric}"]),
                bar=bar,
                desc=label,
            )
            value = float(evaluate(final, test)[metric])
            values.append(value)
            res.add(
                task,
                cell,
                metric,
                "test",
                value,
                seq_len=t,
                steps=history[-1]["step"],
                solved=bool(solved(value)),
                seed=seed,
            )
            trained[f"{task}_T{t}_{cell}" + (f"_seed{seed}" if len(seeds) > 1 else "")] = final
            if seed == seeds[0] and task == "adding" and t == min(lengths, key=lambda v: abs(v - grad_length)):
                probe = {k: v[:256] for k, v in test.items()}
                grad_fn = jax.jit(partial(input_gradient_norms, loss_fn))
                grad_curves[cell] = (np.asarray(grad_fn(params, probe)), np.asarray(grad_fn(final, probe)), t)
        if len(seeds) > 1:  # one summary row per (task, T, cell): the median run and how many runs solved it
            res.add(
                task,
                cell,
                metric,
                "test",
                float(np.median(values)),
                seq_len=t,
                seeds=len(seeds),
                solved_runs=sum(bool(solved(v)) for v in values),
                statistic="median",
                summary=True,
            )
        if cell == cells[-1]:  # baselines once per (task, T), on the same test set
            if metric == "mse":
                res.add(task, "mean_predictor", "mse", "test", float(jnp.mean((test["y"] - 1.0) ** 2)), seq_len=t)
            else:
                res.add(
                    task,
                    "chance",
                    "accuracy",
                    "test",
                    float(jnp.max(jnp.bincount(test["y"], length=4)) / n_test),
                    seq_len=t,
                )
    bar.close()
    runs_rows = [r for r in res.rows if "seed" in r]
    res.extra = {
        "solved": {
            f"{r['dataset']}_T{r['seq_len']}_{r['model']}" + (f"_seed{r['seed']}" if len(seeds) > 1 else ""): r[
                "solved"
            ]
            for r in runs_rows
        }
    }
    results.save_checkpoint(args.out, trained, meta={"config": res.config})
    plot_results(res, args, lengths, cells, seeds, f"{args.out}/long_range.png")
    if grad_curves:
        plot_gradients(grad_curves, f"{args.out}/gradients.png")
    res.write(args.out)
    print(res.table())
    for task in args.tasks:

        def solved_at(c):
            counts = {
                t: sum(r["solved"] for r in runs_rows if (r["dataset"], r["model"], r["seq_len"]) == (task, c, t))
                for t in lengths
            }
            if len(seeds) == 1:
                return f"T = {[t for t in lengths if counts[t]] or 'none'}"
            return ", ".join(f"T={t} {counts[t]}/{len(seeds)}" for t in lengths)

        print(f"{task}: solved at " + "; ".join(f"{c}: {solved_at(c)}" for c in cells))
    print(f"({res.timer():.0f} s, results in {args.out})")


def plot_results(res, args, lengths, cells, seeds, path):
    plt = results.pyplot()
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5.5 * len(args.tasks), 4), squeeze=False)
    colors = {"lstm": "tab:red", "gru": "tab:blue", "rnn": "tab:gray"}
    for ax, task in zip(axes[0], args.tasks):
        metric = TASKS[task][3]
        for cell in cells:
            per_seed = [[res.value(cell, metric, dataset=task, seq_len=t, seed=s) for s in seeds] for t in lengths]
            ax.plot(
                lengths,
                [np.median(v) for v in per_seed],
                "o-",
                color=colors[cell],
                label=cell + (f" (median of {len(seeds)})" if len(seeds) > 1 else ""),
            )
            if len(seeds) > 1:
                ax.plot(np.repeat(lengths, len(seeds)), np.ravel(per_seed), ".", color=colors[cell], alpha=0.4, ms=4)
        base = "mean_predictor" if metric == "mse" else "chance"
        ax.plot(lengths, [res.value(base, metric, dataset=task, seq_len=t) for t in lengths], "k--", label=base)
        ax.axhline(0.01 if metric == "mse" else 0.99, color="green", lw=0.8, ls=":", label="solved")
        if metric == "mse":
            ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{task} ({args.steps if not args.quick else 'quick'} steps max)")
        ax.legend(fontsize=8)
    results.save_figure(fig, path)


def plot_gradients(curves, path):
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"lstm": "tab:red", "gru": "tab:blue", "rnn": "tab:gray"}
    for cell, (at_init, after, t) in curves.items():
        steps = np.arange(1, t + 1)
        ax.semilogy(steps, np.maximum(at_init, 1e-20), ls="--", color=colors[cell], label=f"{cell} at init")
        ax.semilogy(steps, np.maximum(after, 1e-20), ls="-", color=colors[cell], label=f"{cell} trained")
    ax.set_ylim(bottom=1e-20)
    ax.set_xlabel("input step t")
    ax.set_ylabel("||dloss / dx_t||")
    ax.set_title(f"adding problem, T = {t}: gradient reaching each input step")
    ax.legend(fontsize=8, ncol=2)
    results.save_figure(fig, path)


main = cli.make_main(parse, run, native_seeds=True)

if __name__ == "__main__":
    sys.exit(cli.run_main(main))
