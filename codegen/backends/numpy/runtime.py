"""Load the emitted NumPy module of a dtype and wrap it in ``codegen.load``'s callable.

The module is imported by file path from ``generated/numpy/`` next to the package (or from
the folder named by ``GRADSMITH_GENERATED``), so what runs is exactly what is checked in.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from codegen.arguments import prepare_call
from codegen.backends.numpy import DTYPES, module_path

ENVIRONMENT_VARIABLE = "GRADSMITH_GENERATED"


def generated_root() -> Path:
    """The folder holding the emitted files: ``$GRADSMITH_GENERATED`` or ``<repo>/generated``."""
    override = os.environ.get(ENVIRONMENT_VARIABLE)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "generated"


@cache
def _import(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run 'gradsmith generate' (or set {ENVIRONMENT_VARIABLE})"
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


def module(dtype: str) -> ModuleType:
    """The emitted module of ``dtype`` (imported once per path)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype for backend 'numpy' must be one of {DTYPES}, got {dtype!r}")
    return _import(generated_root() / module_path(dtype))


def load(dtype: str = "float32") -> Callable:
    """``f(logits, target, **options) -> (loss, dlogits[, lse])`` running the emitted module."""
    emitted = module(dtype)

    def cross_entropy(logits, target, **options):
        call = prepare_call(logits, target, dtype=dtype, xp=np, **options)
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
            out=call.logits if call.inplace else None,
        )

    cross_entropy.__name__ = f"cross_entropy_numpy_{dtype}"
    cross_entropy.__doc__ = load.__doc__
    return cross_entropy
