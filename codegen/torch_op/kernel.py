"""Raw calls of the compiled kernels on torch tensors: the C library on CPU, the generated CUDA
launchers on torch's current stream.  No autograd here: the op in ``op.py`` builds on this.

Tensors are passed by ``data_ptr()`` with their row strides, so contiguous and row-strided
inputs are never copied.  On CUDA the only host synchronisation is the bad-target check, which
``check_targets=False`` (or ``GRADSMITH_CHECK_TARGETS=0``) skips; rows with a bad target then
get NaN loss and gradient instead of an error.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

import torch
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.arguments import REDUCTION_CODES, bad_target_message, check_options
from gradsmith.codegen.buffers import empty_rows
from gradsmith.codegen.native import Params, Status

_NUMPY_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
                torch.float16: "float16"}
# Entry-point suffixes of the dtypes each device runs.
CUDA_DTYPES = {dtype: SUFFIXES[name] for dtype, name in _NUMPY_NAMES.items()}
CPU_DTYPES = {dtype: CUDA_DTYPES[dtype] for dtype in (torch.float32, torch.float64)}


def arithmetic_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' arithmetic (and loss, lse, weight) dtype for logits of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def targets_checked(check_targets: bool) -> bool:
    """Whether the bad-target check (a host sync on CUDA) runs: ``GRADSMITH_CHECK_TARGETS=0``
    turns it off everywhere."""
    return check_targets and os.environ.get("GRADSMITH_CHECK_TARGETS", "1") != "0"


def _cpu_library() -> ctypes.CDLL:
    """The C kernels, as the NumPy runtime loads them (pointers are addresses: ``data_ptr()``)."""
    from gradsmith.codegen.backends.c import build

    return build.library()


@cache
def _cpu_entry(kind: str, suffix: str):
    return getattr(_cpu_library(), f"gs_ce_{kind}_{suffix}")


@cache
def omp_set_num_threads():
    """``omp_set_num_threads`` of the process's OpenMP runtime (shared by every kernel library
    gradsmith builds), or None when the kernels are built without OpenMP."""
    try:
        setter = _cpu_library().omp_set_num_threads
    except AttributeError:  # built without OpenMP: serial
        return None
    setter.argtypes = [ctypes.c_int]
    setter.restype = None
    return setter


def match_torch_threads() -> None:
    """Runs the C kernels' OpenMP loops on torch's intra-op thread count."""
    setter = omp_set_num_threads()
    if setter is not None:
        setter(torch.get_num_threads())


def cuda_arch(device: torch.device) -> str:
    """The architecture ("sm_90") the launchers are built for on a CUDA ``device``."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


@cache
def _cuda_library(arch: str) -> ctypes.CDLL:
    from gradsmith.codegen.backends.cuda import runtime

    return runtime._library(arch)


# NumPy advises the kernel to back blocks from this size up with transparent huge pages.
_HUGE_PAGE_BYTES = 4 << 20


def new_rows(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``like``'s shape, dtype and device.  A large one on
    CPU comes from NumPy's allocator, which advises the kernel to back blocks of 4 MiB and more
    with transparent huge pages: writing a fresh gradient of 500 MB then faults 2 MiB pages
    instead of 4 KiB ones, 3x faster on a virtual machine.  Its data lies as far into a cache
    line as ``like``'s (see ``empty_rows``)."""
    if like.is_cpu and like.nbytes >= _HUGE_PAGE_BYTES and like.dtype in CPU_DTYPES:
        return torch.from_numpy(empty_rows(tuple(like.shape), _NUMPY_NAMES[like.dtype],
                                           like.data_ptr()))
    # empty_like, not torch.empty(shape, dtype=, device=): 2 us against 5 a call.
    return torch.empty_like(like, memory_format=torch.contiguous_format)


def _row_stride(tensor: torch.Tensor) -> int:
    return int(tensor.stride(0)) if tensor.shape[0] > 1 else int(tensor.shape[1])


def _rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` if the kernels can walk its rows (classes contiguous, stride >= C), else a
    contiguous copy."""
    if tensor.shape[1] > 1 and tensor.stride(1) != 1:
        return tensor.contiguous()
    if tensor.shape[0] > 1 and tensor.stride(0) < tensor.shape[1]:
        return tensor.contiguous()
    return tensor


def check_tensor(name: str, value, logits: torch.Tensor) -> torch.Tensor:
    """``value``, a tensor on the ``logits``' device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    # Two CPU tensors share their device; making and comparing torch.device objects costs a
    # microsecond, a tenth of the kernel at classifier shapes.
    if not (value.is_cpu and logits.is_cpu) and value.device != logits.device:
        raise ValueError(f"{name} is on {value.device} but logits are on {logits.device}")
    return value


def check_logits(logits) -> str:
    """The entry-point suffix of (N, C) logits in a dtype their device's kernels run."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    if not (logits.is_cpu or logits.is_cuda):
        raise ValueError(f"logits must be on cpu or cuda, got {logits.device}")
    table = CUDA_DTYPES if logits.is_cuda else CPU_DTYPES
    if logits.dtype not in table:
        raise TypeError(f"logits on {logits.device.type} must be one of "
                        f"{tuple(str(d) for d in table)}, got {logits.dtype}")
    return table[logits.dtype]


def _check_target(target, logits: torch.Tensor, ignore_index: int) -> tuple[str, torch.Tensor]:
    target = check_tensor("target", target, logits)
    n_rows, n_classes = logits.shape
    if target.dim() == 1:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target of shape (N,) must hold integer class indices, got {target.dtype}")
        if target.shape[0] != n_rows:
            raise ValueError(f"target must have shape ({n_rows},) to match logits, got {tuple(target.shape)}")
        if target.dtype == torch.int64 and target.is_contiguous():
            return "index", target  # .to().contiguous() costs microseconds even as a no-op
        return "index", target.to(torch.int64).contiguous()
    if target.dim() == 2:
        if tuple(target.shape) != (n_rows, n_classes):
            raise ValueError(f"target of probabilities must have shape {(n_rows, n_classes)}, "
                             f"got {tuple(target.shape)}")
        if target.dtype != logits.dtype:
            raise TypeError(f"target of probabilities must be {logits.dtype} like logits, got {target.dtype}")
        if ignore_index != -100:
            raise ValueError("ignore_index is not supported for probability targets (as in "
                             "PyTorch); leave it at -100")
        return "probs", _rows("target", target)
    raise ValueError(f"target must have shape (N,) or (N, C), got {tuple(target.shape)}")


def _check_dlogits(dlogits, logits: torch.Tensor) -> torch.Tensor:
    dlogits = check_tensor("dlogits", dlogits, logits)
    if dlogits.shape != logits.shape or dlogits.dtype != logits.dtype:
        raise ValueError(f"dlogits must be {logits.dtype} of shape {tuple(logits.shape)}, got "
                         f"{dlogits.dtype} of shape {tuple(dlogits.shape)}")
    if _rows("dlogits", dlogits) is not dlogits:
        raise ValueError("dlogits must have contiguous classes and a row stride >= C")
    if dlogits.data_ptr() == logits.data_ptr() and dlogits.stride() != logits.stride():
        raise ValueError("dlogits written over logits must have the same strides")
    return dlogits


def raise_for_status(status: int, target: torch.Tensor | None, bad_row: int, n_classes: int,
                     ignore_index: int, kernel: str = "cross-entropy") -> None:
    """Nothing for GS_OK; else a ValueError naming the first bad target row, or the status."""
    if status == Status.OK:
        return
    if status == Status.TARGET:
        raise ValueError(bad_target_message(bad_row, int(target[bad_row]), n_classes,
                                            ignore_index))
    text = Status(status).describe() if status in set(Status) else f"status {status}"
    raise ValueError(f"the {kernel} kernel refused its arguments: {text}")


def check_reported_target(bad_row: torch.Tensor | None, target: torch.Tensor, n_classes: int,
                          ignore_index: int, check: bool, kernel: str = "cross-entropy") -> None:
    """The first bad target row a CUDA launch wrote to ``bad_row`` (-1: none), as a ValueError:
    the one host synchronisation, skipped unless ``check``."""
    if bad_row is None or not check:
        return
    row = int(bad_row.item())
    if row >= 0:
        raise_for_status(Status.TARGET, target, row, n_classes, ignore_index, kernel)


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
    grad_output: torch.Tensor | None = None,
    dlogits: torch.Tensor | None = None,
    want_lse: bool = False,
    check_targets: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """No autograd. logits (N, C), float32/float64 on CPU (C kernel), float32/float64/
    bfloat16/float16 on CUDA (generated launchers on torch's current stream); target (N,)
    int64 class indices or (N, C) probabilities. Runs the fused forward+backward once and
    returns (loss, dlogits, lse): loss () or (N,) for "none"; dlogits is the gradient of
    the returned loss scaled by grad_output (None = 1), written into `dlogits` when given
    (which may be `logits` itself for in-place, same strides), else a new tensor; lse (N,)
    when want_lse else None. Row-strided inputs are used without a copy."""
    suffix = check_logits(logits)
    label_smoothing, lse_square_scale, softcap = check_options(
        _NUMPY_NAMES[logits.dtype], ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, lse_square_scale=lse_square_scale, softcap=softcap)
    kind, target = _check_target(target, logits, int(ignore_index))
    n_rows, n_classes = map(int, logits.shape)
    aux = arithmetic_dtype(logits.dtype)
    if weight is not None:
        weight = check_tensor("weight", weight, logits)
        if weight.shape != (n_classes,):
            raise ValueError(f"weight must have shape ({n_classes},), got {tuple(weight.shape)}")
        if weight.dtype != logits.dtype:
            raise TypeError(f"weight must be {logits.dtype} like logits, got {weight.dtype}")
        weight = weight.to(aux).contiguous()
    if grad_output is not None:
        grad_output = torch.as_tensor(grad_output, device=logits.device)
        expected = (n_rows,) if reduction == "none" else ()
        if tuple(grad_output.shape) != expected:
            raise ValueError(f"grad_output must have shape {expected} for reduction="
                             f"{reduction!r}, got {tuple(grad_output.shape)}")
        grad_output = grad_output.to(aux).contiguous()
    original = logits
    logits = _rows("logits", logits)
    if dlogits is None:
        dlogits = new_rows(logits)
    else:
        if dlogits is original and logits is not original:
            raise ValueError("dlogits written over logits needs logits with contiguous classes "
                             "and a row stride >= C")
        dlogits = _check_dlogits(dlogits, logits)
    loss = logits.new_empty((n_rows,) if reduction == "none" else (), dtype=aux)
    lse = logits.new_empty((n_rows,), dtype=aux) if want_lse else None
    params = Params(int(ignore_index), REDUCTION_CODES[reduction], 0, label_smoothing,
                    lse_square_scale, 0.0 if softcap is None else softcap)
    pointers = {"weight": 0 if weight is None else weight.data_ptr(),
                "grad_output": 0 if grad_output is None else grad_output.data_ptr(),
                "lse": 0 if lse is None else lse.data_ptr()}
    if n_rows == 0:  # no row to read: the kernels' empty-batch results, without NULL pointers
        loss.fill_(float("nan") if reduction == "mean" else 0.0)
    elif logits.is_cpu:
        _run_cpu(kind, suffix, logits, target, params, pointers, loss, dlogits, ignore_index)
    else:
        _run_cuda(kind, suffix, logits, target, params, pointers, loss, dlogits, ignore_index,
                  targets_checked(check_targets))
    return loss, dlogits, lse


def _run_cpu(kind, suffix, logits, target, params, pointers, loss, dlogits, ignore_index) -> None:
    match_torch_threads()
    n_rows, n_classes = logits.shape
    bad_row = ctypes.c_int64(-1)
    if kind == "index":
        status = _cpu_entry(kind, suffix)(
            logits.data_ptr(), _row_stride(logits), target.data_ptr(), pointers["weight"],
            n_rows, n_classes, ctypes.byref(params), pointers["grad_output"], loss.data_ptr(),
            dlogits.data_ptr(), _row_stride(dlogits), pointers["lse"], ctypes.byref(bad_row))
    else:
        status = _cpu_entry(kind, suffix)(
            logits.data_ptr(), _row_stride(logits), target.data_ptr(), _row_stride(target),
            pointers["weight"], n_rows, n_classes, ctypes.byref(params),
            pointers["grad_output"], loss.data_ptr(), dlogits.data_ptr(), _row_stride(dlogits),
            pointers["lse"])
    raise_for_status(status, target, bad_row.value, n_classes, ignore_index)


def _run_cuda(kind, suffix, logits, target, params, pointers, loss, dlogits, ignore_index,
              check: bool) -> None:
    device = logits.device
    library = _cuda_library(cuda_arch(device))
    n_rows, n_classes = logits.shape
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        workspace = torch.empty(int(library.gs_ce_cuda_workspace_bytes(n_rows)), dtype=torch.uint8,
                                device=device)
        status_word = torch.empty((1,), dtype=torch.int64, device=device) if kind == "index" else None
        if kind == "index":
            code = getattr(library, f"gs_ce_cuda_index_{suffix}")(
                logits.data_ptr(), _row_stride(logits), target.data_ptr(), pointers["weight"] or None,
                n_rows, n_classes, ctypes.byref(params), pointers["grad_output"] or None,
                loss.data_ptr() or None, dlogits.data_ptr() or None, _row_stride(dlogits),
                pointers["lse"] or None, status_word.data_ptr(), workspace.data_ptr(), stream)
        else:
            code = getattr(library, f"gs_ce_cuda_probs_{suffix}")(
                logits.data_ptr(), _row_stride(logits), target.data_ptr(), _row_stride(target),
                pointers["weight"] or None, n_rows, n_classes, ctypes.byref(params),
                pointers["grad_output"] or None, loss.data_ptr() or None,
                dlogits.data_ptr() or None, _row_stride(dlogits), pointers["lse"] or None,
                workspace.data_ptr(), stream)
    if code != Status.OK:
        raise_for_status(code, target, -1, n_classes, ignore_index)
    check_reported_target(status_word, target, n_classes, ignore_index, check)
