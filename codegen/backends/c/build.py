"""Compile the emitted C kernels into a shared library once, cache it, and load it with ctypes.

The cache key covers the sources, the flags, the compiler's version and the CPU's feature flags
(the build uses -march=native).  The build never uses -ffast-math: the kernels' NaN/Inf
semantics depend on IEEE arithmetic.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
from functools import cache
from pathlib import Path

from gradsmith.codegen.abi import SUFFIXES, declare
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.native import (
    Params,  # noqa: F401 - build.Params, the struct to pass
    build_once,
    cache_dir,
    content_key,
)

SOURCE_DIR = shipped_kernels() / "c"
SOURCES = ("gradsmith_ce.c",)
HEADERS = ("gradsmith_ce.h",)
# Contraction into fused multiply-adds is allowed (the exp bound holds with or without it);
# -ffast-math never is.  -fno-trapping-math changes no value: the kernels never read the FP
# exception flags, and without it gcc will not turn the fast functions' selects into blends,
# so no loop that calls them vectorises.  -fno-tree-loop-distribute-patterns keeps the lanes'
# zeroing of their 32-entry sums in the loop that sets them, not in memset calls (7-9% at C <= 10).
BASE_FLAGS = (
    "-std=c99",
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-trapping-math",
    "-fno-tree-loop-distribute-patterns",
    # Every loop at a cache line: without it, adding one small function before the kernels
    # moved their loops and cost 6% at 4096 x 32000 and 2% at 8192 x 1000 (gcc 12, AMD EPYC).
    "-falign-loops=64",
    # Scheduling before register allocation, held to the register pressure: the exp loops come
    # out faster (one thread, gcc 12, AMD EPYC: 4-6% at C >= 600, 5% at 65536 x 10, 2% at
    # C = 16, 5% slower at 262144 x 4).
    "-fschedule-insns",
    "-fsched-pressure",
    "-fPIC",
    "-shared",
)
# Flags that only GCC knows: other compilers (Clang, Apple's cc) build without them.
GCC_ONLY_FLAGS = ("-fno-tree-loop-distribute-patterns", "-falign-loops=64", "-fschedule-insns",
                  "-fsched-pressure")
# -pthread: pthread_atfork (see team_functions in macros.c.j2).
OPENMP_FLAGS = ("-fopenmp", "-pthread")
# Without the OpenMP runtime, its SIMD pragmas alone (the chunk sums' vectorisation).
SIMD_FLAGS = ("-fopenmp-simd", "-DGS_OPENMP_SIMD")

_ENTRY_SUFFIXES = (SUFFIXES["float32"], SUFFIXES["float64"])


def compiler() -> list[str]:
    """The C compiler command: $CC (which may hold arguments) or ``cc``."""
    return shlex.split(os.environ.get("CC", "") or "cc")


def base_flags(cc: list[str]) -> tuple[str, ...]:
    """BASE_FLAGS for the compiler ``cc``: without GCC_ONLY_FLAGS unless it is GCC."""
    version = _compiler_version(cc)
    if "Free Software Foundation" in version and "clang" not in version.lower():
        return BASE_FLAGS
    return tuple(flag for flag in BASE_FLAGS if flag not in GCC_ONLY_FLAGS)


def _compiler_version(cc: list[str]) -> str:
    try:
        result = subprocess.run([*cc, "--version"], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise OSError(f"C compiler {shlex.join(cc)!r} cannot be run: {error}") from error
    return result.stdout + result.stderr


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def compile_once(name: str, sources: list[Path], inputs: list[bytes], what: str, *,
                 openmp: bool = True) -> Path:
    """The path of the library ``name`` compiled from ``sources`` (``inputs``: every byte the
    build reads), compiling it if not cached: with OpenMP, else (no OpenMP support) one thread
    with its SIMD pragmas, else without them."""
    cc = compiler()
    machine = (_compiler_version(cc), _cpu_flags())
    base = base_flags(cc)
    serial = [base + SIMD_FLAGS, base]
    attempts = [base + OPENMP_FLAGS, *serial] if openmp else serial
    errors = []
    for flags in attempts:
        key = content_key([*inputs, *cc, *flags, *machine])

        def command(output: str, flags: tuple[str, ...] = flags) -> list[str]:
            return [*cc, *flags, "-o", output, *(str(source) for source in sources), "-lm"]

        try:
            return build_once(cache_dir(), name, key, command, what)
        except OSError as error:
            errors.append(str(error))
    raise OSError(errors[-1])


def build(source_dir: Path = SOURCE_DIR, *, openmp: bool = True) -> Path:
    """The path of the compiled library for ``source_dir``, compiling it if not cached."""
    source_dir = Path(source_dir)
    missing = [name for name in SOURCES + HEADERS if not (source_dir / name).is_file()]
    if missing:
        raise OSError(f"{source_dir} lacks {', '.join(missing)}: write a complete tree with "
                      "'gradsmith generate --out DIR'")
    inputs = [(source_dir / name).read_bytes() for name in SOURCES + HEADERS]
    return compile_once("gradsmith_ce", [source_dir / name for name in SOURCES], inputs,
                        "compiling the C kernels", openmp=openmp)


def load_library(path: Path) -> ctypes.CDLL:
    """Open a compiled library and declare the argument and result types of its entry points."""
    library = ctypes.CDLL(str(path))
    # Pointers as addresses (``native.address``, ``tensor.data_ptr()``): a typed ``data_as``
    # pointer costs several times as much; the callers check every dtype beforehand.
    declare(library, "c", _ENTRY_SUFFIXES, lambda argument, suffix: ctypes.c_void_p)
    return library


@cache
def library(source_dir: str = str(SOURCE_DIR), openmp: bool = True) -> ctypes.CDLL:
    """The loaded kernels (built on first use, then cached on disk and in this process)."""
    return load_library(build(Path(source_dir), openmp=openmp))
