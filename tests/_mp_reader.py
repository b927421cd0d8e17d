"""A reader that polls a checkpoint directory while a multi-process job writes it.

    python tests/_mp_reader.py DIR STOPFILE OUT.json

Every step that ``CheckpointStore.all_steps()`` lists is restored at once and checked (files,
checksum, structure); the reader stops after its final pass once STOPFILE exists. OUT.json
records each step seen, whether it restored, and how many polls ran while the job was writing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import jax

from lstm_jax import checkpoint as C
from lstm_jax.train import init_train_state

_spec = importlib.util.spec_from_file_location("_train_script", Path(__file__).parent / "_train_script.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


def _listing(directory: Path) -> list:
    """The directory's entries and which of them have a manifest (cheap: no orbax)."""
    return [(name, (directory / name / C.MANIFEST).exists()) for name in sorted(os.listdir(directory))]


def main(argv=None):
    directory, stopfile, out = (Path(a) for a in (argv or sys.argv[1:]))
    fresh = init_train_state(script.init_params(jax.random.key(0)), script.OPTIMIZER, jax.random.key(1))
    like = {"state": fresh, "best": fresh.params}
    checked: dict = {}
    polls = 0
    deadline = time.monotonic() + 300
    store = None
    listing: list = []
    Path(out).with_suffix(".ready").write_text(repr(time.time()))
    try:
        while time.monotonic() < deadline:
            final = stopfile.exists()
            if store is None and directory.is_dir():
                store = C.CheckpointStore(directory, keep=None)
            now = _listing(directory) if store is not None else []
            if store is not None and (now != listing or final):  # a step appeared, was renamed or committed
                listing = now
                for step in store.all_steps():
                    if str(step) not in checked:
                        try:
                            _, meta = store.restore(like, step=step)
                            checked[str(step)] = {"ok": True, "position": [meta["epoch"], meta["batch"]]}
                        except C.CheckpointError as e:
                            checked[str(step)] = {"ok": False, "error": str(e)[:300]}
                        listing = []  # look again: the writer may have moved on meanwhile
            if final:
                break
            polls += 1
            time.sleep(0.01)
    finally:
        if store is not None:
            store.close()
    Path(out).write_text(json.dumps({"steps": checked, "polls_while_running": polls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
