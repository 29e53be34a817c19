"""Clocks (host wall time, CUDA events) and peak-memory meters for one benchmarked call.

Timing: at least ``warmup`` untimed calls and, where ``warmup`` > 0, at least WARMUP_MS of them,
then ``repeat`` timed ones; the median is reported.
Host memory: the growth during one extra, untimed call of both
  * tracemalloc's peak (every NumPy buffer is reported to tracemalloc), and
  * the resident-set high-water mark VmHWM, reset beforehand through /proc/self/clear_refs
    (Linux; sees every allocator: C, PyTorch, NumPy; falls back to ru_maxrss growth), after
    glibc's malloc_trim has returned free heap blocks and gradsmith.empty_cache() the gradient
    blocks gradsmith keeps, so recycled blocks count too,
and the larger of the two is kept (a lower bound: pages already touched count as nothing).
GPU memory: torch.cuda's peak-allocated counter, or a CuPy memory-pool hook.
"""

from __future__ import annotations

import ctypes
import re
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gradsmith.codegen.buffers import empty_cache

HOST_MEMORY_METHOD = (
    "host: max(tracemalloc peak, VmHWM growth after malloc_trim, gradsmith.empty_cache() and a "
    "/proc/self/clear_refs reset)"
)


class Clock(Protocol):
    def time_ms(self, call: Callable[[], Any]) -> float: ...


class Meter(Protocol):
    method: str

    def peak_bytes(self, call: Callable[[], Any]) -> int: ...


class HostClock:
    def time_ms(self, call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1e3


class CupyClock:
    """Elapsed time between two CUDA events on CuPy's current stream."""

    def __init__(self, cupy: Any) -> None:
        self._cupy = cupy

    def time_ms(self, call: Callable[[], Any]) -> float:
        start, stop = self._cupy.cuda.Event(), self._cupy.cuda.Event()
        start.record()
        call()
        stop.record()
        stop.synchronize()
        return float(self._cupy.cuda.get_elapsed_time(start, stop))


class TorchCudaClock:
    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def time_ms(self, call: Callable[[], Any]) -> float:
        start = self._torch.cuda.Event(enable_timing=True)
        stop = self._torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        stop.synchronize()
        return float(start.elapsed_time(stop))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    """Return malloc's free blocks and the gradient blocks gradsmith keeps to the system (glibc
    ``malloc_trim``, :func:`gradsmith.empty_cache`).

    A buffer carved from recycled, still-resident heap memory would not raise VmHWM; after a
    trim every block the measured call obtains is backed by new pages.
    """
    empty_cache()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class HostMeter:
    method = HOST_MEMORY_METHOD

    def peak_bytes(self, call: Callable[[], Any]) -> int:
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            _release_free_heap()
            tracemalloc.reset_peak()
            traced_before = tracemalloc.get_traced_memory()[0]
            reset = _reset_hwm()
            rss_before = _status_kib("VmRSS") if reset else None
            maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result = call()
            traced = tracemalloc.get_traced_memory()[1] - traced_before
            hwm = _status_kib("VmHWM")
            if reset and rss_before is not None and hwm is not None:
                resident = (hwm - rss_before) * 1024
            else:
                resident = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) * 1024
            del result
        finally:
            if not was_tracing:
                tracemalloc.stop()
        return max(traced, resident, 0)


class TorchCudaMeter:
    method = "torch.cuda.max_memory_allocated growth"

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def peak_bytes(self, call: Callable[[], Any]) -> int:
        cuda = self._torch.cuda
        cuda.synchronize()
        before = cuda.memory_allocated()
        cuda.reset_peak_memory_stats()
        result = call()
        cuda.synchronize()
        peak = cuda.max_memory_allocated() - before
        del result
        return max(int(peak), 0)


class CupyMeter:
    """Peak bytes handed out by CuPy's memory pool (a MemoryHook counts malloc and free)."""

    method = "CuPy memory-pool hook (peak bytes in use growth)"

    def __init__(self, cupy: Any) -> None:
        self._cupy = cupy

    def peak_bytes(self, call: Callable[[], Any]) -> int:
        cupy = self._cupy

        class _Peak(cupy.cuda.MemoryHook):
            name = "gradsmith_peak"

            def __init__(self) -> None:
                self.live: dict[int, int] = {}
                self.current = 0
                self.peak = 0

            def malloc_postprocess(self, **event: Any) -> None:
                self.live[event["mem_ptr"]] = event["mem_size"]
                self.current += event["mem_size"]
                self.peak = max(self.peak, self.current)

            def free_preprocess(self, **event: Any) -> None:
                self.current -= self.live.pop(event["mem_ptr"], 0)

        hook = _Peak()
        cupy.cuda.Device().synchronize()
        with hook:
            result = call()
            cupy.cuda.Device().synchronize()
        del result
        return hook.peak


# After the copy probe, a call at classifier shapes took 6 to 8 calls (0.46 ms, then about 0.3,
# then a steady 0.23 at 65536 x 10) to reach its steady time; one warm-up call was not enough.
WARMUP_MS = 50.0


@dataclass(frozen=True)
class Timing:
    median_ms: float
    times_ms: tuple[float, ...]


def measure(
    call: Callable[[], Any],
    *,
    clock: Clock,
    repeat: int,
    warmup: int,
    reset: Callable[[], None] | None = None,
) -> Timing:
    """``reset`` runs untimed before every call (e.g. to drop a gradient PyTorch accumulated)."""
    calls, start = 0, time.perf_counter()
    while calls < warmup or (warmup > 0 and (time.perf_counter() - start) * 1e3 < WARMUP_MS):
        if reset is not None:
            reset()
        call()
        calls += 1
    times = []
    for _ in range(repeat):
        if reset is not None:
            reset()
        times.append(clock.time_ms(call))
    return Timing(statistics.median(times), tuple(times))
