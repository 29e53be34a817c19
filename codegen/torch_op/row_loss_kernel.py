"""Raw calls of a row loss's generated kernels on torch tensors, with no autograd: the C kernel
on CPU tensors, the CUDA launchers on torch's current stream.  The op in ``row_loss_op.py``
builds on this.

The kernels read and write the tensors' own memory (``data_ptr()``); inputs already contiguous
in the kernel's dtype are not copied, and the outputs (and, on CUDA, the bad-row word) are
allocated by torch.  The reduction's denominator comes from the loss's definition, as in
``gradsmith.load``, and stays on the device.  On CUDA the only host synchronisation is the
bad-target check, which ``check_targets=False`` (or ``GRADSMITH_CHECK_TARGETS=0``) skips; a
row with a bad target then gets NaN loss and gradient instead of an error.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.row_loss import C_ARGUMENTS
from gradsmith.codegen.torch_op.kernel import (
    CPU_DTYPES,
    CUDA_DTYPES,
    arithmetic_dtype,
    check_reported_target,
    cuda_arch,
    match_torch_threads,
    new_rows,
    raise_for_status,
    targets_checked,
)
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


def _launcher(name: str, suffix: str, device: torch.device):
    """``gs_NAME_cuda_SUFFIX`` of the shipped tree, built for ``device``'s architecture."""
    from gradsmith.codegen.backends.cuda.row_loss_runtime import _launcher as launcher

    return launcher(name, suffix, cuda_arch(device), shipped_kernels() / "cuda")


def _grad_scale(total, n_rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Each row's gradient factor, 1 / total (1 for a per-row loss).  total is 0 only where no
    row is counted, and the kernels zero uncounted rows."""
    if isinstance(total, torch.Tensor):
        return (1.0 / total.clamp(min=1).to(torch.float64)).to(dtype).expand(n_rows).contiguous()
    return torch.full((n_rows,), 1.0 if total is None else 1.0 / max(total, 1), dtype=dtype,
                      device=device)


def fused_row_loss(spec: LossDefinition, logits: torch.Tensor, second: torch.Tensor,
                   alpha: torch.Tensor | None, ignore_index: int, reduction: str,
                   options: list[float], check_targets: bool = True,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dlogits) of ``spec`` on logits (N, C): float32/float64 on CPU, also bfloat16/
    float16 on CUDA.  ``second`` is the target (N,) or the teacher's logits (N, C), both
    already checked; loss is () or (N,) for a per-row reduction, in the logits' dtype (the
    kernels' arithmetic is float32 for 16-bit logits); dlogits is the gradient of the returned
    loss."""
    dtype, device = logits.dtype, logits.device
    real = arithmetic_dtype(dtype)
    n_rows, n_classes = map(int, logits.shape)
    logits = logits.contiguous()
    if spec.kind == "teacher":
        second, target, counted_rows = second.to(dtype).contiguous(), None, n_rows
    else:
        second, target = None, second.to(torch.int64).contiguous()
        counted_rows = (target != ignore_index).sum()  # stays on the device
        alpha = None if alpha is None else alpha.to(real).contiguous()
    total = spec.reduction(reduction).total(counted_rows, n_rows, n_classes)
    grad_scale = _grad_scale(total, n_rows, real, device)
    row_loss = torch.empty((n_rows,), dtype=real, device=device)
    dlogits = new_rows(logits)
    if n_rows:  # an empty batch: nothing to read, and data_ptr() may be NULL
        values = (ctypes.c_double * max(len(options), 1))(*options)
        pointers = [logits.data_ptr(), None if second is None else second.data_ptr(),
                    None if target is None else target.data_ptr(),
                    None if alpha is None else alpha.data_ptr(), n_rows, n_classes, values,
                    ignore_index, grad_scale.data_ptr(), row_loss.data_ptr(), dlogits.data_ptr()]
        if device.type == "cpu":
            match_torch_threads()
            bad_row = ctypes.c_int64(-1)
            status = _entry(spec.name, CPU_DTYPES[dtype])(*pointers, ctypes.byref(bad_row))
            raise_for_status(status, target, bad_row.value, n_classes, ignore_index, spec.name)
        else:
            _run_cuda(spec, pointers, device, CUDA_DTYPES[dtype], target, n_classes,
                      ignore_index, targets_checked(check_targets))
    if total is None:
        return row_loss.to(dtype), dlogits
    # As gradsmith.load: the sum in float64; a mean over nothing is NaN.
    return (row_loss.sum(dtype=torch.float64) / total).to(dtype), dlogits


def _run_cuda(spec: LossDefinition, pointers: list, device: torch.device, suffix: str,
              target: torch.Tensor | None, n_classes: int, ignore_index: int,
              check: bool) -> None:
    launch = _launcher(spec.name, suffix, device)
    with torch.cuda.device(device):
        bad_row = torch.empty((1,), dtype=torch.int64, device=device)
        status = launch(*pointers, bad_row.data_ptr(),
                        torch.cuda.current_stream(device).cuda_stream)
    raise_for_status(status, target, -1, n_classes, ignore_index, spec.name)
    if target is not None:
        check_reported_target(bad_row, target, n_classes, ignore_index, check, spec.name)
