"""The C ABI of the compiled backends, defined once: the ``gs_ce_params`` struct, the status
codes, the entry points and their argument types.

The C and CUDA headers print their declarations from an :class:`Abi` (``c_declarations``,
``prototype``), and the ctypes bindings (``params_structure``, ``status_enum``, ``declare``)
are built from the same object, so that the two sides cannot drift apart.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

# Entry-point and module suffix of each dtype, shared by every backend.
SUFFIXES = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}

_C_SCALARS = {"int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "double": ctypes.c_double,
              "size_t": ctypes.c_size_t, "int": ctypes.c_int}


@dataclass(frozen=True)
class Field:
    """One member of the params struct: its name, C type and the range it must lie in."""

    name: str
    c_type: str
    comment: str = ""


@dataclass(frozen=True)
class StatusCode:
    """A status an entry point returns: ``GS_OK`` or ``GS_ERR_<name>``."""

    name: str
    value: int
    text: str

    @property
    def macro(self) -> str:
        return "GS_OK" if self.name == "OK" else f"GS_ERR_{self.name}"


@dataclass(frozen=True)
class Argument:
    """An entry-point argument. ``kind`` is a C scalar type, or ``storage`` (the dtype's storage
    type), ``real`` (its arithmetic type), ``params``, ``void`` or ``stream``."""

    name: str
    kind: str
    pointer: bool = False
    const: bool = False


@dataclass(frozen=True)
class EntryPoint:
    """A family of exported functions: ``name`` is formatted with the dtype's ``suffix``
    (a name without ``{suffix}`` is one function)."""

    kind: str
    name: str
    arguments: tuple[Argument, ...]
    result: str = "int"

    def symbol(self, suffix: str = "") -> str:
        return self.name.format(suffix=suffix)

    @property
    def per_dtype(self) -> bool:
        return "{suffix}" in self.name


@dataclass(frozen=True)
class Abi:
    """The whole ABI: the params struct, the status codes, reductions and the entry points of
    each backend as ``(backend, entry points)`` pairs (hashable, so bindings are made once)."""

    params_name: str
    params: tuple[Field, ...]
    statuses: tuple[StatusCode, ...]
    reductions: tuple[str, ...]
    entry_points: tuple[tuple[str, tuple[EntryPoint, ...]], ...]


def _a(name: str, kind: str, pointer: bool = False, const: bool = False) -> Argument:
    return Argument(name, kind, pointer, const)


def _head(storage: str) -> tuple[Argument, ...]:
    return (_a("logits", storage, True, True), _a("logits_stride", "int64_t"))


def _tail(storage: str, real: str) -> tuple[Argument, ...]:
    return (
        _a("weight", real, True, True), _a("n_rows", "int64_t"), _a("n_classes", "int64_t"),
        _a("params", "params", True, True), _a("grad_output", real, True, True),
        _a("loss", real, True), _a("dlogits", storage, True), _a("dlogits_stride", "int64_t"),
        _a("lse", real, True),
    )


def _entry_points(prefix: str, storage: str, real: str, index_extra, probs_extra):
    index = _head(storage) + (_a("targets", "int64_t", True, True),) + _tail(storage, real)
    probs = _head(storage) + (_a("targets", storage, True, True),
                              _a("targets_stride", "int64_t")) + _tail(storage, real)
    return (EntryPoint("index", f"{prefix}_index_{{suffix}}", index + index_extra),
            EntryPoint("probs", f"{prefix}_probs_{{suffix}}", probs + probs_extra))


_CUDA_LAUNCH = (_a("workspace", "void", True), _a("stream", "stream"))

ABI = Abi(
    params_name="gs_ce_params",
    params=(
        Field("ignore_index", "int64_t"),
        Field("reduction", "int32_t", "GS_REDUCTION_NONE, _MEAN or _SUM"),
        Field("reserved", "int32_t", "must be 0"),
        Field("label_smoothing", "double", "[0, 1]"),
        Field("lse_square_scale", "double", "finite, >= 0"),
        Field("softcap", "double", "0 = off, else finite and > 0"),
    ),
    statuses=(
        StatusCode("OK", 0, "success"),
        StatusCode("NULL_POINTER", 1, "a required pointer is NULL"),
        StatusCode("SHAPE", 2, "bad shape or stride"),
        StatusCode("TARGET", 3, "a target is outside [0, C) and is not ignore_index"),
        StatusCode("PARAMS", 4, "a parameter is out of range"),
        StatusCode("CUDA", 5, "a CUDA launch failed"),
    ),
    reductions=("none", "mean", "sum"),
    entry_points=(
        ("c", _entry_points("gs_ce", "storage", "storage", (_a("bad_row", "int64_t", True),), ())),
        ("cuda", (
            EntryPoint("workspace", "gs_ce_cuda_workspace_bytes", (_a("n_rows", "int64_t"),),
                       "size_t"),
            *_entry_points("gs_ce_cuda", "storage", "real",
                           (_a("status", "int64_t", True), *_CUDA_LAUNCH), _CUDA_LAUNCH),
        )),
    ),
)


# ---- C text -------------------------------------------------------------------------------


def c_declarations(abi: Abi = ABI) -> str:
    """The status and reduction macros and the params struct, as C (once per translation unit,
    whichever of the C and CUDA headers comes first)."""
    lines = ["#ifndef GS_CE_PARAMS_DEFINED", "#define GS_CE_PARAMS_DEFINED",
             "/* Status codes returned by every entry point. */"]
    lines += [f"#define {s.macro} {s.value} /* {s.text} */" for s in abi.statuses]
    lines.append("")
    lines += [f"#define GS_REDUCTION_{name.upper()} {code}"
              for code, name in enumerate(abi.reductions)]
    lines += ["", f"typedef struct {abi.params_name} {{"]
    for field in abi.params:
        member = f"    {field.c_type} {field.name};"
        lines.append(f"{member:<30}/* {field.comment} */" if field.comment else member)
    lines += [f"}} {abi.params_name};", "#endif"]
    return "\n".join(lines) + "\n"


def _c_type(argument: Argument, storage: str, real: str, abi: Abi) -> str:
    base = {"storage": storage, "real": real, "params": abi.params_name,
            "stream": "cudaStream_t"}.get(argument.kind, argument.kind)
    text = f"const {base}" if argument.const else base
    return f"{text} *{argument.name}" if argument.pointer else f"{text} {argument.name}"


def prototype(entry: EntryPoint, suffix: str = "", storage: str = "", real: str = "",
              abi: Abi = ABI, indent: int = 4) -> str:
    """``int name(args...)`` (no semicolon), wrapped at 100 columns."""
    head = f"{entry.result} {entry.symbol(suffix)}("
    parts = [_c_type(argument, storage, real, abi) for argument in entry.arguments]
    lines, line = [], head
    for number, part in enumerate(parts):
        piece = part + (", " if number < len(parts) - 1 else ")")
        if len(line) + len(piece.rstrip()) > 100:
            lines.append(line.rstrip())
            line = " " * indent
        line += piece
    return "\n".join([*lines, line])


def entry_points(backend: str, abi: Abi = ABI) -> tuple[EntryPoint, ...]:
    return dict(abi.entry_points)[backend]


@dataclass(frozen=True)
class HeaderText:
    """What the header and source templates print of one backend's ABI (``abi`` in their
    context)."""

    backend: str
    abi: Abi = ABI

    def declarations(self) -> str:
        return c_declarations(self.abi)

    def prototype(self, kind: str, suffix: str = "", storage: str = "", real: str = "") -> str:
        (entry,) = [e for e in entry_points(self.backend, self.abi) if e.kind == kind]
        return prototype(entry, suffix, storage, real, self.abi)

    def prototypes(self, suffix: str, storage: str, real: str) -> list[str]:
        """The declarations of the per-dtype entry points for one dtype."""
        return [prototype(e, suffix, storage, real, self.abi) + ";"
                for e in entry_points(self.backend, self.abi) if e.per_dtype]


def summary(backend: str, dtypes, abi: Abi = ABI) -> str:
    """The one-line description of a backend's ABI in the emitted files' preamble."""
    suffixes = ",".join(SUFFIXES[dtype] for dtype in dtypes)
    functions = ", ".join(e.name.format(suffix="{" + suffixes + "}")
                          for e in entry_points(backend, abi))
    codes = ", ".join(f"{s.macro}={s.value}" for s in abi.statuses)
    return f"int {functions}; status codes {codes}"


# ---- ctypes -------------------------------------------------------------------------------


def params_structure(abi: Abi = ABI) -> type[ctypes.Structure]:
    """The ctypes struct of ``abi.params`` (one class per ABI, so pointers to it match)."""
    return _params_structure(abi)


def status_enum(abi: Abi = ABI) -> type[enum.IntEnum]:
    """The status codes as an ``IntEnum`` whose ``describe()`` gives the header's text."""
    return _status_enum(abi)


@cache
def _params_structure(abi: Abi) -> type[ctypes.Structure]:
    fields = [(field.name, _C_SCALARS[field.c_type]) for field in abi.params]
    return type("Params", (ctypes.Structure,), {"_fields_": fields,
                                                 "__doc__": f"``{abi.params_name}``"})


@cache
def _status_enum(abi: Abi) -> type[enum.IntEnum]:
    texts = {s.value: s.text for s in abi.statuses}
    status = enum.IntEnum("Status", [(s.name, s.value) for s in abi.statuses])
    status.describe = lambda self: texts[int(self)]
    return status


def declare(library, backend: str, suffixes: tuple[str, ...],
            pointer_type: Callable[[Argument, str], type], abi: Abi = ABI) -> None:
    """Set ``argtypes``/``restype`` of every entry point of ``backend`` on ``library``.

    ``pointer_type(argument, suffix)`` is the ctypes type of a pointer argument other than the
    params struct.
    """
    params = ctypes.POINTER(params_structure(abi))
    for entry in entry_points(backend, abi):
        for suffix in suffixes if entry.per_dtype else ("",):
            function = getattr(library, entry.symbol(suffix))
            function.argtypes = [
                params if a.kind == "params" else
                pointer_type(a, suffix) if a.pointer or a.kind == "stream" else _C_SCALARS[a.kind]
                for a in entry.arguments
            ]
            function.restype = _C_SCALARS[entry.result]
