"""Huge pages for glibc's ``malloc``, which XLA:CPU allocates its buffers with.

XLA:CPU allocates its temporaries anew on every call of a compiled program, and the kernel
maps them in one 4 KiB page at a time. With transparent huge pages for ``malloc``
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35, THP ``madvise`` or ``always``) the
default Czech run of ``experiments/speech_ctc.py`` on this project's 2-core EPYC took 2.0 M
minor page faults instead of 103.6 M, 217 s of system time instead of 418, and trained its
2,800 updates in 1,954 s instead of 2,111 (7 % faster), with the same losses and error rates.
Turning off ``malloc``'s ``mmap`` and heap trimming instead did not reduce the faults.

glibc reads its tunables only at start-up, so a running process cannot turn this on. The
experiment and benchmark scripts therefore restart themselves once with the tunable set, in
the same process (``os.execv``), before any work (``reexec``, called by
``lstm_jax.tasks.cli.run_main`` for a script's own command line). Numbers do not change, only
speed. Set ``LSTM_JAX_HUGEPAGES=0`` to keep the process as started. In your own programs,
start Python with the variable:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, MutableMapping
from typing import Optional

__all__ = ["TUNABLE", "OPT_OUT", "supported", "active", "environment", "reexec"]

TUNABLE = "glibc.malloc.hugetlb=1"
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
    """The environment to restart with, or None to keep the process as it is: already set,
    opted out (``LSTM_JAX_HUGEPAGES=0``), or not ``supported``.

    >>> environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None     # the user's choice
    True
    >>> environment({"LSTM_JAX_HUGEPAGES": "0"}) is None
    True
    """
    if active(environ) or environ.get(OPT_OUT, "1") == "0" or not supported():
        return None
    env = dict(environ)
    old = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = f"{old}:{TUNABLE}" if old else TUNABLE
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
