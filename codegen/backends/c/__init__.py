"""The C backend: C99 kernels for float and double, compiled and loaded through ctypes."""

from __future__ import annotations

from gradsmith.codegen.backends.c.context import kernel_context
from gradsmith.codegen.render import render_with_preamble

ABI = (
    "C99; int gs_ce_index_f32/f64 and gs_ce_probs_f32/f64 (see gradsmith_ce.h); "
    "status codes GS_OK=0, NULL_POINTER=1, SHAPE=2, TARGET=3, PARAMS=4"
)
TEMPLATES = {
    "c/gradsmith_ce.h": "c/gradsmith_ce.h.j2",
    "c/gradsmith_ce.c": "c/gradsmith_ce.c.j2",
}


def render() -> dict[str, str]:
    """The emitted C files, keyed by their path relative to generated/."""
    return render_with_preamble(TEMPLATES, kernel_context(), ABI)
