"""``gradsmith bench --loss NAME``: a row loss's kernels beside torch eager and torch.compile of
the loss module's own torch form of the definition, in the same run (medians, ratios)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gradsmith.codegen.bench import machine
from gradsmith.codegen.bench.timing import HostClock, measure
from gradsmith.codegen.loading import load
from gradsmith.derive.losses import definition

SHAPES = ((65536, 10), (8192, 1000), (1024, 32000))
BACKENDS = ("numpy", "c")


def _inputs(found, n_rows: int, n_classes: int, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n_rows, n_classes)) * 2).astype(dtype)
    if found.kind == "teacher":
        return logits, (rng.standard_normal((n_rows, n_classes)) * 2).astype(dtype)
    return logits, rng.integers(0, n_classes, n_rows)


PEERS = ("torch-eager", "torch-compile")


def _torch_calls(found, logits, second, options: dict, peers=PEERS) -> dict[str, Any]:
    """Fused forward + backward in torch, eager and compiled, of the module's torch form."""
    torch = machine.optional_torch()
    if torch is None or found.torch_rows is None:
        return {}
    reduction = found.reduction(found.default_reduction).denominator
    z = torch.from_numpy(logits).requires_grad_(True)
    other = torch.from_numpy(second)

    def step(rows):
        total = rows.sum() / (rows.numel() if reduction == "rows" else 1)
        total.backward()
        return total

    def eager():
        return step(found.torch_rows(torch, z, other, **options))

    def compiled():
        return step(compiled_rows(z, other))

    def reset():
        z.grad = None

    calls = {"torch-eager": (eager, reset)}
    if "torch-compile" in peers:
        compiled_rows = torch.compile(lambda a, b: found.torch_rows(torch, a, b, **options))
        calls["torch-compile"] = (compiled, reset)
    return calls


def _kernel_call(function, logits, second, options: dict):
    return lambda: function(logits, second, **options)


def run(loss: str, shapes=SHAPES, dtype: str = "float32", repeat: int = 5, warmup: int = 1,
        threads: int = 1, seed: int = 0, peers=PEERS) -> dict[str, Any]:
    """Time every contender on every shape; returns the report (rows and the machine)."""
    found = definition(loss)
    options = {o.name: o.default for o in found.options}
    rows = []
    for n_rows, n_classes in shapes:
        logits, second = _inputs(found, n_rows, n_classes, dtype, seed)
        calls = {name: (_kernel_call(load(name, dtype, loss=loss), logits, second, options), None)
                 for name in BACKENDS}
        calls.update(_torch_calls(found, logits, second, options, peers))
        times = {name: measure(call, clock=HostClock(), repeat=repeat, warmup=warmup,
                               reset=reset).median_ms for name, (call, reset) in calls.items()}
        rows.append({"shape": f"{n_rows}x{n_classes}", "dtype": dtype, "ms": times})
    return {"loss": found.name, "machine": machine.describe(threads), "repeat": repeat,
            "rows": rows}


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [(f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s); "
              f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}"),
             (f"{report['loss']}: fused forward + backward, default options and reduction; "
              f"median of {report['repeat']} after warm-up; ratio = torch-eager ms / ms"), ""]
    header = f"{'shape':<12} {'dtype':<8} {'contender':<14} {'ms':>9} {'vs eager':>9}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        eager = row["ms"].get("torch-eager")
        for name, ms in row["ms"].items():
            ratio = f"{eager / ms:.2f}x" if eager else "-"
            lines.append(f"{row['shape']:<12} {row['dtype']:<8} {name:<14} {ms:>9.3f} {ratio:>9}")
    return "\n".join(lines)
