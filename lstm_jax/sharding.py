"""Data parallelism with ``jax.sharding``: one mesh axis ``"data"`` over the devices, the batch
split along it, parameters and optimizer state replicated.

The same code runs on one device (a 1-device mesh) and on many: XLA's SPMD partitioner turns
the mean over the batch into an all-reduce of the gradients. On several hosts call
``jax.distributed.initialize()`` first (``lstm_jax.distributed.initialize_from_env``);
``data_mesh()`` then spans every process's devices, ``process_rows`` says which rows of a
global batch this process feeds, and ``shard_batch`` builds the global batch from each
process's rows (``jax.make_array_from_process_local_data``).

>>> mesh = data_mesh()                                    # all devices
>>> state = replicate({"w": jnp.ones(3)}, mesh)
>>> batch = shard_batch({"x": np.ones((4 * len(jax.devices()), 2))}, mesh)   # B % devices == 0
>>> step = jax.jit(lambda s, b: (s, b["x"].sum()), out_shardings=(replicated(mesh), replicated(mesh)))
>>> float(step(state, batch)[1]) == 8 * len(jax.devices())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lstm_jax.typing import PyTree

__all__ = [
    "DATA_AXIS",
    "data_mesh",
    "batch_sharding",
    "replicated",
    "replicate",
    "process_rows",
    "shard_batch",
    "constrain_batch",
    "check_batch_divisible",
]

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence] = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: ``jax.devices()``, i.e. every
    local device on one host, every device of every process after ``jax.distributed.initialize``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("expected at least one device, got an empty list")
    return Mesh(np.array(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``"data"`` axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raise unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"expected {what} to be a multiple of the number of devices ({n}) for data parallelism, "
            f"got {batch_size}; change it or pass devices=... to use fewer devices"
        )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put every leaf of ``tree`` (params, optimizer state, keys) on every device of ``mesh``.

    With several processes every process passes the same values (same seed, same checkpoint)
    and each fills its own devices from its local copy.
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1 or sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda a: _to_global(a, sharding), tree)


def _to_global(a, sharding: NamedSharding):
    """One leaf as a global array with ``sharding``, from this process's (identical) copy."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:  # already global
        if a.sharding.is_equivalent_to(sharding, a.ndim):
            return a
        return jax.jit(lambda x: x, out_shardings=sharding)(a)
    if _is_key(a):
        data = _to_global(np.asarray(jax.random.key_data(a)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    host = np.asarray(a)
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def process_rows(mesh: Mesh, rows: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a ``[rows, ...]`` global batch that live on THIS process's
    devices under ``batch_sharding(mesh)``, i.e. the rows this process has to feed.

    ``(0, rows)`` in a single-process run. With ``P`` processes of equal device counts on
    ``data_mesh()`` process ``p`` feeds rows ``p * rows / P`` to ``(p + 1) * rows / P``.

    >>> process_rows(data_mesh(), 8)
    (0, 8)
    """
    if jax.process_count() == 1:
        return 0, int(rows)
    index = batch_sharding(mesh).addressable_devices_indices_map((int(rows),))
    spans = sorted({s[0].indices(rows)[:2] for s in index.values() if s is not None})
    if not spans:
        raise ValueError(
            f"expected the mesh to include devices of process {jax.process_index()}, got none of them; "
            "every process of a multi-process job must take part (use the default devices)"
        )
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ValueError(
            f"expected this process's devices to hold contiguous rows of the batch, got {spans}; "
            "order the mesh's devices by process (data_mesh() does)"
        )
    return int(start), int(stop)


def _is_key(a) -> bool:
    return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def shard_batch(batch: PyTree, mesh: Mesh, *, global_rows: Optional[int] = None) -> PyTree:
    """Place a batch split along axis 0 of its leaves.

    Without ``global_rows`` the leaves are the GLOBAL batch ``[B, ...]`` (every process passes
    the same one, or at least its own rows of it); each process contributes only its
    ``process_rows(mesh, B)``. With ``global_rows=B`` the leaves are only this process's rows
    (``[stop - start, ...]`` of ``process_rows(mesh, B)``) and the global ``[B, ...]`` batch is
    assembled from every process's part: that is what ``fit`` does, so that a process never
    reads the other processes' rows. PRNG key leaves (an ensemble's member keys) are split like
    any other array.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def put(a):
        if _is_key(a):
            impl = jax.random.key_impl(a)
            return jax.random.wrap_key_data(put(np.asarray(jax.random.key_data(a))), impl=impl)
        a = np.asarray(a)
        if global_rows is not None:
            return jax.make_array_from_process_local_data(sharding, a, (int(global_rows),) + a.shape[1:])
        start, stop = process_rows(mesh, a.shape[0])
        return jax.make_array_from_process_local_data(sharding, a[start:stop], a.shape)

    return jax.tree_util.tree_map(put, batch)


def constrain_batch(batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """Inside jit: ask for ``batch`` leaves split over ``"data"`` along ``axis``."""
    spec = PartitionSpec(*([None] * axis + [DATA_AXIS]))
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, spec))
