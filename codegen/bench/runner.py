"""Run every contender on every case, beside the bandwidth probes, and collect the figures.

The host's copy bandwidth moves between runs, and within one, on a shared machine (from 26 to
38 GB/s within a minute on a virtual machine), so it is probed before the first row and again
after each host row: a row's share of the bandwidth is against the higher of the two probes
beside it, not against one taken seconds of other contenders away."""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import Any, TextIO

from gradsmith.codegen.bench import machine
from gradsmith.codegen.bench.busy import busy_core
from gradsmith.codegen.bench.peers import Contender, Inputs, Skip, contenders
from gradsmith.codegen.bench.probe import HostProbe, gpu_bandwidth, probe_series
from gradsmith.codegen.bench.settings import Case, Settings
from gradsmith.codegen.bench.timing import WARMUP_MS, measure

ITEMSIZE = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


class Progress:
    """A one-line progress bar redrawn with carriage returns (stderr by default)."""

    def __init__(self, total: int, stream: TextIO, enabled: bool, width: int = 24) -> None:
        self.total, self.done = max(total, 1), 0
        self.stream, self.width = stream, width
        self.enabled = enabled and stream.isatty()
        self._last = 0

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()


TARGET_ITEMSIZE = 8  # int64 class indices


def moved_bytes(case: Case) -> int:
    """One read of the logits, one write of the gradient and one read of the targets."""
    return case.n_rows * (2 * case.n_classes * ITEMSIZE[case.dtype] + TARGET_ITEMSIZE)


def _scalar(value: Any) -> float | None:
    if hasattr(value, "detach"):
        value = value.detach()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _free_device_memory() -> None:
    gc.collect()
    cupy = machine.optional_cupy()
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()
    torch = machine.torch_cuda()
    if torch is not None:
        torch.cuda.empty_cache()


def _row(case: Case, contender: Contender) -> dict[str, Any]:
    return {
        "shape": [case.n_rows, case.n_classes],
        "dtype": case.dtype,
        "name": contender.name,
        "backend": contender.backend,
        "device": contender.device,
        "generated": contender.generated,
        "status": "ok",
        "reason": None,
    }


def _run_one(case: Case, contender: Contender, inputs: Inputs, settings: Settings) -> dict[str, Any]:
    row = _row(case, contender)
    try:
        prepared = contender.prepare(inputs)
    except Skip as skip:
        return row | {"status": "skipped", "reason": str(skip)}
    method = prepared.meter.method
    try:
        timing = measure(
            prepared.call,
            clock=prepared.clock,
            repeat=settings.repeat,
            warmup=settings.warmup,
            reset=prepared.reset,
        )
        if prepared.reset is not None:
            prepared.reset()
        peak = prepared.meter.peak_bytes(prepared.call)
        if prepared.reset is not None:
            prepared.reset()
        loss = _scalar(prepared.call()[0])
    except Exception as error:  # noqa: BLE001 - a failing backend is reported in its row, the run goes on
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return row | {"status": "error", "reason": f"{type(error).__name__}: {message}"}
    finally:
        del prepared
        if contender.device == "gpu":
            _free_device_memory()
    return row | {
        "ms": timing.median_ms,
        "times_ms": list(timing.times_ms),
        "gb_per_s": moved_bytes(case) / (timing.median_ms * 1e6),
        "probe_gb_per_s": None,
        "pct_bandwidth": None,
        "peak_bytes": peak,
        "memory_method": method,
        "loss": loss,
        "speedup": {},
    }


def _score_bandwidth(row: dict[str, Any], probe_gb_per_s: float | None) -> None:
    """The row's rate as a share of its device's copy bandwidth measured beside it."""
    if row["status"] == "ok" and probe_gb_per_s is not None:
        row["probe_gb_per_s"] = probe_gb_per_s
        row["pct_bandwidth"] = 100.0 * row["gb_per_s"] / probe_gb_per_s


def _speedups(rows: list[dict[str, Any]]) -> None:
    """Each row against every peer that ran the same case on the same device."""
    for row in rows:
        if row["status"] != "ok":
            continue
        for peer in rows:
            if peer is row or peer["status"] != "ok" or peer["generated"]:
                continue
            if peer["device"] == row["device"]:
                row["speedup"][peer["name"]] = peer["ms"] / row["ms"]


def run_benchmark(settings: Settings, *, stream: TextIO | None = None) -> dict[str, Any]:
    """Measure; return the report as plain data (what ``--json`` writes).  With
    ``settings.busy`` another process keeps one core busy throughout."""
    with busy_core() if settings.busy else contextlib.nullcontext():
        return _run_benchmark(settings, stream)


def _run_benchmark(settings: Settings, stream: TextIO | None) -> dict[str, Any]:
    stream = sys.stderr if stream is None else stream
    threads = settings.threads or machine.core_count()
    if settings.threads is not None:
        machine.set_threads(settings.threads)
    described = machine.describe(threads)  # before measuring: the load average is others' work
    gpu = machine.has_gpu()
    field = list(contenders(settings.backends, gpu=gpu, inplace=settings.inplace,
                            single_thread=settings.busy))

    def runs(case: Case) -> list[Contender]:
        return [c for c in field if not (case.gpu_only and c.device == "cpu")]

    total = 1 + int(gpu) + sum(len(runs(case)) + sum(c.device == "cpu" for c in runs(case))
                               for case in settings.cases)
    progress = Progress(total, stream, settings.progress)
    progress.show("memory bandwidth (host copy probe)")
    host_probe = HostProbe(threads=threads)
    host_probes = [host_probe.measure()]
    progress.step("memory bandwidth")
    gpu_probe = None
    if gpu:
        probe = gpu_bandwidth(cupy=machine.optional_cupy(), torch=machine.torch_cuda())
        gpu_probe = None if probe is None else probe.as_dict()
        progress.step("GPU bandwidth")
    rows: list[dict[str, Any]] = []
    for case in settings.cases:
        inputs = Inputs(case, settings.seed, settings.softcap)
        case_rows = []
        for contender in runs(case):
            label = f"{contender.name} {case.label} {case.dtype}"
            progress.show(label)
            row = _run_one(case, contender, inputs, settings)
            progress.step(label)
            if contender.device == "gpu":
                _score_bandwidth(row, None if gpu_probe is None else gpu_probe["gb_per_s"])
            else:
                if row["status"] == "ok":  # a skipped or failed row moved nothing: no probe
                    progress.show(f"memory bandwidth after {label}")
                    host_probes.append(host_probe.measure())
                    _score_bandwidth(row, max(p.gb_per_s for p in host_probes[-2:]))
                progress.step("memory bandwidth")
            case_rows.append(row)
        inputs.release()
        if gpu:
            _free_device_memory()
        gc.collect()
        _speedups(case_rows)
        rows.extend(case_rows)
    progress.close()
    bandwidth: dict[str, Any] = {"cpu": probe_series(host_probes)}
    if gpu:
        bandwidth["gpu"] = gpu_probe
    extra = {}
    if "gradsmith.torch" in settings.backends:
        from gradsmith.codegen.bench import torch_peer

        extra["torch_overhead"] = torch_peer.overhead(settings.repeat)
    return {
        "machine": described,
        "settings": {
            "repeat": settings.repeat,
            "warmup": settings.warmup,
            "threads": threads,
            "seed": settings.seed,
            "backends": list(settings.backends),
            "inplace": settings.inplace,
            "busy": settings.busy,
            "softcap": settings.softcap,
            "timing": (f"median of --repeat calls after --warmup calls lasting at least {WARMUP_MS:g} ms "
                       "(none for 0); host: perf_counter, GPU: CUDA events"),
            "gb_per_s": "(2 * N * C * itemsize + 8 * N) (logits read, gradient written, targets read) / median time",
            "loss": "reduction='mean', integer targets; loss and dlogits in every call",
        },
        "bandwidth": bandwidth,
        "results": rows,
        **extra,
    }
