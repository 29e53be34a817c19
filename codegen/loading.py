"""``gradsmith.load(backend, dtype)``: one calling convention for every backend."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

BACKENDS = ("numpy", "c", "cuda")
DTYPES = {
    "numpy": ("float32", "float64"),
    "c": ("float32", "float64"),
    "cuda": ("float32", "float64", "bfloat16", "float16"),
}


def shipped_kernels() -> Path:
    """The kernel tree that ships with gradsmith: ``generated/`` beside the codegen package.

    In a checkout (an editable install) that is the repository's ``generated/``; in an
    installed wheel it is ``gradsmith/generated`` in site-packages.
    """
    return Path(__file__).resolve().parent.parent / "generated"


def kernel_tree(kernels: str | os.PathLike | None = None) -> Path:
    """The folder of a kernel tree (as ``gradsmith generate --out`` writes it); ``None`` is the
    shipped one."""
    if kernels is None:
        return shipped_kernels()
    if not isinstance(kernels, (str, os.PathLike)):
        raise TypeError(f"kernels must be a folder path or None, got {type(kernels).__name__}")
    path = Path(kernels)
    if not path.is_dir():
        raise ValueError(f"kernels={str(path)!r} is not a folder: pass a tree written by "
                         "'gradsmith generate --out DIR'")
    return path.resolve()


def load(backend: str, dtype: str = "float32", *, kernels: str | os.PathLike | None = None,
         loss: str | os.PathLike = "cross_entropy") -> Callable:
    """Return ``f(logits, target, *, weight=None, ignore_index=-100, reduction="mean", ...)``.

    ``f`` returns ``(loss, dlogits)`` (and ``lse`` with ``return_lse=True``) with the semantics
    of ``torch.nn.functional.cross_entropy``; see the README for every option.  ``kernels``
    names a kernel tree written by ``gradsmith generate --out DIR`` (default: the shipped one).
    ``loss`` names another loss of ``gradsmith.derive.losses`` (or the path of a loss module);
    its callable takes that loss's options (see the README).
    """
    from gradsmith.derive.losses import DEFAULT, definition

    found = definition(loss)
    if found.name != DEFAULT:
        from gradsmith.codegen import row_loss_runtime

        return row_loss_runtime.load(found, backend, dtype, kernel_tree(kernels))
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in DTYPES[backend]:
        raise ValueError(f"dtype for backend {backend!r} must be one of {DTYPES[backend]}, got {dtype!r}")
    runtime = importlib.import_module(f"gradsmith.codegen.backends.{backend}.runtime")
    return runtime.load(dtype, kernels=kernel_tree(kernels))
