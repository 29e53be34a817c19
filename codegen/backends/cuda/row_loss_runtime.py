"""The generic row losses' CUDA kernels (``gradsmith.load("cuda", dtype, loss=NAME)``).

The kernel of :func:`gradsmith.codegen.row_loss_runtime.make_callable` for CUDA: the
arguments, checked there on the host (targets included), are copied to the current CuPy
device (bfloat16 as its 16-bit pattern), the launcher runs on CuPy's current stream, and the
row losses and the gradient come back as NumPy arrays (the gradient in the logits' dtype).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from gradsmith.codegen.backends.cuda.runtime import _cupy, _pointer, _to_device, build_library
from gradsmith.codegen.native import Status
from gradsmith.codegen.row_loss import C_ARGUMENTS, CUDA_SUFFIXES, cuda_path
from gradsmith.derive.row_loss import LossDefinition

# The C ABI's arguments (device pointers, but options: a host pointer), then the stream.
_ARGUMENTS = [ctypes.c_int64 if kind == "int64" else ctypes.c_void_p
              for _, kind in C_ARGUMENTS] + [ctypes.c_void_p]


@cache
def _launcher(name: str, suffix: str, arch: str, source_dir: Path) -> Callable:
    library = ctypes.CDLL(str(build_library(arch, source_dir, Path(cuda_path(name)).name)))
    function = getattr(library, f"gs_{name}_cuda_{suffix}")
    function.argtypes = _ARGUMENTS
    function.restype = ctypes.c_int
    return function


def cuda_kernel(definition: LossDefinition, dtype: str, kernels: Path) -> Callable:
    """``kernel(logits, second, target, alpha, ignore_index, scale, values) -> (row_losses,
    dlogits)`` on the GPU; raises ValueError without CuPy or a GPU."""
    _cupy()
    source_dir = Path(kernels) / "cuda"
    suffix = CUDA_SUFFIXES[dtype]

    def kernel(logits, second, target, alpha, ignore_index, scale, values):
        cupy = _cupy()
        n_rows, n_classes = logits.shape
        if n_rows == 0:
            return np.empty(0, dtype=scale.dtype), np.empty_like(logits)
        launch = _launcher(definition.name, suffix,
                           f"sm_{cupy.cuda.Device().compute_capability}", source_dir)
        device = [_to_device(cupy, a) for a in (logits, second, target, alpha, scale)]
        dlogits = cupy.empty(logits.shape, dtype=device[0].dtype)
        row_losses = cupy.empty(n_rows, dtype=scale.dtype)
        bad_row = cupy.empty(1, dtype=np.int64)
        options = np.asarray(values or [0.0], dtype=np.float64)
        d_logits, d_second, d_target, d_alpha, d_scale = device
        status = launch(_pointer(d_logits), _pointer(d_second), _pointer(d_target), _pointer(d_alpha),
                        n_rows, n_classes, options.ctypes.data,
                        ignore_index, _pointer(d_scale), _pointer(row_losses), _pointer(dlogits),
                        _pointer(bad_row), cupy.cuda.get_current_stream().ptr)
        if status != Status.OK:
            raise ValueError(f"{definition.name} cuda kernel: {Status(status).describe()}")
        # make_callable has range-checked the targets on the host, so *bad_row stays -1; reading
        # it back would wait for the stream on every call.
        return row_losses.get(), dlogits.get().view(logits.dtype)

    return kernel
