"""Helpers shared by the weight converters: tensor conversion, gate counts, lazy torch."""

from __future__ import annotations

import sys
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import GRUParams, LSTMParams, RNNParams
from lstm_jax.typing import Array, DType

__all__ = ["CellParams"]

CellParams = Union[LSTMParams, GRUParams, RNNParams]
_N_GATES = {LSTMParams: 4, GRUParams: 3, RNNParams: 1}


# --------------------------------------------------------------------------- helpers
def _torch_to_jax(tensor, dtype: Optional[DType]) -> Array:
    """A torch tensor as a jax array, keeping its floating dtype unless ``dtype`` is given."""
    import torch

    t = tensor.detach().cpu()
    target = dtype
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: go through float32
        t = t.float()
        target = jnp.bfloat16 if dtype is None else dtype
    a = jnp.asarray(t.numpy())
    return a if target is None else a.astype(target)


def _jax_of(a, dtype: Optional[DType]) -> Array:
    if hasattr(a, "value") and not isinstance(a, (np.ndarray, jax.Array)):
        a = a.value
    a = jnp.asarray(a)
    return a if dtype is None else a.astype(dtype)


def _torch_nn():
    """``torch.nn``, or None if torch was never imported (then the argument cannot be a torch
    module, and torch need not be imported just to say so)."""
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.nn
