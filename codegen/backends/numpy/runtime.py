"""Load the emitted NumPy module of a dtype and wrap it in ``gradsmith.load``'s callable.

The module is imported by file path from the kernel tree's ``numpy/`` folder (the shipped
``generated/`` by default), so what runs is exactly what was emitted.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
from gradsmith.codegen.arguments import prepare_call
from gradsmith.codegen.backends.numpy import DTYPES, module_path
from gradsmith.codegen.loading import kernel_tree


@cache
def _import(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: write a complete tree with 'gradsmith generate --out DIR'"
        )
    name = f"gradsmith_generated_numpy_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def module(dtype: str, kernels: Path | None = None) -> ModuleType:
    """The emitted module of ``dtype`` in the kernel tree ``kernels`` (imported once per path)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype for backend 'numpy' must be one of {DTYPES}, got {dtype!r}")
    return _import(kernel_tree(kernels) / module_path(dtype))


def load(dtype: str = "float32", kernels: Path | None = None) -> Callable:
    """``f(logits, target, **options) -> (loss, dlogits[, lse])`` running the emitted module."""
    emitted = module(dtype, kernels)

    def cross_entropy(logits, target, **options):
        call = prepare_call(logits, target, dtype=dtype, xp=np, backend_dtypes=DTYPES, **options)
        return emitted.cross_entropy(
            call.logits,
            call.target,
            weight=call.weight,
            ignore_index=call.ignore_index,
            reduction=call.reduction,
            label_smoothing=call.label_smoothing,
            lse_square_scale=call.lse_square_scale,
            softcap=call.softcap,
            grad_output=call.grad_output,
            return_lse=call.return_lse,
            out=call.logits if call.inplace else call.out,
        )

    cross_entropy.__name__ = f"cross_entropy_numpy_{dtype}"
    cross_entropy.__doc__ = load.__doc__
    return cross_entropy
