"""Test-wide settings: accidental rank promotion (broadcasting) is an error; XLA compiles
with cheap optimisation (the suite is dominated by compile time of tiny programs)."""

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "lstm_jax_hypothesis"))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
