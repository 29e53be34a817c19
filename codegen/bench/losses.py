"""``gradsmith bench --loss NAME``: a row loss's kernels beside torch eager and torch.compile of
the loss module's own torch form of the definition, in the same run (medians, ratios)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from gradsmith.codegen.bench import machine
from gradsmith.codegen.bench.busy import busy_core
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


PEERS = ("torch-eager", "torch-compile", "gradsmith.torch")


def _torch_calls(found, logits, second, options: dict, peers=PEERS):
    """Fused forward + backward in torch, eager and compiled, of the module's torch form, and
    of the gradsmith.torch op; also why a contender of ``peers`` is skipped."""
    torch = machine.optional_torch()
    if torch is None:
        return {}, dict.fromkeys(peers, "PyTorch is not installed")
    z = torch.from_numpy(logits).requires_grad_(True)
    other = torch.from_numpy(second)

    def reset():
        z.grad = None

    calls, skipped = {}, {}
    if found.torch_rows is None:
        skipped.update((name, f"loss {found.name!r} has no torch_rows")
                       for name in ("torch-eager", "torch-compile") if name in peers)
    else:
        reduction = found.reduction(found.default_reduction).denominator

        def step(rows):
            total = rows.sum() / (rows.numel() if reduction == "rows" else 1)
            total.backward()
            return total

        calls["torch-eager"] = (lambda: step(found.torch_rows(torch, z, other, **options)), reset)
        if "torch-compile" in peers:
            compiled_rows = torch.compile(lambda a, b: found.torch_rows(torch, a, b, **options))
            calls["torch-compile"] = (lambda: step(compiled_rows(z, other)), reset)
    if "gradsmith.torch" in peers:
        from gradsmith.codegen.torch_op import row_loss_op

        if found.name not in row_loss_op.REGISTERED:
            skipped["gradsmith.torch"] = (f"gradsmith.torch.row_loss takes the registered losses "
                                          f"{row_loss_op.REGISTERED}, not {found.name!r}")
        else:
            def op_step():
                total = row_loss_op.row_loss(found.name, z, other, **options)
                total.backward()
                return total

            calls["gradsmith.torch"] = (op_step, reset)
    return calls, skipped


def _kernel_call(function, logits, second, options: dict):
    return lambda: function(logits, second, **options)


def _loss_of(result) -> float:
    """The loss a contender's call returned ((loss, dlogits) of a kernel, or a torch scalar)."""
    value = result[0] if isinstance(result, tuple) else result
    return float(value.detach() if hasattr(value, "detach") else value)


def run(loss: str, shapes=SHAPES, dtype: str = "float32", repeat: int = 5, warmup: int = 1,
        threads: int = 1, seed: int = 0, peers=PEERS, busy: bool = False) -> dict[str, Any]:
    """Time every contender on every shape; returns the report (rows and the machine).  With
    ``busy`` another process keeps one core busy throughout, and the C kernel is timed beside
    itself on one OpenMP thread (c-1thread) instead of beside the peers."""
    with busy_core() if busy else contextlib.nullcontext():
        report = _run(loss, shapes, dtype, repeat, warmup, threads, seed, () if busy else peers,
                      busy)
    return {**report, "busy": busy}


def _run(loss, shapes, dtype, repeat, warmup, threads, seed, peers, busy) -> dict[str, Any]:
    found = definition(loss)
    options = {o.name: o.default for o in found.options}
    rows = []
    for n_rows, n_classes in shapes:
        logits, second = _inputs(found, n_rows, n_classes, dtype, seed)
        calls = {name: (_kernel_call(load(name, dtype, loss=loss), logits, second, options), None)
                 for name in BACKENDS}
        if busy:
            calls["c-1thread"] = (machine.on_one_thread(calls["c"][0]), None)
        torch_calls, skipped = _torch_calls(found, logits, second, options, peers) if peers else ({}, {})
        calls.update(torch_calls)
        times = {name: measure(call, clock=HostClock(), repeat=repeat, warmup=warmup,
                               reset=reset).median_ms for name, (call, reset) in calls.items()}
        losses = {}
        for name, (call, reset) in calls.items():  # one more call, untimed, for its loss
            if reset is not None:
                reset()
            losses[name] = _loss_of(call())
        rows.append({"shape": f"{n_rows}x{n_classes}", "dtype": dtype, "ms": times,
                     "loss": losses, "skipped": skipped})
    return {"loss": found.name, "machine": machine.describe(threads), "repeat": repeat,
            "rows": rows}


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    busy = report.get("busy", False)
    base = "c-1thread" if busy else "torch-eager"
    lines = [(f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} thread(s); "
              f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}"),
             (f"{report['loss']}: fused forward + backward, default options and reduction; "
              f"median of {report['repeat']} after warm-up; ratio = {base} ms / ms")]
    if busy:
        lines.append("busy: another process kept one core busy throughout; c-1thread is the C "
                     "kernel on one OpenMP thread")
    header = f"{'shape':<12} {'dtype':<8} {'contender':<16} {'ms':>9} {'vs ' + base.split('-')[-1]:>9}"
    lines += ["", header, "-" * len(header)]
    for row in report["rows"]:
        eager = row["ms"].get(base)
        for name, ms in row["ms"].items():
            ratio = f"{eager / ms:.2f}x" if eager else "-"
            lines.append(f"{row['shape']:<12} {row['dtype']:<8} {name:<16} {ms:>9.3f} {ratio:>9}")
        for name, reason in row["skipped"].items():
            lines.append(f"{row['shape']:<12} {row['dtype']:<8} {name:<16} skipped: {reason}")
    return "\n".join(lines)
