"""Load the CUDA kernels: compile ``generated/cuda`` with nvcc, load with ctypes, call on CuPy.

The shared library is cached under ``$GRADSMITH_CACHE`` (default ``~/.cache/gradsmith``) keyed
by the sha256 of the sources, the flags and nvcc's version.  Calls run on CuPy's current stream;
the only synchronisation is reading the status word (index targets) and copying results back
for NumPy inputs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from gradsmith.codegen.abi import SUFFIXES, Argument, declare
from gradsmith.codegen.arguments import bad_target_message, prepare_call
from gradsmith.codegen.backends.cuda.printer import STORAGE
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.native import Status, build_once, cache_dir, call_params, content_key

SOURCE_DIR = shipped_kernels() / "cuda"
SOURCES = ("gradsmith_ce.cu", "gradsmith_ce.cuh")
DTYPES = tuple(STORAGE)
AUX_DTYPE = {"float32": np.float32, "float64": np.float64, "bfloat16": np.float32, "float16": np.float32}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as error:
        raise ValueError(f"cuda backend needs CuPy and an NVIDIA GPU: CuPy is not installed ({error})") from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CuPy raises its own CUDARuntimeError without a driver
        raise ValueError(f"cuda backend needs CuPy and an NVIDIA GPU: no usable device ({error})") from error
    if count < 1:
        raise ValueError("cuda backend needs CuPy and an NVIDIA GPU: no device found")
    return cupy


def _nvcc() -> str:
    candidates = [shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise ValueError("cuda backend needs nvcc to build generated/cuda: install the CUDA toolkit or set CUDA_PATH")




@cache
def build_library(arch: str, source_dir: Path = SOURCE_DIR, main: str = SOURCES[0]) -> Path:
    """Compile ``main`` (default: the cross-entropy kernels) of the tree's cuda/ folder for
    ``arch`` (e.g. "sm_90") into the cache; return the library."""
    nvcc = _nvcc()
    sources = SOURCES if main == SOURCES[0] else (main, SOURCES[1])  # a file and the header
    missing = [name for name in sources if not (source_dir / name).is_file()]
    if missing:
        raise ValueError(f"{source_dir} lacks {missing}: write a complete tree with "
                         "'gradsmith generate --out DIR'")
    number = arch.removeprefix("sm_")
    flags = ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
             "-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    key = content_key([*((source_dir / name).read_bytes() for name in sources), *flags, version])

    def command(output: str) -> list[str]:
        return [nvcc, *flags, "-o", output, str(source_dir / main)]

    return build_once(cache_dir() / "cuda", f"{Path(main).stem}_{arch}", key, command,
                      f"nvcc building generated/cuda/{main} for {arch}")


def _pointer_type(argument: Argument, suffix: str) -> type:
    return ctypes.c_void_p  # device memory, the workspace and the stream


@cache
def _library(arch: str, source_dir: Path = SOURCE_DIR) -> ctypes.CDLL:
    library = ctypes.CDLL(str(build_library(arch, Path(source_dir))))
    declare(library, "cuda", tuple(SUFFIXES[dtype] for dtype in DTYPES), _pointer_type)
    return library


def _pointer(array: Any | None) -> int | None:
    return None if array is None else int(array.data.ptr)


def _row_stride(array: Any, n_classes: int) -> int:
    """The row stride in elements of an array that ``_walkable`` accepts (any stride >= C for a
    single row)."""
    stride = int(array.strides[0]) // int(array.itemsize) if array.shape[0] > 1 else n_classes
    return max(stride, n_classes)


def _walkable(xp: Any, array: Any) -> Any:
    """``array`` if the kernels can walk its rows by one element stride >= C, else a copy.

    Rows that overlap or repeat (a broadcast array has row stride 0) or whose stride is not a
    whole number of elements would be read past their end, or written over each other.
    """
    if array is None or array.ndim != 2 or array.shape[0] < 2:
        return array
    stride, itemsize = int(array.strides[0]), int(array.itemsize)
    if stride % itemsize or stride // itemsize < int(array.shape[1]):
        return xp.ascontiguousarray(array)
    return array


def _to_device(cupy: Any, array: Any | None, dtype: Any = None) -> Any | None:
    """A device array (copied from NumPy; bfloat16 travels as its 16-bit pattern)."""
    if array is None:
        return None
    if isinstance(array, np.ndarray):
        host = np.ascontiguousarray(array if dtype is None else array.astype(dtype))
        if str(host.dtype) == "bfloat16":
            host = host.view(np.uint16)
        return cupy.asarray(host)
    return array if dtype is None else array.astype(dtype, copy=False)


def load(dtype: str, kernels: Path | None = None) -> Callable:
    """The ``gradsmith.load`` callable for ``dtype`` on the current CuPy device and stream,
    running the CUDA kernels of the tree ``kernels`` (default: the shipped one)."""
    source_dir = SOURCE_DIR if kernels is None else Path(kernels) / "cuda"
    if dtype not in DTYPES:
        raise ValueError(f"dtype for backend 'cuda' must be one of {', '.join(DTYPES)}; got {dtype!r}")
    _cupy()  # fail here, not at the first call, when there is no CuPy or no GPU

    def cross_entropy(logits, target, *, inplace: bool = False, return_lse: bool = False, **options):
        cupy = _cupy()
        on_host = isinstance(logits, np.ndarray)
        if dtype == "bfloat16" and not on_host:
            raise TypeError("logits: CuPy has no bfloat16 dtype; pass NumPy arrays of ml_dtypes.bfloat16")
        xp = np if on_host else cupy
        call = prepare_call(logits, target, dtype=dtype, xp=xp, return_lse=return_lse,
                            inplace=inplace, check_targets=False, backend_dtypes=DTYPES,
                            **options)
        call = dataclasses.replace(call, logits=_walkable(xp, call.logits),
                                   target=_walkable(xp, call.target))
        if call.inplace and call.logits is not logits:
            raise ValueError("inplace=True needs logits whose rows are contiguous; pass a contiguous array")
        return _run(cupy, call, logits, call.inplace, on_host)

    def _run(cupy, call, original, inplace, on_host):
        aux = AUX_DTYPE[dtype]
        n, classes = call.n_rows, call.n_classes
        logits = _to_device(cupy, call.logits) if on_host else call.logits
        target = _to_device(cupy, call.target)
        weight = _to_device(cupy, call.weight, aux)
        grad_output = _to_device(cupy, call.grad_output, aux)
        if inplace:
            dlogits = logits
        elif call.out is not None and not on_host:
            dlogits = call.out
        else:
            dlogits = cupy.empty((n, classes), dtype=logits.dtype)
        loss = cupy.empty((n,) if call.reduction == "none" else (1,), dtype=aux)
        lse = cupy.empty((n,), dtype=aux) if call.return_lse else None
        library = _library(f"sm_{cupy.cuda.Device().compute_capability}", source_dir)
        workspace = cupy.empty(library.gs_ce_cuda_workspace_bytes(n) // 8 + 1, dtype=np.float64)
        params = call_params(call)
        stream = cupy.cuda.get_current_stream().ptr
        suffix = SUFFIXES[dtype]
        status = None
        if call.target_kind == "index":
            status = cupy.empty((1,), dtype=np.int64)
            code = getattr(library, f"gs_ce_cuda_index_{suffix}")(
                _pointer(logits), _row_stride(logits, classes), _pointer(target), _pointer(weight),
                n, classes, ctypes.byref(params), _pointer(grad_output), _pointer(loss),
                _pointer(dlogits), _row_stride(dlogits, classes), _pointer(lse), _pointer(status),
                _pointer(workspace), stream)
        else:
            code = getattr(library, f"gs_ce_cuda_probs_{suffix}")(
                _pointer(logits), _row_stride(logits, classes), _pointer(target),
                _row_stride(target, classes), _pointer(weight), n, classes, ctypes.byref(params),
                _pointer(grad_output), _pointer(loss), _pointer(dlogits),
                _row_stride(dlogits, classes), _pointer(lse), _pointer(workspace), stream)
        if code != Status.OK:
            text = Status(code).describe() if code in set(Status) else f"status {code}"
            raise ValueError(f"cuda kernel refused the call: {text}")
        if status is not None:
            bad_row = int(status.get()[0])
            if bad_row >= 0:
                raise ValueError(bad_target_message(bad_row, int(target[bad_row].get()), classes,
                                                    call.ignore_index))
        loss = loss if call.reduction == "none" else loss.reshape(())
        results = [loss, dlogits] + ([lse] if call.return_lse else [])
        if on_host:
            results = [r.get() for r in results]
            results[1] = results[1].view(original.dtype)
            if inplace:
                original[...] = results[1]
                results[1] = original
            elif call.out is not None:
                call.out[...] = results[1]
                results[1] = call.out
        return tuple(results)

    return cross_entropy
