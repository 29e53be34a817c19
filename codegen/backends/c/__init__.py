"""The C backend: C99 kernels for float and double, compiled and loaded through ctypes."""

from __future__ import annotations

import os
import shutil

from gradsmith.codegen.abi import HeaderText, summary
from gradsmith.codegen.backends.c.context import DTYPES, kernel_context
from gradsmith.codegen.backends.c.printer import KernelCPrinter
from gradsmith.codegen.registry import Backend
from gradsmith.codegen.render import render_with_preamble

TEMPLATES = {
    "c/gradsmith_ce.h": "c/gradsmith_ce.h.j2",
    "c/gradsmith_ce.c": "c/gradsmith_ce.c.j2",
}


def render() -> dict[str, str]:
    """The emitted C files, keyed by their path relative to generated/."""
    context = {**kernel_context(), "abi": HeaderText("c")}
    return render_with_preamble(TEMPLATES, context, summary("c", DTYPES))


def _unavailable() -> str | None:
    if os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc"):
        return None
    return "no C compiler: install cc/gcc or set CC"


BACKEND = Backend(
    name="c", dtypes=DTYPES, devices=("cpu",), templates=TEMPLATES, printer=KernelCPrinter,
    render=render, runtime="gradsmith.codegen.backends.c.runtime", unavailable=_unavailable,
    position=1,
)
