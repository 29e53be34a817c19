"""The CUDA backend: ``__global__`` kernels and ``extern "C"`` launchers for every variant.

``render()`` emits ``cuda/gradsmith_ce.cuh`` (the printed math as ``__host__ __device__``
functions, usable from host code too) and ``cuda/gradsmith_ce.cu`` (kernels and launchers).
"""

from __future__ import annotations

from gradsmith.codegen.abi import HeaderText, summary
from gradsmith.codegen.backends.cuda.context import kernel_context
from gradsmith.codegen.backends.cuda.printer import STORAGE, KernelCudaPrinter
from gradsmith.codegen.registry import Backend
from gradsmith.codegen.render import render_with_preamble

DTYPES = tuple(STORAGE)
TEMPLATES = {
    "cuda/gradsmith_ce.cuh": "cuda/gradsmith_ce.cuh.j2",
    "cuda/gradsmith_ce.cu": "cuda/gradsmith_ce.cu.j2",
}


def render() -> dict[str, str]:
    """The emitted CUDA files, keyed by their path relative to generated/."""
    context = {**kernel_context(), "abi": HeaderText("cuda")}
    return render_with_preamble(TEMPLATES, context, summary("cuda", DTYPES))


def _unavailable() -> str | None:
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU"
    except Exception as error:  # noqa: BLE001 - CuPy raises its own error types without a driver
        return f"no usable CUDA GPU ({type(error).__name__}: {error})"
    return None


BACKEND = Backend(
    name="cuda", dtypes=DTYPES, devices=("cuda",), templates=TEMPLATES,
    printer=KernelCudaPrinter, render=render, runtime="gradsmith.codegen.backends.cuda.runtime",
    unavailable=_unavailable, position=2,
)
