"""Shared pieces of the compiled backends: the ``gs_ce_params`` struct, and building a library
once per content into a cache.

The cache key is a sha256 of everything that shapes the binary (sources, flags, compiler
version, ...); a library is built into a temporary file and renamed into place, so concurrent
first uses never load a half-written file.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

COMPILE_SECONDS = 600


class Status(enum.IntEnum):
    """Status codes of the C and CUDA entry points (``GS_OK``, ``GS_ERR_*`` in the headers)."""

    OK = 0
    NULL_POINTER = 1
    SHAPE = 2
    TARGET = 3
    PARAMS = 4
    CUDA = 5

    def describe(self) -> str:
        return _STATUS_TEXT[self]


_STATUS_TEXT = {
    Status.OK: "success",
    Status.NULL_POINTER: "a required pointer is NULL",
    Status.SHAPE: "bad shape or stride",
    Status.TARGET: "a target is outside [0, C) and is not ignore_index",
    Status.PARAMS: "a parameter is out of range",
    Status.CUDA: "a CUDA launch failed",
}


class Params(ctypes.Structure):
    """``gs_ce_params`` of the C and CUDA headers."""

    _fields_ = [
        ("ignore_index", ctypes.c_int64),
        ("reduction", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("label_smoothing", ctypes.c_double),
        ("lse_square_scale", ctypes.c_double),
        ("softcap", ctypes.c_double),
    ]


def cache_dir() -> Path:
    """$GRADSMITH_CACHE, else ~/.cache/gradsmith."""
    return Path(os.environ.get("GRADSMITH_CACHE") or Path.home() / ".cache" / "gradsmith")


def content_key(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def build_once(folder: Path, name: str, key: str, command: Callable[[str], list[str]], what: str) -> Path:
    """``folder/name-key.so``, running ``command(output_path)`` to build it if it is not there."""
    target = Path(folder) / f"{name}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    arguments = command(temporary)
    try:
        try:
            result = subprocess.run(arguments, check=False, capture_output=True, text=True,
                                    timeout=COMPILE_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OSError(f"{what}: {shlex.join(arguments)} could not run: {error}") from error
        if result.returncode != 0:
            raise OSError(f"{what} failed ({shlex.join(arguments)}):\n{result.stderr.strip()}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
