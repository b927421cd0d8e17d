"""Building and loading the CPU kernel of ``impl="cpu_kernel"`` (``csrc/lstm_cpu.cc``).

The kernel is C++ against XLA's FFI headers (``jax.ffi.include_dir()``, shipped with jaxlib),
with its own GEMM (no BLAS library), run on XLA's own intra-op threads (no OpenMP runtime). It
is compiled with the system ``g++`` (or ``$CXX``) the first time it is needed -- or ahead of
time with ``python -m lstm_jax.backends.cpu_build`` -- for this machine (``-march=native``), into a cache
folder (``$LSTM_JAX_CACHE``, default ``~/.cache/lstm_jax``) keyed by the sources (``csrc/*.cc``
and ``*.h``), the flags, jaxlib's version, the compiler and this CPU's model and instruction-set
flags (so a home folder shared by different machines never loads a build made for another
CPU), and loaded with ``ctypes``. Compiling at
first use rather than at ``pip install`` time keeps the package a pure-Python wheel that installs
without a compiler and without jaxlib in the build environment; the compiled library is reused
across processes.

Without a compiler nothing fails at import: ``status()`` says why the kernel is
missing, ``impl="cpu_kernel"`` raises that reason, and ``impl="auto"`` runs the XLA backends.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import jax

__all__ = ["HEADERS", "KernelStatus", "SOURCE", "TARGETS", "build", "status"]

SOURCE = Path(__file__).with_name("csrc") / "lstm_cpu.cc"
# next to SOURCE, included by it
HEADERS = ("backward.h", "fast_math.h", "packed_gemm.h", "recurrence.h", "thread_pool.h", "weight_grads.h")
# FFI target name -> exported handler symbol
TARGETS = {
    "lstm_jax_cpu_forward": "LstmCpuForward",
    "lstm_jax_cpu_forward_train": "LstmCpuForwardTrain",
    "lstm_jax_cpu_backward": "LstmCpuBackward",
    "lstm_jax_cpu_weight_grads": "LstmCpuWeightGrads",
}
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-pthread", "-std=c++17", "-shared", "-fPIC", "-w")


class KernelStatus(NamedTuple):
    """Whether the CPU kernel is loaded (``ok``), the library's path, and otherwise why not."""

    ok: bool
    path: Optional[str]
    reason: Optional[str]


def _cache_dir() -> Path:
    return Path(os.environ.get("LSTM_JAX_CACHE", Path.home() / ".cache" / "lstm_jax")) / "kernels"


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.cache  # read once per process: ``backends.choose`` asks (via ``avx512``) on every trace
def _cpu() -> str:
    """This CPU as ``-march=native`` sees it: the model name and feature flags of
    ``/proc/cpuinfo`` (first processor) where there is one, else the machine type."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    keep = ("model name", "flags", "features", "cpu part", "isa")
    seen = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in keep and key not in seen:
            seen[key] = value.strip()
    return "\n".join(f"{k}={v}" for k, v in sorted(seen.items())) or platform.machine()


def avx512() -> bool:
    """Whether this CPU has AVX-512F (the kernel is then built for 16-float vectors; see
    ``backends.AUTO_WHEN`` for what that changes in ``impl="auto"``)."""
    flags = next((line for line in _cpu().splitlines() if line.startswith(("flags=", "features="))), "")
    return "avx512f" in flags.partition("=")[2].split()


def _sources() -> list:
    return [SOURCE.read_text(), *(SOURCE.with_name(h).read_text() for h in HEADERS)]


def _flags() -> tuple:
    """``FLAGS``, and on x86 full-width vectors for the loops the compiler vectorises (the gate
    updates): GCC's default for AVX-512 CPUs is 256-bit vectors there, half the width of the
    kernel's own GEMM registers."""
    return FLAGS + (("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ())


def _command(cxx: str, out: Path) -> list:
    return [cxx, *_flags(), f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]


def _key(cxx: str) -> str:
    """The cache folder of a build: a hash of everything the compiled library depends on."""
    parts = [*_sources(), *_flags(), importlib.metadata.version("jaxlib"), cxx, _cpu()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build(force: bool = False) -> Path:
    """Compile the kernel (unless a build for these sources, flags, jaxlib, compiler and CPU is cached)
    and return the shared library's path.

    Raises:
      RuntimeError: no compiler, or the compiler failed (its output).
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(f"no C++ compiler: {os.environ.get('CXX', 'g++')!r} is not on PATH")
    out = _cache_dir() / _key(cxx) / "liblstm_jax_cpu.so"
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        proc = subprocess.run(_command(cxx, part), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(part, out)  # atomic: concurrent builders never see a partial file
    return out


@functools.cache
def status() -> KernelStatus:
    """Build (if needed), load and register the kernel's FFI targets once per process."""
    try:
        path = build()
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (RuntimeError, OSError, AttributeError) as e:
        return KernelStatus(False, None, f"the CPU kernel is not available: {e}")
    return KernelStatus(True, str(path), None)


if __name__ == "__main__":
    s = status()
    print(f"CPU kernel: {s.path}" if s.ok else s.reason)
    sys.exit(0 if s.ok else 1)
