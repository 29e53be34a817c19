"""The C kernels' SIMD loops that evaluate the proven fast functions are vectorised by gcc
(cross-entropy's and the row losses').

A loop under one of the kernels' ``GS_SIMD_*`` pragmas that calls the fast exp, expm1, log or
tanh must be reported by ``-fopt-info-vec-optimized`` when built with the flags the package builds
with.  A select left as a branch (with trapping math, gcc keeps one in those functions) makes
such a loop scalar: the results stay right and the kernel runs 2.5x to 5x slower, so only this
test notices.  No such loop calls libm: gcc has no vector form of it to call, so a libm call
keeps the loop scalar (the softcap's tanhf did: 7x to 11x slower).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from gradsmith.codegen.backends.c import build

FAST_CALL = re.compile(r"\bgs_(exp|expm1|log|tanh)_f(32|64)\(")
LIBM_CALL = re.compile(r"\b(tanh|tanhf|exp|expf|log|logf|expm1|expm1f|log1p|log1pf)\(")
PRAGMA = re.compile(r"^\s*GS_SIMD_\w+\s*$")


def _gcc_or_skip() -> list[str]:
    cc = build.compiler()
    try:
        version = build._compiler_version(cc)
    except OSError as error:
        pytest.skip(str(error))
    if "Free Software Foundation" not in version or "clang" in version.lower():
        pytest.skip(f"-fopt-info is gcc's; the C compiler is {version.splitlines()[0]!r}")
    return cc


def _simd_loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line numbers (1-based) of each innermost loop under a GS_SIMD pragma."""
    loops = []
    for index, line in enumerate(lines):
        if not PRAGMA.match(line) or not lines[index + 1].lstrip().startswith("for ("):
            continue
        first, depth = index + 1, 0
        for last in range(first, len(lines)):
            depth += lines[last].count("{") - lines[last].count("}")
            if depth == 0:
                break
        if not any("for (" in body for body in lines[first + 1:last + 1]):
            loops.append((first + 1, last + 1))
    return loops


def _simd_report(source: Path, tmp_path: Path) -> tuple[int, list[str], list[str]]:
    """(loops calling a fast function, those of them not vectorised, SIMD loops calling libm)
    of ``source`` built with the package's flags."""
    cc = _gcc_or_skip()
    report = tmp_path / f"{source.stem}.vectorised.txt"
    command = [*cc, *build.BASE_FLAGS, *build.OPENMP_FLAGS, f"-I{build.SOURCE_DIR}", "-c",
               "-o", str(tmp_path / f"{source.stem}.o"), f"-fopt-info-vec-optimized={report}",
               str(source)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    vectorised = {int(line) for line in re.findall(
        re.escape(source.name) + r":(\d+):\d+: optimized: loop vectorized", report.read_text())}
    lines = source.read_text().splitlines()
    checked, scalar, libm = 0, [], []
    for first, last in _simd_loops(lines):
        body = "\n".join(lines[first - 1:last])
        if LIBM_CALL.search(body):
            libm.append(f"line {first}: {LIBM_CALL.search(body).group(0)}")
        if not FAST_CALL.search(body):
            continue
        checked += 1
        if not vectorised.intersection(range(first, last + 1)):
            scalar.append(f"line {first}: {lines[first - 1].strip()}")
    return checked, scalar, libm


def test_simd_loops_calling_the_fast_functions_are_vectorised(tmp_path):
    checked, scalar, libm = _simd_report(build.SOURCE_DIR / "gradsmith_ce.c", tmp_path)
    assert not libm, "SIMD loops calling libm:\n" + "\n".join(libm)
    assert checked >= 100, f"only {checked} SIMD loops call a fast function: has the layout changed?"
    assert not scalar, f"{len(scalar)} of {checked} loops not vectorised:\n" + "\n".join(scalar)


@pytest.mark.parametrize("loss", ["focal", "distill_kl"])
def test_the_row_loss_sweeps_are_vectorised(loss, tmp_path):
    """The split sums and the gradient sweep of both dtypes: with the online normalizer's
    branch per element they stayed scalar, 2.5x to 2.9x slower at C >= 1000."""
    checked, scalar, libm = _simd_report(build.SOURCE_DIR / f"gradsmith_{loss}.c", tmp_path)
    assert not libm, "SIMD loops calling libm:\n" + "\n".join(libm)
    assert checked == 4, f"{checked} SIMD loops call a fast function, not 4: has the layout changed?"
    assert not scalar, f"{len(scalar)} of {checked} loops not vectorised:\n" + "\n".join(scalar)
