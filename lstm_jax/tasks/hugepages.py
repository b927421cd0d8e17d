"""Huge pages and buffer reuse for glibc's ``malloc``, which XLA:CPU allocates its buffers with.

XLA:CPU allocates its temporaries and outputs anew on every call of a compiled program, and
the kernel maps fresh memory in one 4 KiB page at a time, zeroing each. Two sets of glibc
tunables (``TUNABLES``) help:

* transparent huge pages for ``malloc`` (``glibc.malloc.hugetlb=1``, glibc >= 2.35, THP
  ``madvise`` or ``always``): the default Czech run of ``experiments/speech_ctc.py`` on this
  project's 2-core EPYC took 2.0 M minor page faults instead of 103.6 M, 217 s of system time
  instead of 418, and trained its 2,800 updates in 1,954 s instead of 2,111 (7 % faster);
* keeping freed memory for the next call: ``malloc`` serves a block of 32 MiB or more (a
  threshold it cannot raise) with a fresh ``mmap``, a thread's arena gives large blocks back,
  and the heap is trimmed, so a program whose buffers are that large (the activations of a
  train step) faults all of them in again on every call. With ``mmap`` off, one arena and no
  trimming (``glibc.malloc.mmap_max=0``, ``arena_max=1``, ``trim_threshold`` at its largest) the
  next call reuses the same, already mapped memory: on a 2-core Xeon the CPU kernel's
  training forward at ``(b, t, d_in, d_h) = (64, 256, 64, 256)`` went from 65 to 41 ms and its
  whole train step from 180 to 146 ms. The price: the process keeps its peak heap until it
  exits.

Numbers do not change, only speed.

glibc reads its tunables only at start-up, so a running process cannot turn this on. The
experiment and benchmark scripts therefore restart themselves once with the tunables set, in
the same process (``os.execv``), before any work (``reexec``, called by
``lstm_jax.tasks.cli.run_main`` for a script's own command line). Set ``LSTM_JAX_HUGEPAGES=0``
to keep the process as started; a tunable you set yourself is kept. In your own programs,
start Python with the variable:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=18446744073709551615 python train.py
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from typing import Optional

__all__ = ["TUNABLE", "TUNABLES", "OPT_OUT", "supported", "active", "environment", "reexec"]

TUNABLE = "glibc.malloc.hugetlb=1"  # its presence marks a process as restarted
TUNABLES = (
    TUNABLE,
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.arena_max=1",
    "glibc.malloc.trim_threshold=18446744073709551615",
)
OPT_OUT = "LSTM_JAX_HUGEPAGES"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> Optional[tuple]:
    name, version = platform.libc_ver()
    if name != "glibc":
        return None
    try:
        return tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return None


def _thp_mode(path: str = _THP) -> Optional[str]:
    """The selected THP mode (``always``, ``madvise`` or ``never``), or None where unreadable."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def supported(*, glibc: Optional[tuple] = None, thp: Optional[str] = None) -> bool:
    """Whether ``TUNABLE`` does anything here: Linux, glibc >= 2.35, THP not ``never``.

    ``glibc`` (e.g. ``(2, 36)``) and ``thp`` (``"madvise"``) default to this machine's.
    """
    if not sys.platform.startswith("linux"):
        return False
    glibc = _glibc_version() if glibc is None else glibc
    thp = _thp_mode() if thp is None else thp
    return glibc is not None and glibc >= (2, 35) and thp in ("always", "madvise")


def active(environ: Optional[Mapping] = None) -> bool:
    """Whether ``GLIBC_TUNABLES`` in ``environ`` (default ``os.environ``) sets ``hugetlb``."""
    environ = os.environ if environ is None else environ
    return any(t.startswith("glibc.malloc.hugetlb=") for t in environ.get("GLIBC_TUNABLES", "").split(":"))


def environment(environ: Mapping) -> Optional[dict]:
    """The environment to restart with (``TUNABLES`` added to ``GLIBC_TUNABLES``, each unless the
    user set that tunable already), or None to keep the process as it is: already set, opted
    out (``LSTM_JAX_HUGEPAGES=0``), or not ``supported``.

    >>> environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None     # the user's choice
    True
    >>> environment({"LSTM_JAX_HUGEPAGES": "0"}) is None
    True
    """
    if active(environ) or environ.get(OPT_OUT, "1") == "0" or not supported():
        return None
    env = dict(environ)
    old = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    have = {t.split("=", 1)[0] for t in old}
    env["GLIBC_TUNABLES"] = ":".join(old + [t for t in TUNABLES if t.split("=", 1)[0] not in have])
    return env


def reexec(environ: Optional[MutableMapping] = None) -> None:
    """Restart this Python process with ``TUNABLE`` set (``os.execv``, same pid and command
    line, ``sys.orig_argv``); the new process sees the tunable set and does not restart again.
    Returns only when there is nothing to do (see ``environment``).
    Call it first in a script's ``__main__``, before threads or files are opened."""
    env = environment(os.environ if environ is None else environ)
    if env is None or not getattr(sys, "orig_argv", None) or sys.argv[0] in ("", "-", "-c"):
        return  # nothing to do, or no command line that could run again (stdin, -c, a REPL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
