"""``gradsmith.load(backend, dtype, loss=NAME)`` for the losses emitted from a row-loss spec.

The callable's arguments are checked from the loss's definition alone: its kind (class targets
or teacher logits), its options and their ranges, and its reductions.  The kernels return each
row's loss and the gradient scaled per row; the reduction divides by its denominator here.
Logits of 16-bit storage (CUDA: bfloat16 as ``ml_dtypes.bfloat16``, float16) keep their dtype in
the gradient; the loss, the gradient factors and alpha are float32, as the kernels' arithmetic.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from gradsmith.codegen.arguments import (
    check_grad_output,
    check_index_target,
    check_logits,
    check_reduction,
    real,
)
from gradsmith.codegen.backends.cuda.printer import STORAGE
from gradsmith.codegen.buffers import empty_rows
from gradsmith.codegen.native import Status, address, content_key
from gradsmith.codegen.row_loss import C_ARGUMENTS, DTYPES, SUFFIXES, c_path, numpy_path
from gradsmith.derive.row_loss import LossDefinition

BACKENDS = ("numpy", "c", "cuda")
# The dtypes each backend's kernels are emitted in.
BACKEND_DTYPES = {"numpy": DTYPES, "c": DTYPES, "cuda": tuple(STORAGE)}


def option_values(definition: LossDefinition, options: dict) -> list[float]:
    """The loss's option values in its definition's order, each checked against its range."""
    unknown = sorted(set(options) - {o.name for o in definition.options})
    if unknown:
        raise TypeError(f"{definition.name} has no option {unknown[0]!r}; its options are "
                        f"{[o.name for o in definition.options]}")
    values = []
    for option in definition.options:
        value = real(option.name, options.get(option.name, option.default),
                     low=option.low, high=option.high)
        if option.low_open and value <= option.low:
            raise ValueError(f"{option.name} must be > {option.low:g}, got {value:g}")
        values.append(value)
    return values


def _grad_scale(definition, reduction, grad_output, counted, n_rows, n_classes, dtype):
    """Each row's gradient factor: grad_output over the reduction's denominator (0 if ignored)."""
    total = definition.reduction(reduction).total(int(counted.sum()), n_rows, n_classes)
    if total is None:
        scale = np.ones(n_rows) if grad_output is None else grad_output.astype(np.float64)
    else:
        factor = 1.0 if grad_output is None else float(grad_output)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.full(n_rows, np.float64(factor) / np.float64(total))
    return np.where(counted, scale, 0).astype(dtype), total


def _reduce(row_losses: np.ndarray, total, dtype):
    if total is None:
        return row_losses
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.float64(row_losses.sum(dtype=np.float64)) / np.float64(total),
                          dtype=dtype)


def make_callable(definition: LossDefinition, dtype: str, kernel: Callable,
                  dtypes: tuple[str, ...] = DTYPES) -> Callable:
    """The user-facing callable around ``kernel(logits, second, target, alpha, scale, options)``
    for logits of ``dtype``, one of the backend's ``dtypes``; alpha and the gradient factors
    reach the kernel in its arithmetic dtype."""
    names = [r.name for r in definition.reductions]
    teacher = definition.kind == "teacher"
    real = STORAGE[dtype][1]

    def loss(logits, second, *, alpha=None, ignore_index=-100,
             reduction=definition.default_reduction, grad_output=None, **options):
        logits = check_logits(logits, dtype, backend_dtypes=dtypes)
        n_rows, n_classes = map(int, logits.shape)
        check_reduction(reduction, names)
        values = option_values(definition, options)
        grad_output = check_grad_output(grad_output, n_rows, reduction, reduction == "none",
                                        real)
        target = None
        if teacher:
            if alpha is not None or ignore_index != -100:
                raise ValueError(f"{definition.name} takes no alpha or ignore_index")
            second = check_logits(second, dtype, name="teacher_logits", backend_dtypes=dtypes)
            if second.shape != logits.shape:
                raise ValueError(f"teacher_logits must have shape {tuple(logits.shape)} like "
                                 f"the student's, got {tuple(second.shape)}")
            counted = np.ones(n_rows, dtype=bool)
        else:
            target = check_index_target(second, n_rows, n_classes, ignore_index)
            counted = target != ignore_index
            second = None
            if alpha is not None:
                if not definition.class_weights:
                    raise ValueError(f"{definition.name} takes no alpha")
                if getattr(alpha, "shape", None) != (n_classes,):
                    raise ValueError(f"alpha must have shape ({n_classes},), got "
                                     f"{tuple(getattr(alpha, 'shape', ()))}")
                if str(alpha.dtype) != dtype:
                    raise TypeError(f"alpha must be {dtype} like logits, got {alpha.dtype}")
                alpha = np.ascontiguousarray(alpha, dtype=real)
        scale, total = _grad_scale(definition, reduction, grad_output, counted, n_rows,
                                   n_classes, real)
        row_losses, dlogits = kernel(logits, second, target, alpha, int(ignore_index), scale,
                                     values)
        return _reduce(row_losses, total, real), dlogits

    loss.__name__ = f"{definition.name}_{dtype}"
    loss.__doc__ = f"{definition.title}: f(logits, {'teacher_logits' if teacher else 'target'}, ...) -> (loss, dlogits)"
    return loss


@cache
def _numpy_module(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: write it with 'gradsmith generate --out DIR'")
    name = f"gradsmith_generated_{path.stem}_{content_key([str(path)])}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _numpy_kernel(definition: LossDefinition, dtype: str, kernels: Path) -> Callable:
    module = _numpy_module(kernels / numpy_path(definition.name, dtype))

    def kernel(logits, second, target, alpha, ignore_index, scale, values):
        out = np.empty_like(logits)
        first = (second,) if definition.kind == "teacher" else (target, alpha, ignore_index)
        with np.errstate(all="ignore"):  # non-finite rows are NaN by design, not a warning
            row_losses = module.rows(logits, *first, scale, *values, out)
        return row_losses, out

    return kernel


def build_c(definition_name: str, kernels: Path) -> Path:
    """Compile the loss's C file of the tree ``kernels`` once (cached by content)."""
    from gradsmith.codegen.backends.c import build

    source = kernels / c_path(definition_name)
    header = kernels / "c" / "gradsmith_ce.h"
    for path in (source, header):
        if not path.is_file():
            raise OSError(f"{path} is missing: write a complete tree with 'gradsmith generate --out DIR'")
    return build.compile_once(f"gradsmith_{definition_name}", [source],
                              [source.read_bytes(), header.read_bytes()],
                              f"compiling the {definition_name} kernels")


@cache
def _c_library(name: str, kernels: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(build_c(name, kernels)))


def _c_kernel(definition: LossDefinition, dtype: str, kernels: Path) -> Callable:
    return bind_c(_c_library(definition.name, kernels), definition, dtype)


def bind_c(library: ctypes.CDLL, definition: LossDefinition, dtype: str) -> Callable:
    """``kernel(logits, second, target, alpha, ignore_index, scale, values)`` -> (row losses,
    gradient) on the ``dtype`` entry point of a compiled library of ``definition``."""
    function = getattr(library, f"gs_{definition.name}_{SUFFIXES[dtype]}")
    # Pointers as addresses, as for the cross-entropy kernels; every dtype is checked before.
    kinds = {"real*": ctypes.c_void_p, "int64*": ctypes.c_void_p, "double*": ctypes.c_void_p,
             "int64": ctypes.c_int64}
    function.argtypes = [kinds[kind] for _, kind in C_ARGUMENTS]
    function.restype = ctypes.c_int

    def kernel(logits, second, target, alpha, ignore_index, scale, values):
        logits = np.ascontiguousarray(logits)
        second = None if second is None else np.ascontiguousarray(second)
        n_rows, n_classes = logits.shape
        logits_address = address(logits)
        dlogits = empty_rows(logits.shape, logits.dtype, logits_address)
        row_losses = np.empty(n_rows, dtype=dtype)
        options = np.asarray(values or [0.0], dtype=np.float64)
        bad_row = ctypes.c_int64(-1)
        status = function(logits_address, address(second), address(target), address(alpha),
                          n_rows, n_classes, address(options), ignore_index, address(scale),
                          address(row_losses), address(dlogits), ctypes.byref(bad_row))
        if status != Status.OK:
            raise ValueError(f"{definition.name} kernel: {Status(status).describe()}")
        return row_losses, dlogits

    return kernel


def load(definition: LossDefinition, backend: str, dtype: str, kernels: Path) -> Callable:
    """The callable of ``definition`` on ``backend`` from the kernel tree ``kernels``."""
    if backend not in BACKENDS:
        raise ValueError(f"loss {definition.name!r} has kernels for {BACKENDS}, not {backend!r}")
    dtypes = BACKEND_DTYPES[backend]
    if dtype not in dtypes:
        raise ValueError(f"dtype for loss {definition.name!r} on backend {backend!r} must be one "
                         f"of {dtypes}, got {dtype!r}")
    if backend == "cuda":
        from gradsmith.codegen.backends.cuda.row_loss_runtime import cuda_kernel as make
    else:
        make = _numpy_kernel if backend == "numpy" else _c_kernel
    return make_callable(definition, dtype, make(definition, dtype, Path(kernels)), dtypes)

