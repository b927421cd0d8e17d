"""Every docstring example (``>>>`` lines) in ``lstm_jax`` runs as a doctest: one case per module.

Modules are discovered with ``pkgutil.walk_packages``, so a module added, moved or renamed is
picked up without editing this file. Each example runs with ``jax``, ``jnp`` (``jax.numpy``)
and ``np`` (``numpy``) in its globals, besides the module's own names, in a fresh temporary
working directory (examples that write files leave nothing behind). A module that cannot be
imported (for instance because an optional dependency is missing) fails its case with the
reason; with the ``test`` extra installed every module imports.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstm_jax

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The suite runs with jax_numpy_rank_promotion="raise" (tests/conftest.py). Keras' own JAX code
# broadcasts implicitly, so the from_keras example runs with rank promotion allowed, as
# tests/test_interop.py does; every other module's examples run under "raise".
ALLOW_RANK_PROMOTION = {"lstm_jax.interop", "lstm_jax.interop.keras_io"}

_WALK_ERRORS: dict[str, str] = {}


def _record_walk_error(name: str) -> None:
    # walk_packages imports every package to list its children and, without onerror,
    # silently drops a package whose import fails; record it so its case fails instead.
    _WALK_ERRORS[name] = "import failed while listing the package's modules"


def _module_names() -> list[str]:
    names = {lstm_jax.__name__}
    for info in pkgutil.walk_packages(lstm_jax.__path__, prefix=f"{lstm_jax.__name__}.", onerror=_record_walk_error):
        names.add(info.name)
    names.update(_WALK_ERRORS)
    return sorted(names)


MODULES = _module_names()


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:  # ModuleNotFoundError included
        missing = f" (missing module {e.name!r}; install the 'test' extra)" if e.name else ""
        pytest.fail(f"cannot import {name}{missing}: {e}", pytrace=False)


def _doctests(module) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    extraglobs = {"jax": jax, "jnp": jnp, "np": np}
    return [t for t in finder.find(module, module.__name__, extraglobs=extraglobs) if t.examples]


def test_modules_were_discovered():
    """Discovery works: the walk finds the core modules and at least one docstring example."""
    assert {"lstm_jax.cells", "lstm_jax.layers", "lstm_jax.scan"} <= set(MODULES), MODULES
    assert sum(len(_doctests(importlib.import_module(m))) for m in ("lstm_jax.cells", "lstm_jax.layers")) > 0


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name in _WALK_ERRORS:
        _import(name)  # raises the real error if there is one
    module = _import(name)
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    report = io.StringIO()
    promotion = "allow" if name in ALLOW_RANK_PROMOTION else jax.config.jax_numpy_rank_promotion
    with jax.numpy_rank_promotion(promotion):
        for test in _doctests(module):
            runner.run(test, out=report.write, clear_globs=True)
    if runner.failures:
        pytest.fail(
            f"{runner.failures} of {runner.tries} docstring examples in {name} failed:\n{report.getvalue()}",
            pytrace=False,
        )
