"""CUDA C++ printer: the C99 kernel printer with CUDA's storage types.

Arithmetic is float for float32, bfloat16 and float16 storage (CUDA's ``expf``, ``logf``,
``tanhf``: correctly rounded to within a few ulp, unlike the ``__expf`` intrinsics, which are not
used because no derivation bounds their error) and double for float64 storage.
"""

from __future__ import annotations

from gradsmith.codegen.backends.c.printer import KernelCPrinter

# storage dtype -> (C++ storage type, arithmetic dtype)
STORAGE = {
    "float32": ("float", "float32"),
    "float64": ("double", "float64"),
    "bfloat16": ("__nv_bfloat16", "float32"),
    "float16": ("__half", "float32"),
}
ARITHMETICS = ("float32", "float64")


class KernelCudaPrinter(KernelCPrinter):
    """Prints in the arithmetic type of a storage dtype."""

    def __init__(self, storage_dtype: str):
        if storage_dtype not in STORAGE:
            raise ValueError(f"dtype must be one of {tuple(STORAGE)}, got {storage_dtype!r}")
        super().__init__(STORAGE[storage_dtype][1])
