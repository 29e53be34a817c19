"""Compile the emitted C kernels into a shared library once, cache it, and load it with ctypes.

The cache key is the sha256 of the sources, the flags, the compiler's version and the CPU's
feature flags (the build uses -march=native); a library is built in a temporary file and moved
into place atomically, so concurrent first uses never load a half-written file.  The build never
uses -ffast-math: the kernels' NaN/Inf semantics depend on IEEE arithmetic.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import tempfile
from functools import cache
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parents[3] / "generated" / "c"
SOURCES = ("gradsmith_ce.c",)
HEADERS = ("gradsmith_ce.h",)
# Contraction into fused multiply-adds is allowed (the exp bound holds with or without it);
# -ffast-math never is.
BASE_FLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=fast", "-fPIC", "-shared")
OPENMP_FLAGS = ("-fopenmp",)
# Without the OpenMP runtime, its SIMD pragmas alone (the chunk sums' vectorisation).
SIMD_FLAGS = ("-fopenmp-simd", "-DGS_OPENMP_SIMD")

_I64 = ctypes.c_int64
_I64P = ctypes.POINTER(ctypes.c_int64)
_SCALARS = {"f32": ctypes.c_float, "f64": ctypes.c_double}


class Params(ctypes.Structure):
    """``gs_ce_params`` of gradsmith_ce.h."""

    _fields_ = [
        ("ignore_index", ctypes.c_int64),
        ("reduction", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("label_smoothing", ctypes.c_double),
        ("lse_square_scale", ctypes.c_double),
        ("softcap", ctypes.c_double),
    ]


def compiler() -> list[str]:
    """The C compiler command: $CC (which may hold arguments) or ``cc``."""
    return shlex.split(os.environ.get("CC", "") or "cc")


def cache_dir() -> Path:
    return Path(os.environ.get("GRADSMITH_CACHE") or Path.home() / ".cache" / "gradsmith")


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


def _digest(sources: dict[str, bytes], flags: tuple[str, ...], cc: list[str]) -> str:
    digest = hashlib.sha256()
    for name, text in sorted(sources.items()):
        digest.update(name.encode() + b"\0" + text + b"\0")
    digest.update("\0".join((*cc, *flags)).encode())
    digest.update(_compiler_version(cc).encode())
    digest.update(_cpu_flags().encode())
    return digest.hexdigest()


def _compile(cc: list[str], flags: tuple[str, ...], source_dir: Path, target: Path) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    command = [*cc, *flags, "-o", temporary, *(str(source_dir / s) for s in SOURCES), "-lm"]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise OSError(f"compiling the C kernels failed ({shlex.join(command)}):\n{result.stderr}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def build(source_dir: Path = SOURCE_DIR, *, openmp: bool = True) -> Path:
    """The path of the compiled library for ``source_dir``, compiling it if not cached."""
    source_dir = Path(source_dir)
    missing = [name for name in SOURCES + HEADERS if not (source_dir / name).is_file()]
    if missing:
        raise OSError(f"{source_dir} lacks {', '.join(missing)}: run 'gradsmith generate'")
    sources = {name: (source_dir / name).read_bytes() for name in SOURCES + HEADERS}
    cc = compiler()
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    serial = [BASE_FLAGS + SIMD_FLAGS, BASE_FLAGS]
    attempts = [BASE_FLAGS + OPENMP_FLAGS, *serial] if openmp else serial
    errors = []
    for flags in attempts:
        target = folder / f"gradsmith_ce-{_digest(sources, flags, cc)[:24]}.so"
        if target.is_file():
            return target
        try:
            _compile(cc, flags, source_dir, target)
            return target
        except OSError as error:  # without OpenMP support, build the serial kernels instead
            errors.append(str(error))
    raise OSError(errors[-1])


def _declare(library: ctypes.CDLL, suffix: str) -> None:
    scalar = ctypes.POINTER(_SCALARS[suffix])
    params = ctypes.POINTER(Params)
    index = getattr(library, f"gs_ce_index_{suffix}")
    index.argtypes = [scalar, _I64, _I64P, scalar, _I64, _I64, params, scalar, scalar, scalar,
                      _I64, scalar, _I64P]
    index.restype = ctypes.c_int
    probs = getattr(library, f"gs_ce_probs_{suffix}")
    probs.argtypes = [scalar, _I64, scalar, _I64, scalar, _I64, _I64, params, scalar, scalar,
                      scalar, _I64, scalar]
    probs.restype = ctypes.c_int


def load_library(path: Path) -> ctypes.CDLL:
    """Open a compiled library and declare the argument and result types of its entry points."""
    library = ctypes.CDLL(str(path))
    for suffix in _SCALARS:
        _declare(library, suffix)
    return library


@cache
def library(source_dir: str = str(SOURCE_DIR), openmp: bool = True) -> ctypes.CDLL:
    """The loaded kernels (built on first use, then cached on disk and in this process)."""
    return load_library(build(Path(source_dir), openmp=openmp))
