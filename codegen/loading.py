"""``gradsmith.load(backend, dtype)``: one calling convention for every backend."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


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
    from gradsmith.codegen.registry import backend as find

    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a str such as 'float32', got {type(dtype).__name__}")
    from gradsmith.derive.losses import DEFAULT, definition

    found = definition(loss)
    if found.name != DEFAULT:
        from gradsmith.codegen import row_loss_runtime

        return row_loss_runtime.load(found, backend, dtype, kernel_tree(kernels))
    return find(backend).load(dtype, kernel_tree(kernels))
