"""``load(dtype)``: the C kernels behind the callable every backend returns.

Arguments are validated by :func:`gradsmith.codegen.arguments.prepare_call`, except the class indices,
which the C entry point checks itself before reading any logit; its status codes become
``ValueError``/``TypeError`` naming the argument (and the first bad row).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.arguments import bad_target_message, prepare_call
from gradsmith.codegen.backends.c import build
from gradsmith.codegen.backends.c.context import DTYPES
from gradsmith.codegen.buffers import empty_rows
from gradsmith.codegen.native import Status, address, call_params


def _rows(name: str, array: np.ndarray, inplace: bool = False) -> tuple[np.ndarray, int]:
    """The array and its row stride in elements; copied when the C layout cannot describe it."""
    n_rows, n_classes = array.shape
    stride = array.strides[0] if n_rows > 1 else n_classes * array.itemsize
    if stride % array.itemsize or stride < n_classes * array.itemsize or not array.flags.aligned:
        if inplace:
            raise ValueError(f"{'inplace=True needs ' if name == 'logits' else ''}{name} with "
                             "aligned, non-overlapping rows")
        array = np.ascontiguousarray(array)
        stride = n_classes * array.itemsize
    return array, stride // array.itemsize


def _aligned(array: np.ndarray | None) -> np.ndarray | None:
    if array is None or array.flags.aligned:
        return array
    return np.ascontiguousarray(array).copy()


def _raise_for(status: int, call, bad_row: int) -> None:
    if status == Status.OK:
        return
    if status == Status.TARGET:
        raise ValueError(bad_target_message(bad_row, int(call.target[bad_row]), call.n_classes,
                                            call.ignore_index))
    if status == Status.PARAMS:
        raise ValueError("options out of range (reduction, label_smoothing, lse_square_scale, softcap)")
    if status == Status.SHAPE:
        raise ValueError(f"logits shape {call.logits.shape} or its strides are not supported")
    raise ValueError(f"C kernel rejected its arguments (status {status})")


def load(dtype: str, kernels: Path | None = None) -> Callable:
    """The ``gradsmith.load`` callable for ``dtype`` ("float32" or "float64"), running the C
    kernels of the tree ``kernels`` (default: the shipped one)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype for backend 'c' must be one of {', '.join(DTYPES)}; got {dtype!r}")
    source_dir = build.SOURCE_DIR if kernels is None else Path(kernels) / "c"
    return bind(build.library(str(source_dir)), dtype)


def bind(library: ctypes.CDLL, dtype: str) -> Callable:
    """The ``gradsmith.load`` callable over an already loaded library (see :func:`build.load_library`)."""
    suffix = SUFFIXES[dtype]
    index_kernel = getattr(library, f"gs_ce_index_{suffix}")
    probs_kernel = getattr(library, f"gs_ce_probs_{suffix}")

    def cross_entropy(logits, target, **options):
        call = prepare_call(logits, target, dtype=dtype, check_targets=False,
                            backend_dtypes=DTYPES, **options)
        n_rows, n_classes = call.n_rows, call.n_classes
        logits_array, logits_stride = _rows("logits", call.logits, call.inplace)
        logits_address = address(logits_array)
        if call.inplace:
            dlogits, dlogits_stride = logits_array, logits_stride
        elif call.out is not None:
            dlogits, dlogits_stride = _rows("out", call.out, inplace=True)
        else:
            dlogits = empty_rows((n_rows, n_classes), dtype, logits_address)
            dlogits_stride = n_classes
        loss = np.empty(n_rows if call.reduction == "none" else 1, dtype=dtype)
        lse = np.empty(n_rows, dtype=dtype) if call.return_lse else None
        weight = _aligned(call.weight)
        grad_output = _aligned(call.grad_output)
        params = call_params(call)
        common = {
            "weight": address(weight),
            "grad_output": address(grad_output),
            "loss": address(loss),
            "dlogits": address(dlogits),
            "lse": address(lse),
        }
        bad_row = ctypes.c_int64(-1)
        if call.target_kind == "index":
            targets = _aligned(call.target)
            status = index_kernel(
                logits_address, logits_stride,
                address(targets), common["weight"], n_rows, n_classes,
                ctypes.byref(params), common["grad_output"], common["loss"], common["dlogits"],
                dlogits_stride, common["lse"], ctypes.byref(bad_row),
            )
        else:
            targets, targets_stride = _rows("target", call.target)
            status = probs_kernel(
                logits_address, logits_stride, address(targets),
                targets_stride, common["weight"], n_rows, n_classes, ctypes.byref(params),
                common["grad_output"], common["loss"], common["dlogits"], dlogits_stride,
                common["lse"],
            )
        _raise_for(status, call, bad_row.value)
        loss_out = loss if call.reduction == "none" else loss.reshape(())
        if call.return_lse:
            return loss_out, dlogits, lse
        return loss_out, dlogits

    return cross_entropy
