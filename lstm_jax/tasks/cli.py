"""The command line every ``experiments/`` script shares: the common flags, the ``main``
entry point (``--quick`` compiles with fewer XLA passes), one-line errors with exit code 2,
progress bars and a wall-clock timer.

Bad user input (unknown data set, missing CSV column, non-numeric target, a bad flag) is
reported by ``run_main`` as ONE line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import jax

from lstm_jax.datasets import DatasetError

__all__ = [
    "CELLS",
    "UsageError",
    "ArgumentParser",
    "positive_int",
    "make_parser",
    "make_main",
    "run_main",
    "fast_compile",
    "progress_bar",
    "Timer",
]

CELLS = ("lstm", "gru", "rnn")


class UsageError(ValueError):
    """Bad command-line input that is not a data problem (e.g. conflicting flags)."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports errors as one line (``prog: error: ...``) and exits with 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """``argparse`` type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def make_parser(
    name: str, description: str, *, default_cell: Optional[str] = "lstm", seeds: bool = True
) -> ArgumentParser:
    """The flags every experiment takes: ``--quick --cell --seed --seeds --impl --out --no-progress``.

    ``--seeds N`` (default 1) trains with seeds ``seed .. seed + N - 1``: in one vmapped
    program where the script does that itself (``make_main(..., native_seeds=True)``), else
    one run per seed merged by ``lstm_jax.tasks.seeds.run_seeds``. ``seeds=False`` leaves the
    flag to a script that gives it another meaning.

    ``--impl`` (default ``"auto"``: the backend ``lstm_jax.backends.choose`` picks for the
    platform the script runs on, so the same command is fast on CPU and GPU) is passed to the
    recurrent layers; ``--out`` defaults to ``results/<name>``; scripts add their own flags on top.
    """
    from lstm_jax import backends

    parser = ArgumentParser(prog=f"{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="tiny run (< 60 s) for smoke tests")
    parser.add_argument("--cell", choices=CELLS, default=default_cell, help="recurrent cell (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    if seeds:
        parser.add_argument(
            "--seeds",
            type=positive_int,
            default=1,
            help="train with seeds seed..seed+N-1; results per seed, their summary, intervals vs the baselines",
        )
    parser.add_argument(
        "--impl",
        choices=("auto", *backends.names()),
        default="auto",
        help="recurrent layer backend; auto picks by platform and params (default: %(default)s)",
    )
    parser.add_argument("--out", default=os.path.join("results", name), help="output folder (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def make_main(
    parse: Callable[[Optional[Sequence[str]]], argparse.Namespace],
    run: Callable[[argparse.Namespace], Any],
    *,
    native_seeds: bool = False,
) -> Callable[[Optional[Sequence[str]]], Any]:
    """A script's ``main(argv=None)``: ``run(parse(argv))``, under ``fast_compile`` with ``--quick``
    (a quick run's cost is compiling, not running). With ``--seeds N > 1`` and not
    ``native_seeds`` (the script trains its seeds itself), ``run`` runs once per seed and the
    runs are merged (``lstm_jax.tasks.seeds.run_seeds``).

    First it starts the distributed runtime when the environment describes a multi-process job
    (``lstm_jax.distributed.initialize_from_env``: ``LSTM_JAX_COORDINATOR`` /
    ``LSTM_JAX_NUM_PROCESSES`` / ``LSTM_JAX_PROCESS_ID``, Slurm's ``srun``); a plain run is
    unchanged. The same script then runs on every host; ``results`` writes from process 0 only.

    >>> import argparse
    >>> def parse(argv):
    ...     return argparse.Namespace(quick=False, n=int(argv[0]))
    >>> main = make_main(parse, lambda args: args.n * 2)   # a script then does sys.exit(run_main(main))
    >>> main(["21"])
    42
    """

    def main(argv: Optional[Sequence[str]] = None):
        from lstm_jax import distributed

        try:
            distributed.initialize_from_env()  # before anything touches a device
        except ValueError as e:  # a malformed LSTM_JAX_* variable: one line, exit code 2
            raise UsageError(str(e)) from e
        args = parse(argv)
        with fast_compile(bool(getattr(args, "quick", False))):
            if getattr(args, "seeds", 1) > 1 and not native_seeds:
                from lstm_jax.tasks import seeds

                return seeds.run_seeds(run, args)
            return run(args)

    return main


def run_main(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a ``DatasetError``/``UsageError`` becomes one stderr line and exit code 2.

    Use as ``sys.exit(run_main(main))`` in a script. Other exceptions (bugs) keep their traceback.
    With ``argv=None`` (the script's own command line) the process first restarts once with
    huge pages for ``malloc`` (``lstm_jax.tasks.hugepages.reexec``; ``LSTM_JAX_HUGEPAGES=0``
    keeps it as started): the same results, faster on CPU.
    """
    if argv is None:
        from lstm_jax.tasks import hugepages

        hugepages.reexec()
    try:
        main(argv)
    except (DatasetError, UsageError) as e:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "experiment"
        message = " ".join(str(e).split())
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def fast_compile(enabled: bool = True):
    """Within the block XLA skips most optimisation passes (``jax_disable_most_optimizations``):
    about half the compile time, slower programs. For ``--quick`` runs, whose cost is compiling."""
    if not enabled:
        yield
        return
    old = bool(jax.config.values.get("jax_disable_most_optimizations", False))
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


def tqdm():
    """``tqdm.auto.tqdm`` (imported on first use)."""
    from tqdm.auto import tqdm as bar

    return bar


def progress_bar(iterable=None, *, total: Optional[int] = None, desc: str = "", disable: bool = False):
    """A tqdm progress bar (``tqdm.auto``) on stderr; pass it as ``bar=`` to share one bar across runs."""
    return tqdm()(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True)


class Timer:
    """Wall-clock seconds since construction: ``Timer()()``."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
