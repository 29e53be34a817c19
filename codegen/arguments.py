"""Validate and normalise the arguments of a cross-entropy call, once for every backend.

Errors name the argument and say how to fix it.  Arrays are never misread: an array whose
class axis is not contiguous is copied (and ``inplace`` then refused), other dtypes are
refused rather than converted silently, except integer targets, which become int64.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

REDUCTIONS = ("none", "mean", "sum")
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


# Not frozen: a frozen dataclass's __init__ cost 6 us a call, more than the kernel at
# classifier shapes.
@dataclass(slots=True)
class CrossEntropyCall:
    logits: Any
    target: Any
    target_kind: str  # "index" or "probs"
    weight: Any | None
    ignore_index: int
    reduction: str
    label_smoothing: float
    lse_square_scale: float
    softcap: float | None
    grad_output: Any | None  # 0-d for mean/sum, (N,) for none; None means 1
    return_lse: bool
    inplace: bool
    out: Any | None = None  # the caller's (N, C) buffer for dlogits, checked; None: a new one

    @property
    def n_rows(self) -> int:
        return int(self.logits.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def reduction_code(self) -> int:
        return REDUCTION_CODES[self.reduction]


def dtype_name(dtype: Any) -> str:
    """``str(dtype)`` ("float32"), remembered per dtype: NumPy builds the name in Python on
    every call, a few microseconds, the whole kernel at classifier shapes."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        name = str(dtype)
    try:
        _DTYPE_NAMES[dtype] = name
    except TypeError:  # unhashable: not remembered
        pass
    return name


_DTYPE_NAMES: dict[Any, str] = {}
# The largest finite and the smallest normal value of each arithmetic dtype's type.
_LIMITS = {name: (float(np.finfo(kind).max), float(np.finfo(kind).tiny))
           for name, kind in (("float32", np.float32), ("float64", np.float64))}


def _real(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    # The type test first: numbers.Real's isinstance goes through the ABC machinery.
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be finite and {bounds}, got {value}")
    return value


real = _real


def check_reduction(reduction: Any, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """``reduction``, one of ``allowed`` (cross-entropy's by default)."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {tuple(allowed)}, got {reduction!r}")
    return reduction


def check_ignore_index(ignore_index: Any) -> int:
    """``ignore_index`` as an int (a bool is refused)."""
    if type(ignore_index) is not int and (isinstance(ignore_index, bool)
                                          or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return int(ignore_index)


def check_logits(logits: Any, dtype: str, *, name: str = "logits", copy: bool = True,
                 backend_dtypes: tuple[str, ...] = ()) -> Any:
    """A 2-D array of ``dtype`` with at least one class; rows made contiguous when ``copy``.

    ``backend_dtypes`` (the dtypes the calling backend can load) lets a dtype mismatch advise
    only what can work."""
    if not hasattr(logits, "ndim") or not hasattr(logits, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {tuple(logits.shape)}")
    if dtype_name(logits.dtype) != dtype:
        given = dtype_name(logits.dtype)
        advice = (f"cast it or load dtype={given!r}" if given in backend_dtypes else
                  f"cast it to one of {', '.join(backend_dtypes)}" if backend_dtypes else "cast it")
        raise TypeError(f"{name} must be {dtype} for this kernel, got {given}; {advice}")
    if int(logits.shape[1]) < 1:
        raise ValueError(f"{name} must have at least one class (C >= 1)")
    return np.ascontiguousarray(logits) if copy else logits


def check_index_target(target: Any, n_rows: int, n_classes: int, ignore_index: Any, *,
                       xp: Any = np, check_range: bool = True) -> Any:
    """Class indices (N,) as int64, each in [0, C) or ``ignore_index``; errors name the first bad row."""
    check_ignore_index(ignore_index)
    if not hasattr(target, "ndim") or not hasattr(target, "dtype"):
        raise TypeError(f"target must be an array, got {type(target).__name__}")
    if target.ndim != 1:
        raise ValueError(f"target must have shape ({n_rows},), got shape {tuple(target.shape)}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target of shape (N,) must hold integer class indices, got {target.dtype}")
    if target.shape[0] != n_rows:
        raise ValueError(f"target must have shape ({n_rows},) to match logits, got {tuple(target.shape)}")
    if target.dtype.kind == "u" and n_rows and int(target.max()) > np.iinfo(np.int64).max:
        row = int(xp.argmax(target > np.iinfo(np.int64).max))
        raise ValueError(f"target[{row}] = {int(target[row])} is outside [0, {n_classes})")
    target = xp.ascontiguousarray(target, dtype=xp.int64)
    if check_range and n_rows:
        bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
        if bool(bad.any()):
            row = int(xp.argmax(bad))
            raise ValueError(bad_target_message(row, int(target[row]), n_classes, ignore_index))
    return target


def check_grad_output(grad_output: Any, n_rows: int, reduction: str, per_row: bool, dtype: Any,
                      *, xp: Any = np) -> Any:
    """None, or grad_output in ``dtype``: shape (N,) for a per-row reduction, else 0-d."""
    if grad_output is None:
        return None
    grad_output = xp.asarray(grad_output)
    expected = (n_rows,) if per_row else ()
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output must have shape {expected} for reduction={reduction!r}, got {tuple(grad_output.shape)}")
    # asarray, not ascontiguousarray: that makes a 0-d grad_output 1-d, which the NumPy
    # kernels then slice per block of rows.
    grad_output = xp.asarray(grad_output, dtype=dtype)
    if grad_output.ndim:
        grad_output = xp.ascontiguousarray(grad_output)
    return grad_output


def _row_major(name: str, array: Any, xp: Any) -> Any:
    """Rows may be strided, but each row's classes must be contiguous: copy otherwise."""
    if array.ndim == 2 and array.shape[1] > 1 and array.strides[1] != array.itemsize:
        return xp.ascontiguousarray(array)
    if array.ndim == 2 and array.shape[0] > 0 and array.strides[0] < 0:
        return xp.ascontiguousarray(array)
    return array


def _data_address(array: Any) -> int:
    interface = getattr(array, "__array_interface__", None) or array.__cuda_array_interface__
    return int(interface["data"][0])


def _check_out(out: Any, logits: Any, inputs: tuple, inplace: bool, xp: Any) -> Any:
    """``out`` receives dlogits as it is: same array type, shape and dtype as logits, writeable,
    each row's classes contiguous, and no memory shared with an input (logits itself aside)."""
    if not isinstance(out, type(logits)) and not isinstance(logits, type(out)):
        raise TypeError(f"out must be a {type(logits).__name__} like logits, got {type(out).__name__}")
    if tuple(out.shape) != tuple(logits.shape):
        raise ValueError(f"out must have shape {tuple(logits.shape)} like logits, got {tuple(out.shape)}")
    if out.dtype != logits.dtype:
        raise TypeError(f"out must be {logits.dtype} like logits, got {out.dtype}")
    flags = out.flags  # a new object at every access in NumPy
    if not getattr(flags, "writeable", True):
        raise ValueError("out must be writeable")
    n_rows, n_classes = map(int, out.shape)
    row_stride, class_stride = map(int, out.strides)
    if (not flags.aligned or (n_classes > 1 and class_stride != out.itemsize)
            or (n_rows > 1 and row_stride < n_classes * out.itemsize)):
        raise ValueError("out must have aligned rows whose classes are contiguous and that do "
                         "not overlap (e.g. numpy.empty_like(logits))")
    # may_share_memory compares bounds only (0.3 us against 1.5 us an address in NumPy), and
    # answers for the usual separate buffer; empty arrays share no memory, so it cannot.
    shares = out is logits or xp.may_share_memory(out, logits)
    same = out is logits or (tuple(out.strides) == tuple(logits.strides)
                             and (shares or out.size == 0)
                             and _data_address(out) == _data_address(logits))
    if inplace and not same:
        raise ValueError("inplace=True writes the gradient over logits: leave out=None or pass logits")
    if same:
        return logits
    for name, array in (("logits", logits), *zip(("target", "weight", "grad_output"), inputs)):
        if array is not None and (shares if array is logits else xp.may_share_memory(out, array)):
            raise ValueError(f"out shares memory with {name}; pass a separate buffer (or logits "
                             "itself, for the gradient over the logits)")
    return out


def check_options(
    dtype: str,
    *,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    lse_square_scale: Any,
    softcap: Any,
) -> tuple[float, float, float | None]:
    """Check the scalar options of a call in ``dtype`` (a NumPy dtype name); return
    ``(label_smoothing, lse_square_scale, softcap)`` as Python floats."""
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    label_smoothing = _real("label_smoothing", label_smoothing, low=0.0, high=1.0)
    lse_square_scale = _real("lse_square_scale", lse_square_scale, low=0.0)
    largest, tiny = _LIMITS["float64" if dtype == "float64" else "float32"]
    if lse_square_scale > largest:
        raise ValueError(f"lse_square_scale must be at most {largest:g} for {dtype}")
    if softcap is not None:
        softcap = _real("softcap", softcap, low=0.0)
        if not tiny <= softcap <= largest:
            raise ValueError(
                f"softcap must lie in [{tiny:g}, {largest:g}] for {dtype} "
                f"(or be None to disable it), got {softcap:g}"
            )
    return label_smoothing, lse_square_scale, softcap


def prepare_call(
    logits: Any,
    target: Any,
    *,
    dtype: str,
    xp: Any = np,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output: Any = None,
    backend_dtypes: tuple[str, ...] = (),
    return_lse: bool = False,
    inplace: bool = False,
    out: Any = None,
    check_targets: bool = True,
) -> CrossEntropyCall:
    """Check every argument against ``torch.nn.functional.cross_entropy``'s rules.

    ``backend_dtypes`` (the dtypes the calling backend can load) lets a dtype mismatch advise
    only what can work."""
    check_logits(logits, dtype, copy=False, backend_dtypes=backend_dtypes)
    n_rows, n_classes = map(int, logits.shape)
    label_smoothing, lse_square_scale, softcap = check_options(
        dtype, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale, softcap=softcap)
    for name, flag in (("return_lse", return_lse), ("inplace", inplace)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")

    if not hasattr(target, "ndim") or not hasattr(target, "dtype"):
        raise TypeError(f"target must be an array, got {type(target).__name__}")
    if target.ndim == 1:
        target = check_index_target(target, n_rows, n_classes, ignore_index, xp=xp,
                                    check_range=check_targets)
        target_kind = "index"
    elif target.ndim == 2:
        if tuple(target.shape) != (n_rows, n_classes):
            raise ValueError(f"target of probabilities must have shape {(n_rows, n_classes)}, got {tuple(target.shape)}")
        if dtype_name(target.dtype) != dtype:
            raise TypeError(f"target of probabilities must be {dtype} like logits, got {target.dtype}")
        if ignore_index != -100:
            raise ValueError(
                "ignore_index is not supported for probability targets (as in PyTorch); leave it at -100"
            )
        target = _row_major("target", target, xp)
        target_kind = "probs"
    else:
        raise ValueError(f"target must have shape (N,) or (N, C), got shape {tuple(target.shape)}")

    if weight is not None:
        if not hasattr(weight, "ndim") or weight.ndim != 1 or int(weight.shape[0]) != n_classes:
            shape = tuple(getattr(weight, "shape", ()))
            raise ValueError(f"weight must have shape ({n_classes},), got {shape}")
        if dtype_name(weight.dtype) != dtype:
            raise TypeError(f"weight must be {dtype} like logits, got {weight.dtype}")
        weight = xp.ascontiguousarray(weight)

    grad_output = check_grad_output(grad_output, n_rows, reduction, reduction == "none",
                                    logits.dtype, xp=xp)

    original = logits
    logits = _row_major("logits", logits, xp)
    if inplace and logits is not original:
        raise ValueError("inplace=True needs logits whose rows are contiguous; pass a contiguous array")
    if inplace and not getattr(logits.flags, "writeable", True):
        raise ValueError("inplace=True needs a writeable logits array")
    if out is not None:
        out = _check_out(out, logits, (target, weight, grad_output), inplace, xp)
        if out is logits:  # the gradient over the logits (_check_out's answer): in place
            inplace, out = True, None
    return CrossEntropyCall(
        logits=logits,
        target=target,
        target_kind=target_kind,
        weight=weight,
        ignore_index=int(ignore_index),
        reduction=reduction,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
        softcap=softcap,
        grad_output=grad_output,
        return_lse=return_lse,
        inplace=inplace,
        out=out,
    )


def bad_target_message(row: int, value: int, n_classes: int, ignore_index: int) -> str:
    """What every backend and op says of a class index outside [0, C) that is not ignored."""
    return (f"target[{row}] = {value} is outside [0, {n_classes}) and is not ignore_index "
            f"({ignore_index})")
