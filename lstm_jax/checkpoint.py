"""Checkpoints with orbax-checkpoint: atomic, verified, and exact.

A checkpoint is one orbax step directory ``<directory>/<step>/`` with two items:

* ``arrays``: the leaves of a pytree (PRNG keys stored as their key data), saved with
  ``orbax.checkpoint.StandardSave``;
* ``meta``: JSON with the tree's structure, leaf shapes/dtypes, a SHA-256 checksum of every
  leaf's bytes, and any user metadata (e.g. the data-iterator position);

plus ``lstm_jax_manifest.json``, the SHA-256 of every file of the step, written (atomically)
once orbax has finalised the step. The manifest is the commit mark: a step counts (is listed
by ``all_steps``/``latest_step``) only once its manifest is there.

Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no step behind; a process killed between the rename and the manifest
leaves a step without manifest, which is never listed (a reader polling the directory never
sees a partial step) and is moved aside (``quarantine``) by the next save of that step or by a
resuming ``fit``.

Several processes (``jax.distributed``): every process calls ``save``/``restore`` with the same
arguments in the same order, on a directory they all see, as orbax requires; orbax writes each
array once (replicated arrays from process 0), process 0 writes the manifest, and ``save``
returns on every process once the step is complete. Restored leaves are host NumPy arrays of
the GLOBAL values, so a checkpoint written by N processes restores in any number of them.
``restore`` checks the file manifest BEFORE handing anything to orbax, then the array checksum,
and raises ``CheckpointError`` for a checkpoint that is partial, garbled, or written for a
differently shaped tree: a damaged checkpoint is detected, never loaded.

>>> import tempfile
>>> state = {"w": jnp.arange(3.0), "rng": jax.random.key(0)}
>>> store = CheckpointStore(tempfile.mkdtemp() + "/ckpt", keep=3)
>>> path = store.save(100, state, meta={"epoch": 2})    # the step directory
>>> restored, meta = store.restore(state)              # latest step; ``state`` gives the structure
>>> meta["epoch"], restored["w"].tolist()
(2, [0.0, 1.0, 2.0])
>>> store.close()

One-shot helpers: ``save(directory, step, tree)``, ``restore(directory, like)``,
``latest_step(directory)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from lstm_jax.typing import PyTree

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointStore",
    "save",
    "restore",
    "latest_step",
    "all_steps",
    "tree_checksum",
]

FORMAT = "lstm_jax.checkpoint/1"
MANIFEST = "lstm_jax_manifest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, partial, corrupted, or does not match the expected tree."""


class CheckpointMismatchError(CheckpointError):
    """An intact checkpoint written for a differently structured/shaped tree (another model)."""


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaf_spec(leaf) -> list:
    if _is_key(leaf):
        data = jax.random.key_data(leaf)
        return [list(data.shape), str(data.dtype), str(jax.random.key_impl(leaf))]
    a = np.asarray(leaf) if not hasattr(leaf, "dtype") else leaf
    return [list(np.shape(a)), str(np.dtype(a.dtype)), None]


def _savable(tree: PyTree) -> dict:
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"{i:05d}": (jax.random.key_data(x) if _is_key(x) else x) for i, x in enumerate(leaves)}


def tree_checksum(leaves) -> str:
    """SHA-256 over the dtype, shape and bytes of each array in ``leaves`` (in order)."""
    h = hashlib.sha256()
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _file_hashes(step_dir: Path) -> dict:
    hashes = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            hashes[str(path.relative_to(step_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def _write_manifest(step_dir: Path) -> None:
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "files": _file_hashes(step_dir)}, indent=0))
    os.replace(tmp, step_dir / MANIFEST)


def _host_leaves(arrays: dict) -> list:
    """Global values as NumPy (arrays split over processes are all-gathered: every process calls it)."""
    from lstm_jax.distributed import gather

    return [gather(arrays[k]) for k in sorted(arrays)]


def _barrier(name: str) -> None:
    from lstm_jax.distributed import barrier

    barrier(name)


class CheckpointStore:
    """A directory of step checkpoints (orbax ``CheckpointManager``, synchronous saves).

    Args:
      directory: created if missing.
      keep: how many most recent steps to keep (older ones are deleted after a save).
    """

    def __init__(self, directory, *, keep: Optional[int] = 3):
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"expected keep to be a positive int or None, got {keep!r}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # ------------------------------------------------------------------ listing
    def all_steps(self) -> list:
        """Complete steps on disk (finalised by orbax AND with their manifest), ascending;
        partial/temporary saves never appear."""
        return [s for s in self._finalized_steps() if (self.directory / str(s) / MANIFEST).is_file()]

    def pending_steps(self) -> list:
        """Steps orbax finalised whose manifest is missing: a save in progress, or one killed
        between orbax's rename and the manifest (never restored; ``quarantine`` moves them)."""
        return [s for s in self._finalized_steps() if not (self.directory / str(s) / MANIFEST).is_file()]

    def _finalized_steps(self) -> list:
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, tree: PyTree, *, meta: Optional[dict] = None) -> Path:
        """Write ``tree`` (any pytree of arrays, PRNG keys allowed) as ``step``, atomically."""
        step = int(step)
        if step in self.all_steps():
            raise CheckpointError(f"expected a new step, got step {step} which already exists in {self.directory}")
        if step in self.pending_steps():  # the leftover of a save killed before its manifest
            self.quarantine(step)
        arrays = _savable(tree)
        leaves = jax.tree_util.tree_leaves(tree)
        record = {
            "format": FORMAT,
            "treedef": str(jax.tree_util.tree_structure(tree)),
            "leaves": [_leaf_spec(x) for x in leaves],
            "checksum": tree_checksum(_host_leaves(arrays)),
            "user": meta or {},
            "time": time.time(),
        }
        saved = self._manager.save(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record))
        )
        self._manager.wait_until_finished()
        if not saved:
            raise CheckpointError(f"expected orbax to save step {step} in {self.directory}, but it declined")
        step_dir = self.directory / str(step)
        if jax.process_index() == 0:
            _write_manifest(step_dir)
        _barrier(f"lstm_jax.checkpoint.save:{self.directory.name}:{step}")  # complete for every process
        return step_dir

    def verify_files(self, step: int) -> None:
        """Raise ``CheckpointError`` unless every file of ``step`` matches its manifest."""
        step_dir = self.directory / str(int(step))
        try:
            manifest = json.loads((step_dir / MANIFEST).read_text())
            expected = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has no readable manifest (partial save?): {e}"
            ) from e
        got = _file_hashes(step_dir)
        if got != expected:
            bad = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupted or partial: {len(bad)} file(s) "
                f"missing/changed, e.g. {bad[:3]}"
            )

    def read_meta(self, step: int) -> dict:
        """The JSON record of ``step`` (raises ``CheckpointError`` if unreadable)."""
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable: {e}") from e
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} has no valid lstm_jax metadata")
        return record

    def restore(self, like: PyTree, *, step: Optional[int] = None) -> tuple[PyTree, dict]:
        """Load ``step`` (default: latest) into the structure of ``like`` and verify it.

        Args:
          like: a pytree with the same structure, shapes and dtypes (e.g. the freshly
            initialised state); its values are not used.
          step: which step; None for the latest.

        Returns:
          ``(tree, user_meta)``; leaves are host NumPy arrays (PRNG keys re-wrapped as keys).

        Raises:
          CheckpointError: nothing to restore, partial/garbled files, checksum mismatch, or a
            tree that does not match ``like``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"expected a checkpoint in {self.directory}, found none")
        step = int(step)
        self.verify_files(step)
        record = self.read_meta(step)
        like_leaves, treedef = jax.tree_util.tree_flatten(like)
        specs = [_leaf_spec(x) for x in like_leaves]
        if record["treedef"] != str(treedef) or record["leaves"] != specs:
            raise CheckpointMismatchError(
                f"expected checkpoint step {step} to match the given tree ({len(specs)} leaves), got a different "
                f"structure/shapes ({len(record['leaves'])} leaves); was it written by another model or config?"
            )
        target = {
            f"{i:05d}": np.zeros(shape, dtype=np.dtype(dtype)) for i, (shape, dtype, _) in enumerate(record["leaves"])
        }
        try:
            arrays = self._manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(target)))[
                "arrays"
            ]
        except Exception as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is partial or corrupted: {e}") from e
        if sorted(arrays) != sorted(target):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is missing arrays")
        host = _host_leaves(arrays)
        if tree_checksum(host) != record["checksum"]:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is corrupted: checksum mismatch, refusing to load it"
            )
        leaves = []
        for a, (_, _, impl) in zip(host, record["leaves"]):
            leaves.append(jax.random.wrap_key_data(a, impl=impl) if impl else a)
        return jax.tree_util.tree_unflatten(treedef, leaves), record["user"]

    def verify(self, like: PyTree, step: int) -> bool:
        """True when ``step`` restores cleanly into ``like``'s structure."""
        try:
            self.restore(like, step=step)
        except CheckpointError:
            return False
        return True

    def quarantine(self, step: int) -> Path:
        """Move a damaged step out of the way (to ``<directory>/corrupt/<step>-<time>``).

        With several processes every process calls it (they reach the same verdict from the
        same files); process 0 moves the step, the others wait for it.
        """
        src = self.directory / str(int(step))
        tag = f"lstm_jax.checkpoint.quarantine:{self.directory.name}:{int(step)}"
        _barrier(tag + ":before")  # nobody still reads the step
        dst = self.directory / "corrupt" / f"{int(step)}-{time.time_ns()}"
        if jax.process_index() == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.exists():
                shutil.move(str(src), str(dst))
        _barrier(tag + ":after")
        self._manager.reload()
        return dst

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- one-shot helpers
def save(directory, step: int, tree: PyTree, *, meta: Optional[dict] = None, keep: Optional[int] = None) -> Path:
    """Save ``tree`` as ``step`` under ``directory`` (atomic; see ``CheckpointStore.save``)."""
    with CheckpointStore(directory, keep=keep) as store:
        return store.save(step, tree, meta=meta)


def restore(directory, like: PyTree, *, step: Optional[int] = None) -> tuple[PyTree, dict]:
    """Restore ``step`` (default latest) into ``like``'s structure, verified by checksum."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"expected a checkpoint directory, got missing path {directory}")
    with CheckpointStore(directory, keep=None) as store:
        return store.restore(like, step=step)


def latest_step(directory) -> Optional[int]:
    """Newest finalised step under ``directory`` (None if none). Does not verify it."""
    if not os.path.isdir(directory):
        return None
    with CheckpointStore(directory, keep=None) as store:
        return store.latest_step()


def all_steps(directory) -> list:
    """All finalised steps under ``directory``, ascending."""
    if not os.path.isdir(directory):
        return []
    with CheckpointStore(directory, keep=None) as store:
        return store.all_steps()
