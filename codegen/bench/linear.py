"""``gradsmith bench --linear NxHxV``: fused linear + cross-entropy (forward + backward of
``cross_entropy(x @ W.T, t)``) beside naive torch, ``F.linear_cross_entropy`` and
``torch.compile`` of the naive form.

Each (shape, contender) runs in a fresh subprocess, so that the peak of one cannot hide in
another's: the extra peak memory is that process's RSS high-water mark over the timed calls
(reset after the warm-up through /proc/self/clear_refs) minus its RSS before them (inputs held)
and minus the gradients of the inputs left at the end.  glibc is told to mmap every allocation
of 64 KiB or more, so memory freed by one call leaves the RSS before the next.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("gradsmith", "naive", "torch-linear", "compiled")
BASELINE = "naive"
WORKER_SECONDS = 1800
_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")
MEMORY_METHOD = ("RSS high-water mark of a fresh subprocess per case (VmHWM, reset after the "
                 "warm-up) minus its RSS before the timed calls and the inputs' gradients; "
                 "MALLOC_MMAP_THRESHOLD_=65536")


def parse_linear(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"4096x1024x32000,..."`` -> ((4096, 1024, 32000), ...): tokens x hidden x vocabulary."""
    shapes = []
    for part in text.split(","):
        match = _SHAPE.match(part)
        if not match or min(int(g) for g in match.groups()) < 1:
            raise ValueError(f"--linear takes comma-separated NxHxV (tokens x hidden x "
                             f"vocabulary, each >= 1) such as 4096x1024x32000, got {part.strip()!r}")
        shapes.append(tuple(int(g) for g in match.groups()))
    return tuple(shapes)


def _loss_function(name: str):
    import torch
    import torch.nn.functional as F
    from gradsmith.torch import linear_cross_entropy

    def naive(x, weight, target):
        return F.cross_entropy(x @ weight.T, target)

    if name == "gradsmith":
        return linear_cross_entropy
    if name == "torch-linear":
        return lambda x, weight, target: F.linear_cross_entropy(x, weight, target)
    return torch.compile(naive) if name == "compiled" else naive


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def measure(name: str, shape: tuple[int, int, int], repeat: int, warmup: int,
            seed: int) -> dict[str, Any]:
    """Time ``repeat`` forward + backward calls of one contender and take its extra peak."""
    import torch

    rows, hidden, classes = shape
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=generator).requires_grad_()
    weight = (torch.randn(classes, hidden, generator=generator) / hidden**0.5).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=generator)
    function = _loss_function(name)

    def call() -> float:
        x.grad = weight.grad = None
        loss = function(x, weight, target)
        loss.backward()
        return float(loss.detach())

    for _ in range(warmup):
        call()
    x.grad = weight.grad = None
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    times, loss = [], float("nan")
    for _ in range(repeat):
        start = time.perf_counter()
        loss = call()
        times.append((time.perf_counter() - start) * 1e3)
    grads = sum(t.grad.numel() * t.grad.element_size() for t in (x, weight))
    extra = (_status_kib("VmHWM") - before) * 1024 - grads
    return {"name": name, "shape": list(shape), "ms": statistics.median(times),
            "times_ms": times, "extra_peak_bytes": extra, "loss": loss}


def run_linear(shapes, *, contenders=CONTENDERS, repeat: int = 3, warmup: int = 1,
               threads: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Every (shape, contender) in its own subprocess; the rows of the report."""
    from gradsmith.codegen.bench import machine

    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    rows = []
    for shape in shapes:
        for name in contenders:
            command = [sys.executable, "-m", "gradsmith.codegen.bench.linear", name,
                       "x".join(map(str, shape)), str(repeat), str(warmup), str(seed)]
            result = subprocess.run(command, capture_output=True, text=True, env=environment,
                                    timeout=WORKER_SECONDS, check=False)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                reason = lines[-1] if lines else f"exit status {result.returncode}"
                rows.append({"name": name, "shape": list(shape), "status": "failed",
                             "reason": reason})
                continue
            rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "status": "ok"})
    return {"machine": machine.describe(threads or machine.core_count()),
            "settings": {"repeat": repeat, "warmup": warmup, "seed": seed},
            "memory_method": MEMORY_METHOD, "results": rows}


def format_linear(report: dict[str, Any]) -> str:
    """The table: median ms, extra peak MB, and both as ratios to naive torch of the same run."""
    machine = report["machine"]
    settings = report["settings"]
    lines = [
        (f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads; "
         f"GPU: {machine['gpu'] or 'none'}; torch {machine['torch']}"),
        (f"fused linear + cross-entropy, float32, mean loss, forward + backward; median of "
         f"{settings['repeat']} after {settings['warmup']} warm-up"),
        "",
    ]
    header = ("shape", "contender", "ms", "extra peak MB", "time vs naive", "memory vs naive")
    table = [header]
    baseline = {tuple(r["shape"]): r for r in report["results"]
                if r["name"] == BASELINE and r["status"] == "ok"}
    for row in report["results"]:
        label = "x".join(map(str, row["shape"]))
        if row["status"] != "ok":
            table.append((label, row["name"], "failed", row["reason"][:60], "", ""))
            continue
        base = baseline.get(tuple(row["shape"]))
        time_ratio = f"{row['ms'] / base['ms']:.2f}x" if base else "-"
        memory_ratio = (f"{row['extra_peak_bytes'] / base['extra_peak_bytes']:.3f}x"
                        if base and base["extra_peak_bytes"] > 0 else "-")
        table.append((label, row["name"], f"{row['ms']:.1f}", f"{max(row['extra_peak_bytes'], 0) / 1e6:.1f}",
                      time_ratio, memory_ratio))
    widths = [max(len(str(r[c])) for r in table) for c in range(len(header))]
    for n, row in enumerate(table):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines += ["", "extra peak MB: " + report["memory_method"]]
    return "\n".join(lines)


if __name__ == "__main__":
    _name, _shape, _repeat, _warmup, _seed = sys.argv[1:6]
    print(json.dumps(measure(_name, parse_linear(_shape)[0], int(_repeat), int(_warmup),
                             int(_seed))))
