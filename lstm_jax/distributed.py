"""Several processes (hosts) as one JAX job: start the runtime from the environment, know who
is process 0, agree at barriers, gather results.

The same script runs on every host. ``initialize_from_env()`` (called by every ``experiments/``
script before it touches a device) starts ``jax.distributed`` when the environment describes a
multi-process job, and does nothing otherwise, so a plain ``python script.py`` is unchanged:

* ``LSTM_JAX_COORDINATOR`` (``host:port`` of process 0, reachable by every process),
  ``LSTM_JAX_NUM_PROCESSES`` and ``LSTM_JAX_PROCESS_ID`` (``0 .. N-1``): any scheduler
  (Kubernetes/GKE indexed Jobs, plain ``ssh``, ``benchmarks/launch_local.py``);
* Slurm: a step started by ``srun`` with more than one task (``SLURM_STEP_NODELIST`` and
  ``SLURM_NTASKS > 1``) uses JAX's own Slurm detection: ``jax.distributed.initialize()``;
* ``LSTM_JAX_DISTRIBUTED=auto``: ``jax.distributed.initialize()`` with JAX's auto-detection
  (Open MPI, Cloud TPU, Kubernetes with the ``kubernetes`` package, Slurm);
  ``LSTM_JAX_DISTRIBUTED=off`` never initialises.

On CPU the cross-process collectives go over gloo (``jax_cpu_collectives_implementation``).
After initialisation ``jax.devices()`` lists every process's devices, ``fit`` trains
data-parallel over all of them, and each process feeds only its own rows of every global batch.

>>> initialize_from_env({})        # no variables: a single-process run, nothing happens
False
>>> is_main_process(), process_count()
(True, 1)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import jax
import numpy as np

from lstm_jax.typing import PyTree

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "ENV_MODE",
    "distributed_env",
    "initialize_from_env",
    "is_main_process",
    "process_count",
    "barrier",
    "gather",
]

ENV_COORDINATOR = "LSTM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "LSTM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LSTM_JAX_PROCESS_ID"
ENV_MODE = "LSTM_JAX_DISTRIBUTED"


def distributed_env(environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """The ``jax.distributed.initialize`` arguments the environment asks for, or None.

    ``{}`` means "let JAX detect them" (Slurm under ``srun``, ``LSTM_JAX_DISTRIBUTED=auto``);
    otherwise ``coordinator_address``, ``num_processes`` and ``process_id`` from the
    ``LSTM_JAX_*`` variables. ``ValueError`` for an incomplete or malformed set.
    """
    env = os.environ if environ is None else environ
    mode = env.get(ENV_MODE, "").strip().lower()
    if mode in ("off", "0", "false", "no"):
        return None
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    given = [n for n in names if env.get(n)]
    if given:
        if len(given) != len(names):
            missing = [n for n in names if n not in given]
            raise ValueError(f"expected all of {', '.join(names)} for a multi-process run, got no {', '.join(missing)}")
        try:
            count, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
        except ValueError as e:
            raise ValueError(
                f"expected integers in {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, got "
                f"{env[ENV_NUM_PROCESSES]!r} and {env[ENV_PROCESS_ID]!r}"
            ) from e
        address = env[ENV_COORDINATOR]
        if ":" not in address:
            raise ValueError(f"expected {ENV_COORDINATOR} as host:port, got {address!r}")
        if count < 1 or not 0 <= pid < count:
            raise ValueError(f"expected 0 <= {ENV_PROCESS_ID} < {ENV_NUM_PROCESSES}, got {pid} and {count}")
        return {"coordinator_address": address, "num_processes": count, "process_id": pid}
    if mode == "auto":
        return {}
    if env.get("SLURM_STEP_NODELIST") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return {}  # srun with several tasks: JAX's SlurmCluster fills in the arguments
    if mode not in ("", "on"):
        raise ValueError(f"expected {ENV_MODE} to be auto, on or off, got {env[ENV_MODE]!r}")
    return None


def _use_gloo_on_cpu() -> None:
    """Cross-process collectives on CPU need an implementation (gloo); GPUs/TPUs ignore it."""
    try:
        current = jax.config.values.get("jax_cpu_collectives_implementation")
        if current in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, KeyError, ValueError):  # a JAX without the option
        pass


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _pin_to_loopback(args: dict, kwargs: dict) -> None:
    """A job whose coordinator is on 127.0.0.1 lives on this machine: keep the coordinator's
    socket and gloo's connections on the loopback interface too (JAX's defaults bind the
    coordinator to every interface and gloo to the host name's address)."""
    import inspect

    port = args["coordinator_address"].rsplit(":", 1)[1]
    if "coordinator_bind_address" in inspect.signature(jax.distributed.initialize).parameters:
        kwargs.setdefault("coordinator_bind_address", f"127.0.0.1:{port}")
    try:
        from functools import partial

        from jax._src import xla_bridge

        make = xla_bridge._jax.make_gloo_tcp_collectives
        if not isinstance(make, partial):
            xla_bridge._jax.make_gloo_tcp_collectives = partial(make, hostname="127.0.0.1")
    except (ImportError, AttributeError):  # another JAX layout: gloo keeps its default address
        pass


def initialize_from_env(environ: Optional[Mapping[str, str]] = None, **kwargs) -> bool:
    """Start ``jax.distributed`` when the environment describes a multi-process job.

    Call it first, before anything touches a device (``jax.devices()``, an array). Returns
    True when the runtime is (now, or already) initialised, False for a single-process run.
    ``kwargs`` go to ``jax.distributed.initialize`` (e.g. ``initialization_timeout``,
    ``heartbeat_timeout_seconds``, ``local_device_ids``). A coordinator on ``127.0.0.1`` (a
    local test job) keeps all of the job's traffic on the loopback interface.
    """
    if jax.distributed.is_initialized():
        return True
    args = distributed_env(environ)
    if args is None:
        return False
    _use_gloo_on_cpu()
    if "coordinator_address" in args and _is_loopback(args["coordinator_address"]):
        _pin_to_loopback(args, kwargs)
    jax.distributed.initialize(**args, **kwargs)
    return True


def process_count() -> int:
    """Processes in the job (1 without ``jax.distributed``)."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0 (the one that logs and writes results); True in a single-process run."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(tree: PyTree) -> PyTree:
    """Host NumPy copies of the GLOBAL values of ``tree``'s arrays, on every process.

    Replicated and single-process arrays are just fetched; arrays split over processes (an
    ensemble's members, a sharded batch) are all-gathered (a collective: every process calls it).
    PRNG keys stay keys (process-local ones, with the same key data).
    """

    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(one, tree)
