"""``gradsmith validate``: the shipped kernels pass; a tree with one flipped sign fails and the
table names the variant; bad options are one-line errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from gradsmith.codegen.cli import main
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.validate.cases import VARIANTS, grid
from gradsmith.codegen.validate.tolerance import TOLERANCES, error_fraction


def _flip(path, function_start: str, old: str, new: str) -> None:
    """Replace the first ``old`` after ``function_start`` by ``new`` (one sign)."""
    text = path.read_text()
    start = text.index(function_start)
    at = text.index(old, start)
    path.write_text(text[:at] + new + text[at + len(old):])


def _rows(output: str) -> dict[tuple[str, str, str], str]:
    rows = {}
    for line in output.splitlines()[1:]:
        backend, dtype, variant = line.split(maxsplit=5)[:3]
        rows[backend, dtype, variant] = line
    return rows


def test_a_flipped_sign_fails_validation_and_names_the_variant(tmp_path, capsys):
    tree = tmp_path / "kernels"
    shutil.copytree(shipped_kernels(), tree)
    _flip(tree / "numpy" / "gradsmith_ce_f64.py", "def index_rows(", "+ coef_rest", "- coef_rest")
    _flip(tree / "c" / "gradsmith_ce.c", "static float gs_row_index_weighted_f32(",
          "+ coef_rest;", "- coef_rest;")
    report = tmp_path / "report.json"
    assert main(["validate", "--kernels", str(tree), "--backends", "numpy,c",
                 "--json", str(report)]) == 1
    captured = capsys.readouterr()
    rows = _rows(captured.out)
    failed = {key for key, line in rows.items() if "FAIL" in line}
    assert failed == {("numpy", "float64", "index"), ("c", "float32", "index_weighted")}, \
        captured.out
    # The C row path runs long rows only (<= 32 classes go through the SIMD lanes).
    assert "5x600 chunked" in rows["c", "float32", "index_weighted"]
    assert "of 32 rows failed" in captured.err
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert {(r["backend"], r["dtype"], r["variant"]) for r in data["rows"] if not r["passed"]} \
        == failed


def test_the_cuda_row_says_why_it_is_skipped(capsys):
    from gradsmith.codegen.registry import backend

    cuda = backend("cuda")
    if cuda.unavailable() is None:
        pytest.skip("a GPU is here: CUDA is validated, not skipped")
    assert main(["validate", "--backends", "cuda"]) == 0
    line = _rows(capsys.readouterr().out)["cuda", "-", "-"]
    assert f"skipped: {cuda.unavailable()}" in line


def test_the_grid_reaches_every_variant_and_code_path():
    cases = grid()
    assert {case.variant for case in cases} == set(VARIANTS)
    shapes = {(case.n_rows, case.n_classes) for case in cases}
    from gradsmith.codegen.backends.c.context import CHUNK, SHORT_CLASSES
    from gradsmith.codegen.backends.numpy import BLOCK_ELEMENTS

    # lanes, with a tail segment
    assert any(c <= min(SHORT_CLASSES.values()) and n > 16 for n, c in shapes)
    assert any(c > CHUNK for n, c in shapes)  # several chunks per row
    assert any(n * c > BLOCK_ELEMENTS and n > BLOCK_ELEMENTS // c for n, c in shapes)
    options = [case for case in cases if case.variant.name == "index"]
    assert {case.reduction for case in options} == {"none", "mean", "sum"}
    assert {case.grad_output for case in options} == {"none", "scalar", "rows"}
    assert any(case.label_smoothing and case.lse_square_scale for case in options)
    assert {case.ignore_index for case in options} >= {-100, 2}


def test_the_error_fraction_is_measured_against_the_tolerance():
    tolerance = TOLERANCES["float32"]
    expected = [1.0, -2.0, 0.0]
    assert error_fraction(expected, expected, tolerance) == 0.0
    off = [1.0 + 2 * tolerance.rtol, -2.0, 0.0]
    assert error_fraction(off, expected, tolerance) == pytest.approx(
        2 * tolerance.rtol / (tolerance.rtol + 2 * tolerance.atol))
    assert error_fraction([float("nan"), -2.0, 0.0], expected, tolerance) == float("inf")
    assert error_fraction([1.0, -2.0], expected, tolerance) == float("inf")


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--kernels", "/nonexistent-tree"], "--kernels"),
        (["--backends", "numpy,numpy"], "numpy given twice"),
        (["--backends", "fortran"], "unknown fortran"),
        (["--json", "/nonexistent-folder/v.json"], "nonexistent-folder"),
    ],
)
def test_bad_options_are_one_line_errors(arguments, needle, capsys):
    assert main(["validate", *arguments]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert re.match(r"gradsmith", lines[0])
