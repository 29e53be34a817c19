"""The C ABI is defined once (``gradsmith.codegen.abi``): the headers, the ctypes struct, the
status codes and the entry points' argument types all follow a changed definition, and the
shipped header and library agree with the bindings byte for byte."""

from __future__ import annotations

import ctypes
import dataclasses
import subprocess
from types import SimpleNamespace

import pytest
from gradsmith.codegen import abi
from gradsmith.codegen.abi import ABI, Field, HeaderText, StatusCode
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.render import render_template

C_DTYPES = [{"sfx": "f32", "real": "float"}, {"sfx": "f64", "real": "double"}]


def _c_header(definition: abi.Abi) -> str:
    return render_template("c/gradsmith_ce.h.j2", preamble=["test"], dtypes=C_DTYPES,
                           abi=HeaderText("c", definition))


def _renamed(definition: abi.Abi, backend: str, old: str, new: str) -> abi.Abi:
    entries = tuple(
        (name, tuple(dataclasses.replace(e, name=e.name.replace(old, new)) for e in points))
        if name == backend else (name, points)
        for name, points in definition.entry_points
    )
    return dataclasses.replace(definition, entry_points=entries)


def test_shipped_headers_are_printed_from_the_definition():
    header = (shipped_kernels() / "c" / "gradsmith_ce.h").read_text()
    assert abi.c_declarations(ABI) in header
    cuda = (shipped_kernels() / "cuda" / "gradsmith_ce.cuh").read_text()
    assert abi.c_declarations(ABI) in cuda
    for entry in abi.entry_points("c"):
        assert abi.prototype(entry, "f32", "float", "float") + ";" in header


def test_an_added_field_reaches_the_header_and_the_struct():
    changed = dataclasses.replace(ABI, params=ABI.params + (Field("temperature", "double", "> 0"),))
    assert "double temperature;" in _c_header(changed)
    assert "temperature" not in _c_header(ABI)
    structure = abi.params_structure(changed)
    assert [name for name, _ in structure._fields_][-1] == "temperature"
    assert ctypes.sizeof(structure) == ctypes.sizeof(abi.params_structure(ABI)) + 8
    assert abi.params_structure(changed) is structure  # one class, so pointers to it match


def test_a_renamed_entry_point_reaches_both_headers_and_the_bindings():
    changed = _renamed(_renamed(ABI, "c", "_index_", "_nll_"), "cuda", "_probs_", "_soft_")
    header = _c_header(changed)
    assert "int gs_ce_nll_f64(const double *logits" in header
    assert "gs_ce_index_" not in header
    cuda = "\n".join(HeaderText("cuda", changed).prototypes("bf16", "__nv_bfloat16", "float"))
    assert "int gs_ce_cuda_soft_bf16(const __nv_bfloat16 *logits" in cuda
    assert "gs_ce_cuda_probs_" not in cuda

    library = SimpleNamespace(**{f"gs_ce_{kind}_{s}": SimpleNamespace()
                                 for kind in ("nll", "probs") for s in ("f32", "f64")})
    abi.declare(library, "c", ("f32", "f64"), lambda a, s: ctypes.c_void_p, changed)
    params = ctypes.POINTER(abi.params_structure(changed))
    assert library.gs_ce_nll_f32.argtypes[6] is params  # logits, stride, targets, weight, N, C
    assert library.gs_ce_nll_f32.restype is ctypes.c_int
    assert len(library.gs_ce_nll_f64.argtypes) == 13
    with pytest.raises(AttributeError, match="gs_ce_nll_f32"):
        abi.declare(SimpleNamespace(), "c", ("f32",), lambda a, s: ctypes.c_void_p, changed)


def test_a_new_status_code_reaches_the_header_and_the_enum():
    changed = dataclasses.replace(ABI, statuses=ABI.statuses + (StatusCode("MEMORY", 6, "no memory"),))
    assert "#define GS_ERR_MEMORY 6 /* no memory */" in _c_header(changed)
    status = abi.status_enum(changed)
    assert status.MEMORY == 6 and status(6).describe() == "no memory"
    assert abi.status_enum(ABI)(2).describe() == "bad shape or stride"


def test_the_shipped_header_lays_out_the_struct_as_ctypes_does(tmp_path):
    from gradsmith.codegen.backends.c.build import compiler

    structure = abi.params_structure()
    checks = "".join(
        f'    printf("%zu %zu\\n", offsetof(gs_ce_params, {name}), sizeof(p.{name}));\n'
        for name, _ in structure._fields_
    )
    source = tmp_path / "layout.c"
    source.write_text(
        '#include <stddef.h>\n#include <stdio.h>\n#include "gradsmith_ce.h"\n'
        "int main(void) {\n    gs_ce_params p;\n"
        f'{checks}    printf("%zu\\n", sizeof(gs_ce_params));\n    return 0;\n}}\n'
    )
    program = tmp_path / "layout"
    subprocess.run([*compiler(), "-std=c99", "-I", str(shipped_kernels() / "c"), str(source),
                    "-o", str(program)], check=True, timeout=120)
    printed = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    expected = [f"{getattr(structure, name).offset} {getattr(structure, name).size}"
                for name, _ in structure._fields_] + [str(ctypes.sizeof(structure))]
    assert printed.split("\n")[:-1] == expected
