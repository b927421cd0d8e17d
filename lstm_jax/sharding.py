"""Data parallelism with ``jax.sharding``: one mesh axis ``"data"`` over the devices, the batch
split along it, parameters and optimizer state replicated.

The same code runs on one device (a 1-device mesh) and on many: XLA's SPMD partitioner turns
the mean over the batch into an all-reduce of the gradients. On several hosts call
``jax.distributed.initialize()`` first; ``data_mesh()`` then spans every process's devices and
``shard_batch`` builds the global batch from each process's slice of it.

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
    """Put every leaf of ``tree`` (params, optimizer state, keys) on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Place a host batch (leaves ``[B, ...]``, the GLOBAL batch) split along axis 0.

    With several processes each process passes the same global batch (or at least its own
    rows of it) and contributes only its ``B / process_count`` contiguous rows.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    p, count = jax.process_index(), jax.process_count()

    def put(a):
        a = np.asarray(a)
        rows = a.shape[0] // count
        local = a[p * rows : (p + 1) * rows]
        return jax.make_array_from_process_local_data(sharding, local, a.shape)

    return jax.tree_util.tree_map(put, batch)


def constrain_batch(batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """Inside jit: ask for ``batch`` leaves split over ``"data"`` along ``axis``."""
    spec = PartitionSpec(*([None] * axis + [DATA_AXIS]))
    return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, spec))
