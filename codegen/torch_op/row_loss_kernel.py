"""Raw calls of a row loss's generated C kernel on CPU tensors, with no autograd: the op in
``row_loss_op.py`` builds on this.

The kernel reads and writes the tensors' own memory (``data_ptr()``); inputs already
contiguous in the kernel's dtype are not copied, and the outputs are allocated by torch.
The reduction's denominator comes from the loss's definition, as in ``gradsmith.load``.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.row_loss import C_ARGUMENTS
from gradsmith.codegen.torch_op import memory
from gradsmith.codegen.torch_op.kernel import CPU_DTYPES, match_torch_threads, raise_for_status
from gradsmith.derive.row_loss import LossDefinition

_ARGUMENTS = [ctypes.c_int64 if kind == "int64" else ctypes.c_void_p for _, kind in C_ARGUMENTS]


@cache
def _entry(name: str, suffix: str):
    """``gs_NAME_SUFFIX`` of the shipped tree, in a library handle of its own (declared with
    plain pointers, leaving the NumPy loader's typed declarations alone)."""
    from gradsmith.codegen.row_loss_runtime import build_c

    function = getattr(ctypes.CDLL(str(build_c(name, shipped_kernels()))), f"gs_{name}_{suffix}")
    function.argtypes = _ARGUMENTS
    function.restype = ctypes.c_int
    return function


def fused_row_loss(spec: LossDefinition, logits: torch.Tensor, second: torch.Tensor,
                   alpha: torch.Tensor | None, ignore_index: int, reduction: str,
                   options: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dlogits) of ``spec`` on CPU logits (N, C) in float32/float64: ``second`` is the
    target (N,) or the teacher's logits (N, C), both already checked; loss is () or (N,) for a
    per-row reduction, in the logits' dtype; dlogits is the gradient of the returned loss."""
    dtype = logits.dtype
    n_rows, n_classes = (int(s) for s in logits.shape)
    logits = logits.contiguous()
    if spec.kind == "teacher":
        second, target, counted_rows = second.to(dtype).contiguous(), None, n_rows
    else:
        second, target = None, second.to(torch.int64).contiguous()
        counted_rows = int((target != ignore_index).sum())
        alpha = None if alpha is None else alpha.to(dtype).contiguous()
    total = spec.reduction(reduction).total(counted_rows, n_rows, n_classes)
    # total is 0 only where no row is counted, and the kernel zeroes uncounted rows.
    grad_scale = torch.full((n_rows,), 1.0 if total is None else 1.0 / max(total, 1), dtype=dtype)
    row_loss = torch.empty((n_rows,), dtype=dtype)
    dlogits = memory.empty((n_rows, n_classes), dtype=dtype)
    if n_rows:  # an empty batch: nothing to read, and data_ptr() may be NULL
        match_torch_threads()
        values = (ctypes.c_double * max(len(options), 1))(*options)
        bad_row = ctypes.c_int64(-1)
        status = _entry(spec.name, CPU_DTYPES[dtype])(
            logits.data_ptr(), None if second is None else second.data_ptr(),
            None if target is None else target.data_ptr(),
            None if alpha is None else alpha.data_ptr(), n_rows, n_classes, values,
            ignore_index, grad_scale.data_ptr(), row_loss.data_ptr(), dlogits.data_ptr(),
            ctypes.byref(bad_row))
        raise_for_status(status, target, bad_row.value, n_classes, ignore_index, spec.name)
    if total is None:
        return row_loss, dlogits
    # As gradsmith.load: the sum in float64; a mean over nothing is NaN.
    return (row_loss.sum(dtype=torch.float64) / total).to(dtype), dlogits
