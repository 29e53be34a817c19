"""The losses, one module each; a module defines ``DEFINITION`` (a ``LossDefinition``).

``definition(name)`` takes a registered name or the path of a module file outside the package,
so that a loss can be added without touching gradsmith.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from gradsmith.derive.row_loss_definition import LossDefinition

LOSSES = ("cross_entropy", "focal", "distill_kl")
DEFAULT = "cross_entropy"


def definition(loss: str | os.PathLike | LossDefinition) -> LossDefinition:
    """The definition of a registered loss, of a module file (``path/to/poly1.py``), or as given."""
    if isinstance(loss, LossDefinition):
        return loss
    if not isinstance(loss, (str, os.PathLike)):
        raise TypeError(f"loss must be a name or a module path, got {type(loss).__name__}")
    text = os.fspath(loss)
    if text in LOSSES:
        module = importlib.import_module(f"gradsmith.derive.losses.{text}")
    elif text.endswith(".py"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"loss={text!r}: no such module file")
        spec = importlib.util.spec_from_file_location(f"gradsmith_loss_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        raise ValueError(f"loss must be one of {LOSSES} or the path of a loss module (.py), "
                         f"got {text!r}")
    found = getattr(module, "DEFINITION", None)
    if not isinstance(found, LossDefinition):
        raise TypeError(f"loss module {text!r} defines no DEFINITION (a LossDefinition)")
    return found
