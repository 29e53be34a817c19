"""``codegen.load(backend, dtype)``: one calling convention for every backend."""

from __future__ import annotations

import importlib
from collections.abc import Callable

BACKENDS = ("numpy", "c", "cuda")
DTYPES = {
    "numpy": ("float32", "float64"),
    "c": ("float32", "float64"),
    "cuda": ("float32", "float64", "bfloat16", "float16"),
}


def load(backend: str, dtype: str = "float32") -> Callable:
    """Return ``f(logits, target, *, weight=None, ignore_index=-100, reduction="mean", ...)``.

    ``f`` returns ``(loss, dlogits)`` (and ``lse`` with ``return_lse=True``) with the semantics
    of ``torch.nn.functional.cross_entropy``; see the README for every option.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES[backend]:
        raise ValueError(f"dtype for backend {backend!r} must be one of {DTYPES[backend]}, got {dtype!r}")
    runtime = importlib.import_module(f"codegen.backends.{backend}.runtime")
    return runtime.load(dtype)
