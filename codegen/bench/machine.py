"""Name the machine a benchmark ran on, and control its thread count."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in OpenMP (C kernels) and in PyTorch.

    The environment variable covers a C library loaded later; ``omp_set_num_threads`` covers
    an OpenMP runtime that is already loaded in this process.
    """
    os.environ["OMP_NUM_THREADS"] = str(threads)
    for runtime in _openmp_runtimes():
        runtime.omp_set_num_threads(ctypes.c_int(threads))
    torch = optional_torch()
    if torch is not None:
        torch.set_num_threads(threads)


@functools.cache
def _openmp_runtimes() -> list[ctypes.CDLL]:
    runtimes = []
    for name in ("gomp", "omp", "iomp5"):
        path = ctypes.util.find_library(name)
        if not path:
            continue
        try:
            library = ctypes.CDLL(path)
            library.omp_get_max_threads.restype = ctypes.c_int
            library.omp_set_num_threads  # noqa: B018 - present, or AttributeError
        except (OSError, AttributeError):
            continue
        runtimes.append(library)
    return runtimes


@contextlib.contextmanager
def openmp_threads(threads: int) -> Iterator[None]:
    """OpenMP regions started inside use ``threads`` threads; the previous setting comes back."""
    runtimes = _openmp_runtimes()
    previous = [runtime.omp_get_max_threads() for runtime in runtimes]
    for runtime in runtimes:
        runtime.omp_set_num_threads(ctypes.c_int(threads))
    try:
        yield
    finally:
        for runtime, count in zip(runtimes, previous):
            runtime.omp_set_num_threads(ctypes.c_int(count))


def on_one_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with one OpenMP thread, the caller's setting restored after each call."""

    def single() -> Any:
        with openmp_threads(1):
            return call()

    return single


def optional_torch() -> Any | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def optional_cupy() -> Any | None:
    """CuPy with a usable GPU, or None."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # noqa: BLE001 - no driver or no device: CuPy raises its own runtime errors
        return None
    return cupy


def torch_cuda() -> Any | None:
    torch = optional_torch()
    if torch is None or not torch.cuda.is_available():
        return None
    return torch


def gpu_name() -> str | None:
    torch = torch_cuda()
    if torch is not None:
        return str(torch.cuda.get_device_name(0))
    cupy = optional_cupy()
    if cupy is not None:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    return None


def has_gpu() -> bool:
    return optional_cupy() is not None or torch_cuda() is not None


def describe(threads: int) -> dict[str, Any]:
    torch = optional_torch()
    cupy = optional_cupy()
    return {
        "cpu": cpu_model(),
        "cores": core_count(),
        "threads": threads,
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "cupy": None if cupy is None else cupy.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
