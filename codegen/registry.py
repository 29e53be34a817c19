"""The backend registry: every folder of ``gradsmith.codegen.backends`` declares one
:class:`Backend`, and everything that lists backends (``load``, ``generate``, ``validate``,
``demo``, ``bench``, ``--backends``, the tests) reads it from here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.errors import UserError


@dataclass(frozen=True)
class Backend:
    """One backend's contract: its dtypes, the devices it runs on, the templates it renders
    (``render`` returns ``{path in the kernel tree: text}``), its printer, and its runtime
    module, whose ``load(dtype, kernels)`` returns ``gradsmith.load``'s callable.

    ``unavailable()`` gives the reason it cannot run on this machine (``None`` when it can),
    without compiling anything; ``position`` orders the backends in listings.
    """

    name: str
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    templates: Mapping[str, str]
    printer: type
    render: Callable[[], dict[str, str]]
    runtime: str
    unavailable: Callable[[], str | None] = field(default=lambda: None)
    position: int = 100

    @property
    def suffixes(self) -> dict[str, str]:
        """dtype -> suffix of its entry points and files (``float32`` -> ``f32``)."""
        return {dtype: SUFFIXES[dtype] for dtype in self.dtypes}

    @property
    def gpu(self) -> bool:
        return "cpu" not in self.devices

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.dtypes:
            raise ValueError(f"dtype for backend {self.name!r} must be one of "
                             f"{', '.join(self.dtypes)}; got {dtype!r}")

    def load(self, dtype: str, kernels: str | os.PathLike | None = None) -> Callable:
        """The runtime's callable for ``dtype`` over the kernel tree ``kernels``."""
        self.check_dtype(dtype)
        runtime = importlib.import_module(self.runtime)
        return runtime.load(dtype, kernels=None if kernels is None else Path(kernels))


@cache
def backends() -> dict[str, Backend]:
    """Every backend, by name, in listing order."""
    package = importlib.import_module("gradsmith.codegen.backends")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            declared = getattr(importlib.import_module(f"{package.__name__}.{info.name}"),
                               "BACKEND", None)
            if declared is not None:
                if declared.name != info.name:
                    raise RuntimeError(f"backends/{info.name} declares backend {declared.name!r}")
                found.append(declared)
    return {b.name: b for b in sorted(found, key=lambda b: (b.position, b.name))}


def names() -> tuple[str, ...]:
    return tuple(backends())


def backend(name: str) -> Backend:
    """The backend called ``name``; a ValueError naming the choices otherwise."""
    known = backends()
    if name not in known:
        raise ValueError(f"backend must be one of {', '.join(known)}; got {name!r}")
    return known[name]


def parse_backends(text: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``"numpy,c"`` -> ("numpy", "c"): the one parser of every ``--backends`` option.

    Names are those of the registry plus ``extra`` (e.g. the benchmark's peers); an empty list,
    an unknown name or a name given twice is a :class:`UserError`.
    """
    allowed = names() + tuple(extra)
    parts = [part.strip() for part in str(text).split(",")]
    chosen = [part for part in parts if part]
    unknown = [name for name in chosen if name not in allowed]
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if not chosen or unknown or repeated or len(chosen) != len(parts):
        problem = (f"unknown {','.join(unknown)}" if unknown else
                   f"{','.join(repeated)} given twice" if repeated else f"got {text!r}")
        raise UserError(f"--backends takes a comma-separated list of distinct names from "
                        f"{','.join(allowed)}: {problem}")
    return tuple(chosen)


def backends_option(extra: tuple[str, ...] = ()) -> Callable[[str], tuple[str, ...]]:
    """``parse_backends`` as an argparse ``type=`` (its message becomes the one-line error)."""

    def parse(text: str) -> tuple[str, ...]:
        try:
            return parse_backends(text, extra)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = "backends"
    return parse
