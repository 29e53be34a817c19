"""``gradsmith.torch`` in the bench: the op (forward + backward through autograd) as a
contender, and its per-call overhead against the raw C call at small shapes."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from gradsmith.codegen.bench import machine
from gradsmith.codegen.bench.peers import Contender, Inputs, Prepared, torch_autograd

NAME = "gradsmith.torch"
OVERHEAD_SHAPES = ((64, 10), (256, 100), (1024, 1000))


def _gradsmith_cross_entropy(torch: Any, softcap: float | None) -> Callable:
    import gradsmith.torch as gt

    return gt.cross_entropy if softcap is None else functools.partial(gt.cross_entropy, softcap=softcap)


def _prepare(device: str) -> Callable[[Inputs], Prepared]:
    return torch_autograd(
        device, _gradsmith_cross_entropy,
        lambda dtype: None if dtype in ("float32", "float64") else f"{NAME} on CPU has no {dtype}")


def contenders(gpu: bool) -> Iterator[Contender]:
    yield Contender(NAME, NAME, "cpu", True, _prepare("cpu"))
    if gpu:
        yield Contender(f"{NAME}-cuda", NAME, "gpu", True, _prepare("gpu"))


def _median_us(call: Callable[[], Any], repeat: int) -> float:
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def overhead(repeat: int) -> list[dict[str, Any]]:
    """Median microseconds per forward + backward of the op (autograd, ``.backward()``), of
    ``F.cross_entropy`` the same way, and of the raw C call on the same float32 arrays, at
    small shapes; empty without PyTorch."""
    torch = machine.optional_torch()
    if torch is None:
        return []
    import gradsmith.torch as gt
    import numpy as np
    from gradsmith.codegen.loading import load

    raw = load("c", "float32")
    rows = []
    for n, classes in OVERHEAD_SHAPES:
        rng = np.random.default_rng(0)
        logits = rng.standard_normal((n, classes), dtype=np.float32)
        target = rng.integers(0, classes, size=n, dtype=np.int64)
        leaf = torch.from_numpy(logits).requires_grad_(True)
        torch_target = torch.from_numpy(target)

        def op_call(leaf=leaf, target=torch_target) -> None:
            leaf.grad = None
            gt.cross_entropy(leaf, target).backward()

        def torch_call(leaf=leaf, target=torch_target) -> None:
            leaf.grad = None
            torch.nn.functional.cross_entropy(leaf, target).backward()

        op_us = _median_us(op_call, max(repeat, 25))
        raw_us = _median_us(lambda logits=logits, target=target: raw(logits, target),
                            max(repeat, 25))
        torch_us = _median_us(torch_call, max(repeat, 25))
        rows.append({"shape": f"{n}x{classes}", "op_us": op_us, "raw_c_us": raw_us,
                     "overhead_us": op_us - raw_us, "ratio": op_us / raw_us,
                     "torch_us": torch_us})
    return rows


def format_overhead(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    title = (f"{NAME} per-call overhead (float32, forward + backward, median us; "
             "F.cross_entropy the same way beside it):")
    lines = ["", title]
    for row in rows:
        lines.append(f"  {row['shape']:>10}: op {row['op_us']:8.1f}  raw C {row['raw_c_us']:8.1f}  "
                     f"overhead {row['overhead_us']:7.1f}  ({row['ratio']:.2f}x)  "
                     f"F.cross_entropy {row['torch_us']:8.1f}")
    return lines
