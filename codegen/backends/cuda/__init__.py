"""The CUDA backend: ``__global__`` kernels and ``extern "C"`` launchers for every variant.

``render()`` emits ``cuda/gradsmith_ce.cuh`` (the printed math as ``__host__ __device__``
functions, usable from host code too) and ``cuda/gradsmith_ce.cu`` (kernels and launchers).
"""

from __future__ import annotations

from gradsmith.codegen.backends.cuda.context import kernel_context
from gradsmith.codegen.render import render_with_preamble

TEMPLATES = {
    "cuda/gradsmith_ce.cuh": "cuda/gradsmith_ce.cuh.j2",
    "cuda/gradsmith_ce.cu": "cuda/gradsmith_ce.cu.j2",
}
ABI = (
    "gs_ce_cuda_{index,probs}_{f32,f64,bf16,f16}(device pointers, ..., void *workspace, "
    "cudaStream_t) -> int status; gs_ce_cuda_workspace_bytes(n_rows)"
)


def render() -> dict[str, str]:
    """The emitted CUDA files, keyed by their path relative to generated/."""
    return render_with_preamble(TEMPLATES, kernel_context(), ABI)
