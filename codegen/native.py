"""Shared pieces of the compiled backends: the ctypes ``Params`` and ``Status`` of the ABI
(:mod:`gradsmith.codegen.abi`), arrays' addresses for the pointer arguments, and building a
library once per content into a cache (the gradients they allocate: :mod:`buffers`).

The cache key is a sha256 of everything that shapes the binary (sources, flags, compiler
version, ...); a library is built into a temporary file and renamed into place, so concurrent
first uses never load a half-written file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from gradsmith.codegen.abi import params_structure, status_enum

COMPILE_SECONDS = 600


Status = status_enum()
Params = params_structure()


def address(array) -> int | None:
    """The address of a NumPy array's first element (None for None), as the kernels' pointer
    arguments take it.  Through the buffer protocol where the array is writeable and
    C-contiguous: 0.7 us against 2 us for ``array.ctypes.data``, paid for every array of every
    call, at shapes where the kernel itself takes a few microseconds."""
    if array is None:
        return None
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only, strided or empty: NumPy's own answer
        return array.ctypes.data


def call_params(call) -> Params:
    """The ``gs_ce_params`` of a prepared call (:func:`gradsmith.codegen.arguments.prepare_call`)."""
    return Params(
        ignore_index=call.ignore_index,
        reduction=call.reduction_code,
        reserved=0,
        label_smoothing=call.label_smoothing,
        lse_square_scale=call.lse_square_scale,
        softcap=0.0 if call.softcap is None else call.softcap,
    )


def cache_dir() -> Path:
    """Where compiled kernels go: $GRADSMITH_CACHE, else the platform's per-user cache folder
    ($XDG_CACHE_HOME or ~/.cache on Linux, ~/Library/Caches on macOS) /gradsmith."""
    if os.environ.get("GRADSMITH_CACHE"):
        return Path(os.environ["GRADSMITH_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gradsmith"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "gradsmith" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gradsmith"


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
