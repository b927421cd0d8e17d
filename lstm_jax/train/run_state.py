"""What one ``fit`` run carries from step to step, and how it is checkpointed, resumed and interrupted.

A checkpoint holds ``{"state": TrainState, "best": best params}`` plus, as metadata, the rest
of the ``_Run`` record (history, early-stopping counters, the position in the epoch), which is
what makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax

from lstm_jax import checkpoint as ckpt
from lstm_jax import sharding as shd
from lstm_jax.train.state import TrainState
from lstm_jax.typing import PyTree

__all__ = ["FitResult"]

log = logging.getLogger("lstm_jax.train")


class FitResult(NamedTuple):
    """What ``fit`` returns."""

    params: PyTree  # best params by the monitored metric when monitoring was active, else final
    state: TrainState  # final training state (params at the last step)
    history: list  # one dict per epoch: epoch, step, train_*, val_*, nonfinite_steps, time_s
    best_epoch: Optional[int]  # 1-based epoch of best_metric (None when not monitoring)
    best_metric: Optional[float]
    interrupted: bool = False  # Ctrl-C: checkpoint saved (if checkpoint_dir), resume=True continues
    stopped_early: bool = False


@dataclasses.dataclass
class Run:
    """What changes during ``fit``; all of it but ``postfix`` is checkpointed (``meta``)."""

    state: TrainState
    history: list = dataclasses.field(default_factory=list)
    best_params: Optional[PyTree] = None
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    bad_evals: int = 0
    stopped: bool = False
    epoch0: int = 0  # where a resumed run starts
    batch0: int = 0
    partial: dict = dataclasses.field(default_factory=dict)  # metrics of the epoch in progress
    nonfinite: int = 0
    last_saved: Optional[int] = None
    postfix: dict = dataclasses.field(default_factory=dict)

    def tree(self) -> dict:
        return {"state": self.state, "best": self.best_params if self.best_params is not None else self.state.params}

    def meta(self, epoch: int, batch: int, fingerprint: dict) -> dict:
        return {
            "epoch": epoch,
            "batch": batch,
            "partial": self.partial,
            "nonfinite": self.nonfinite,
            "history": self.history,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_evals": self.bad_evals,
            "stopped": self.stopped,
            "has_best": self.best_params is not None,
            "fingerprint": fingerprint,
        }

    def result(self, interrupted: bool) -> FitResult:
        params = self.best_params if self.best_params is not None else self.state.params
        stopped = False if interrupted else self.stopped
        return FitResult(params, self.state, self.history, self.best_epoch, self.best_metric, interrupted, stopped)


def open_stores(checkpoint_dir, keep: int) -> tuple:
    """``(state store, best store)``, or ``(None, None)`` without a checkpoint directory."""
    if checkpoint_dir is None:
        return None, None
    root = Path(checkpoint_dir)
    return ckpt.CheckpointStore(root / "state", keep=keep), ckpt.CheckpointStore(root / "best", keep=1)


def resume(run: Run, stores: tuple, setup: Any, checkpoint_dir) -> None:
    """Load the newest valid checkpoint into ``run`` (nothing happens when there is none)."""
    restored = _restore_latest(stores[0], run.tree())
    if restored is None:
        return
    tree, meta = restored
    if meta["fingerprint"] != setup.fingerprint:
        raise ValueError(
            f"expected the checkpoint in {checkpoint_dir} to come from the same data/batch_size/seed "
            f"{setup.fingerprint}, got {meta['fingerprint']}"
        )
    run.state = shd.replicate(tree["state"], setup.mesh)
    run.best_params = shd.replicate(tree["best"], setup.mesh) if meta["has_best"] else None
    run.history = meta["history"]
    run.best_metric, run.best_epoch, run.bad_evals = meta["best_metric"], meta["best_epoch"], meta["bad_evals"]
    run.stopped = meta["stopped"]
    run.epoch0, run.batch0 = meta["epoch"], meta["batch"]
    run.partial, run.nonfinite = meta["partial"], meta["nonfinite"]
    run.last_saved = int(run.state.step)


def save(run: Run, setup: Any, stores: tuple, epoch: int, batch: int) -> None:
    """Checkpoint the run at position ``(epoch, batch)`` unless this step is already saved."""
    step = int(run.state.step)
    if stores[0] is None or step == run.last_saved:
        return
    stores[0].save(step, run.tree(), meta=run.meta(epoch, batch, setup.fingerprint))
    run.last_saved = step


def rewrite_history(history_path, history: list) -> None:
    """Write ``history`` as JSON lines (process 0 only: one file per job, not per process)."""
    if history_path is not None and jax.process_index() == 0:
        with open(history_path, "w") as fh:
            for entry in history:
                fh.write(json.dumps(entry) + "\n")


class Interrupt:
    """SIGINT -> flag (first press: finish the step, save, return; second press: abort)."""

    def __init__(self):
        self.flag = False
        self._prev = None
        self._installed = False

    def _handler(self, signum, frame):
        if self.flag:
            signal.signal(signal.SIGINT, self._prev or signal.default_int_handler)
            raise KeyboardInterrupt
        self.flag = True
        print(
            "\nlstm_jax.fit: interrupt received; finishing the step and saving (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._prev)


def _restore_latest(store: ckpt.CheckpointStore, like: PyTree):
    """Newest checkpoint that verifies; damaged newer ones are quarantined. None if none.

    Steps without a manifest (a save killed after orbax's rename) are leftovers of the run
    being resumed, the only writer: they are quarantined too. Every process of a multi-process
    run takes the same decisions (same files) and calls orbax in the same order.
    """
    for step in store.pending_steps():
        moved = store.quarantine(step)
        log.warning("skipping partial checkpoint step %d (no manifest; moved to %s)", step, moved)
        if jax.process_index() == 0:
            print(f"lstm_jax.fit: skipping partial checkpoint step {step} (no manifest)", file=sys.stderr)
    for step in reversed(store.all_steps()):
        try:
            return store.restore(like, step=step)
        except ckpt.CheckpointMismatchError:
            raise  # an intact checkpoint of another model: never move it aside
        except ckpt.CheckpointError as e:
            moved = store.quarantine(step)
            log.warning("skipping damaged checkpoint step %d (moved to %s): %s", step, moved, e)
            if jax.process_index() == 0:
                print(f"lstm_jax.fit: skipping damaged checkpoint step {step}: {e}", file=sys.stderr)
    return None
