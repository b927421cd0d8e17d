"""PRNG keys of both kinds, accepted everywhere a function of lstm_jax takes a key.

JAX has two kinds of key: new-style typed keys (``jax.random.key(seed)``, dtype
``key<fry>``) and legacy raw keys (``jax.random.PRNGKey(seed)``, ``uint32[..., 2]``). Most
tutorials and user code still make legacy keys; lstm_jax works internally with typed keys
and converts legacy ones with ``jax.random.wrap_key_data``, which keeps the same random bits:
``as_key(jax.random.PRNGKey(s))`` and ``jax.random.key(s)`` give identical numbers.

>>> k = as_key(jax.random.PRNGKey(0))
>>> bool(jnp.all(jax.random.key_data(k) == jax.random.key_data(jax.random.key(0))))
True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.typing import PRNGKey

__all__ = ["as_key", "is_key", "split"]


def _describe(key: Any) -> str:
    if hasattr(key, "dtype") and hasattr(key, "shape"):
        return f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
    return f"{type(key).__name__} {key!r}"


def is_key(key: Any) -> bool:
    """Whether ``key`` is a typed key or a legacy ``uint32[..., 2]`` key (any batch shape)."""
    if not (hasattr(key, "dtype") and hasattr(key, "shape")):
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return True
    return key.dtype == jnp.uint32 and len(key.shape) >= 1 and key.shape[-1] == 2


def as_key(key: Any, name: str = "key") -> PRNGKey:
    """``key`` as a typed PRNG key array (shape ``key.shape`` or ``key.shape[:-1]`` if legacy).

    Args:
      key: ``jax.random.key(seed)`` (returned as is) or ``jax.random.PRNGKey(seed)``
        (wrapped, same bits); a batch of either kind (``[n]`` typed, ``[n, 2]`` legacy).
      name: the argument's name for the error message.

    Raises:
      TypeError: for anything else (a float array, a Python number, None), naming what was
        expected and what was given.
    """
    if not is_key(key):
        raise TypeError(
            f"expected {name} to be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {_describe(key)}"
        )
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(jnp.asarray(key))


def split(key: Any, num: int = 2, name: str = "key") -> PRNGKey:
    """``jax.random.split`` of ``as_key(key)``: a ``[num]`` typed key array whatever the input kind."""
    return jax.random.split(as_key(key, name), num)
