"""Start N local processes of one command as one ``jax.distributed`` job (multi-host on one machine).

    python benchmarks/launch_local.py -n 2 -- python experiments/weather_forecast.py --quick
    python benchmarks/launch_local.py -n 2 --devices-per-process 2 -- python my_script.py

Each process gets ``LSTM_JAX_COORDINATOR=127.0.0.1:<free port>``, ``LSTM_JAX_NUM_PROCESSES=N``
and ``LSTM_JAX_PROCESS_ID=i`` (what ``lstm_jax.distributed.initialize_from_env`` reads; every
``experiments/`` script calls it), ``JAX_PLATFORMS=cpu`` unless ``--platform`` says otherwise,
and with ``--devices-per-process K`` K forced host devices. Everything stays on the loopback
interface. Process 0's output goes to the terminal; with ``--logs DIR`` every process's
stdout/stderr goes to ``DIR/process_<i>.log`` instead (``--quiet-others`` drops the output of
processes 1..N-1). When one process fails, the others are killed; the exit code is the
first failure's (0 when all succeed). ``--timeout S`` kills the whole job after S seconds (exit 124).

Importable for tests and benchmarks: ``free_port()``, ``process_env(...)``, ``start(...)``,
``wait(...)``, ``stop(...)``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Optional

__all__ = ["free_port", "process_env", "start", "wait", "stop", "main"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(
    process_id: int,
    num_processes: int,
    port: int,
    *,
    base: Optional[Mapping[str, str]] = None,
    devices_per_process: Optional[int] = None,
    platform: Optional[str] = "cpu",
) -> dict:
    """The environment of process ``process_id`` of a local ``num_processes``-process job."""
    env = dict(os.environ if base is None else base)
    env.update(
        LSTM_JAX_COORDINATOR=f"127.0.0.1:{port}",
        LSTM_JAX_NUM_PROCESSES=str(num_processes),
        LSTM_JAX_PROCESS_ID=str(process_id),
    )
    if platform:
        env["JAX_PLATFORMS"] = platform
    if devices_per_process:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={int(devices_per_process)}"])
    return env


def start(
    command: Sequence[str],
    num_processes: int,
    *,
    port: Optional[int] = None,
    base_env: Optional[Mapping[str, str]] = None,
    devices_per_process: Optional[int] = None,
    platform: Optional[str] = "cpu",
    logs=None,
    quiet_others: bool = False,
    cwd=None,
) -> list:
    """Start ``command`` ``num_processes`` times as one job; returns the ``Popen`` objects.

    ``logs``: a folder for ``process_<i>.log`` files (stdout and stderr of each process);
    without it process 0 inherits the terminal and the others too (or are silenced with
    ``quiet_others``). Each process leads its own process group, so ``stop`` ends its children too.
    """
    if num_processes < 1:
        raise ValueError(f"expected num_processes >= 1, got {num_processes}")
    port = free_port() if port is None else int(port)
    procs = []
    try:
        for i in range(num_processes):
            env = process_env(
                i, num_processes, port, base=base_env, devices_per_process=devices_per_process, platform=platform
            )
            out: Optional[IO] = None
            if logs is not None:
                Path(logs).mkdir(parents=True, exist_ok=True)
                out = open(Path(logs) / f"process_{i}.log", "w")
            elif quiet_others and i > 0:
                out = open(os.devnull, "w")
            try:
                proc = subprocess.Popen(
                    list(command),
                    env=env,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT if out is not None else None,
                    start_new_session=True,
                )
            finally:
                if out is not None:
                    out.close()  # the child holds its own descriptor
            procs.append(proc)
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: Sequence[subprocess.Popen], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to every still-running process (and its process group), then reap them."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def wait(procs: Sequence[subprocess.Popen], timeout: Optional[float] = None, *, grace: float = 10.0) -> list:
    """Wait for every process; returns their exit codes (``None`` for one killed at the timeout).

    When a process fails (non-zero exit) the others get ``grace`` seconds to notice, then are
    killed: a job whose peer died otherwise waits in a collective until JAX's heartbeat
    timeout. Past ``timeout`` seconds everything still running is killed.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failed_at = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                return codes
            now = time.monotonic()
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = now
            if (failed_at is not None and now - failed_at > grace) or (deadline is not None and now > deadline):
                running = [p for p, c in zip(procs, codes) if c is None]
                stop(running)
                return [None if p in running else p.returncode for p in procs]
            time.sleep(0.05)
    except BaseException:
        stop(procs)
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch_local.py",
        description="run COMMAND as N local processes of one jax.distributed job",
        epilog="example: python benchmarks/launch_local.py -n 2 -- python experiments/char_lm.py --quick",
    )
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="processes (default: %(default)s)")
    parser.add_argument("--devices-per-process", type=int, help="forced host (CPU) devices per process")
    parser.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS of the processes ('' keeps yours)")
    parser.add_argument("--logs", help="folder for process_<i>.log (default: output to the terminal)")
    parser.add_argument("--quiet-others", action="store_true", help="drop the output of processes 1..N-1")
    parser.add_argument("--timeout", type=float, help="kill the job after this many seconds (exit 124)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("expected a command after --")
    procs = start(
        command,
        args.num_processes,
        port=args.port,
        devices_per_process=args.devices_per_process,
        platform=args.platform or None,
        logs=args.logs,
        quiet_others=args.quiet_others,
    )
    try:
        codes = wait(procs, args.timeout)
    except KeyboardInterrupt:
        stop(procs, signal.SIGINT)  # let fit save its checkpoint
        return 130
    if any(c is None for c in codes):
        failures = [c for c in codes if c not in (None, 0)]
        return failures[0] if failures else 124
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
