"""Memory bandwidth of this machine, measured by a copy (one read + one write per byte).

Host: ``numpy.copyto`` over a buffer far larger than the last-level cache, split across
``threads`` threads (NumPy releases the GIL while copying), median of the repeats.
GPU: a device-to-device copy timed with CUDA events (CuPy, else PyTorch).
The kernels are scored with the same convention: one read of the logits, one write of the
gradient, so a kernel at 100 % moves data as fast as a plain copy does.
"""

from __future__ import annotations

import glob
import itertools
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from gradsmith.codegen.bench.timing import CupyClock, HostClock, TorchCudaClock

MIN_HOST_BYTES = 256 * 2**20
GPU_BYTES = 2 * 2**30


@dataclass(frozen=True)
class Bandwidth:
    gb_per_s: float
    buffer_bytes: int
    method: str
    samples_gb_per_s: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "gb_per_s": self.gb_per_s,
            "buffer_bytes": self.buffer_bytes,
            "method": self.method,
            "samples_gb_per_s": list(self.samples_gb_per_s),
        }


def last_level_cache_bytes() -> int:
    """Largest cache reported by sysfs (0 if unknown)."""
    largest = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        scale = units.get(text[-1:].upper(), 1)
        digits = text[:-1] if text[-1:].upper() in units else text
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest


class HostProbe:
    """The host copy probe of one run: its buffers are made (and first touched) once, so that
    probing beside every row costs only the copies."""

    def __init__(self, *, threads: int, repeat: int = 7, buffer_bytes: int | None = None) -> None:
        if buffer_bytes is None:
            buffer_bytes = max(MIN_HOST_BYTES, 8 * last_level_cache_bytes())
        count = buffer_bytes // 8
        self._source = np.ones(count, dtype=np.float64)
        self._target = np.zeros_like(self._source)  # touched, so no page faults are timed
        bounds = np.linspace(0, count, threads + 1).astype(np.int64)
        self._spans = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]
        self._repeat = repeat
        self.method = (f"numpy.copyto, {len(self._spans)} thread(s), "
                       f"{self._source.nbytes / 2**20:.0f} MiB, median of {repeat}")

    def measure(self) -> Bandwidth:
        """One probe: an untimed copy (it also waits out OpenMP threads still spinning after the
        last kernel, which would share a core with it), then the median of ``repeat``."""
        source, target, clock = self._source, self._target, HostClock()
        with ThreadPoolExecutor(max_workers=len(self._spans)) as pool:

            def copy() -> None:
                list(pool.map(lambda span: np.copyto(target[span[0]:span[1]], source[span[0]:span[1]]),
                              self._spans))

            copy()
            samples = [2 * source.nbytes / (clock.time_ms(copy) * 1e6) for _ in range(self._repeat)]
        return Bandwidth(statistics.median(samples), int(source.nbytes), self.method, tuple(samples))


def probe_series(probes: list[Bandwidth]) -> dict[str, Any]:
    """Several host probes of one run: the median of their medians, each probe's median in
    order, and every sample."""
    first = probes[0]
    return {
        "gb_per_s": statistics.median(p.gb_per_s for p in probes),
        "buffer_bytes": first.buffer_bytes,
        "method": first.method,
        "probes_gb_per_s": [p.gb_per_s for p in probes],
        "samples_gb_per_s": [sample for p in probes for sample in p.samples_gb_per_s],
    }


def gpu_bandwidth(*, cupy: Any | None, torch: Any | None, repeat: int = 7) -> Bandwidth | None:
    """Device copy bandwidth, or None without a GPU."""
    if cupy is not None:
        source = cupy.ones(GPU_BYTES // 4, dtype=cupy.float32)
        target = cupy.empty_like(source)
        clock, library = CupyClock(cupy), "cupy.copyto"

        def copy() -> None:
            cupy.copyto(target, source)

    elif torch is not None:
        source = torch.ones(GPU_BYTES // 4, dtype=torch.float32, device="cuda")
        target = torch.empty_like(source)
        clock, library = TorchCudaClock(torch), "torch copy_"

        def copy() -> None:
            target.copy_(source)

    else:
        return None
    copy()
    samples = [2 * GPU_BYTES / (clock.time_ms(copy) * 1e6) for _ in range(repeat)]
    return Bandwidth(
        statistics.median(samples),
        GPU_BYTES,
        f"{library} device to device, {GPU_BYTES / 2**30:.0f} GiB, CUDA events, median of {repeat}",
        tuple(samples),
    )
