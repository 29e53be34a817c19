"""The C kernels' SIMD loops that evaluate the proven fast functions are vectorised by gcc
(cross-entropy's and the row losses').

A loop under one of the kernels' ``GS_SIMD_*`` pragmas that calls the fast exp, expm1, log or
tanh must be reported by ``-fopt-info-vec-optimized`` when built with the flags the package builds
with.  A select left as a branch (with trapping math, gcc keeps one in those functions) makes
such a loop scalar: the results stay right and the kernel runs 2.5x to 5x slower, so only this
test notices.  No such loop calls libm: gcc has no vector form of it to call, so a libm call
keeps the loop scalar (the softcap's tanhf did: 7x to 11x slower).

Nor does a SIMD loop store through a mask: gcc makes ``a[r] = c ? a[r] : x`` a masked store.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gradsmith.codegen.backends.c import build

FAST_CALL = re.compile(r"\bgs_(exp|exp_reduce|exp_finish|expm1|log|log1p|tanh)_f(32|64)\(")
LIBM_CALL = re.compile(r"\b(tanh|tanhf|exp|expf|log|logf|expm1|expm1f|log1p|log1pf)\(")
PRAGMA = re.compile(r"^\s*GS_SIMD_\w+\s*$")
# AVX's masked store in AT&T syntax: two vector registers, then memory (a masked load starts
# with memory instead).
MASKED_STORE = re.compile(r"\bv(?:p)?maskmov[a-z]*\s+%[xy]mm\d+,%[xy]mm\d+,(?!%)")


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


def _build(source: Path, directory: Path) -> tuple[Path, Path]:
    """(gcc's vectorisation report, the object) of ``source`` built with the package's flags."""
    cc = _gcc_or_skip()
    report = directory / f"{source.stem}.vectorised.txt"
    built = directory / f"{source.stem}.o"
    command = [*cc, *build.BASE_FLAGS, *build.OPENMP_FLAGS, f"-I{build.SOURCE_DIR}", "-c",
               "-o", str(built), f"-fopt-info-vec-optimized={report}", str(source)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return report, built


@pytest.fixture(scope="module")
def cross_entropy_build(tmp_path_factory) -> tuple[Path, Path]:
    return _build(build.SOURCE_DIR / "gradsmith_ce.c", tmp_path_factory.mktemp("gradsmith_ce"))


def _simd_report(source: Path, report: Path) -> tuple[int, list[str], list[str]]:
    """(loops calling a fast function, those of them not vectorised, SIMD loops calling libm)
    of ``source``, from gcc's vectorisation ``report``."""
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


def test_simd_loops_calling_the_fast_functions_are_vectorised(cross_entropy_build):
    report, _ = cross_entropy_build
    checked, scalar, libm = _simd_report(build.SOURCE_DIR / "gradsmith_ce.c", report)
    assert not libm, "SIMD loops calling libm:\n" + "\n".join(libm)
    assert checked >= 100, f"only {checked} SIMD loops call a fast function: has the layout changed?"
    assert not scalar, f"{len(scalar)} of {checked} loops not vectorised:\n" + "\n".join(scalar)


@pytest.mark.parametrize("loss", ["focal", "distill_kl"])
def test_the_row_loss_sweeps_are_vectorised(loss, tmp_path):
    """In both dtypes, a row at a time the split sums and the gradient sweep (with the online
    normalizer's branch per element they stayed scalar, 2.5x to 2.9x slower at C >= 1000), and
    in the lanes of short rows the split sums, the row values' loop (the log-sums, focal's p_t
    and 1 - p_t) and the gradient: libm's calls there made focal 2.2x slower at 65536 x 10."""
    source = build.SOURCE_DIR / f"gradsmith_{loss}.c"
    checked, scalar, libm = _simd_report(source, _build(source, tmp_path)[0])
    assert not libm, "SIMD loops calling libm:\n" + "\n".join(libm)
    assert checked == 10, f"{checked} SIMD loops call a fast function, not 10: has the layout changed?"
    assert not scalar, f"{len(scalar)} of {checked} loops not vectorised:\n" + "\n".join(scalar)


def test_no_simd_loop_stores_through_a_mask(cross_entropy_build):
    """AMD's Zen cores run AVX's masked stores microcoded: the 144 that ``lane_lse[r] = finite ?
    lane_lse[r] : NAN`` became made the short rows 8% slower at C = 4 (float32, one thread)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"masked stores are AVX's; this machine is {platform.machine()}")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    _, built = cross_entropy_build
    disassembly = subprocess.run([objdump, "-d", str(built)], check=True, capture_output=True,
                                 text=True, timeout=600).stdout
    stores = [line.strip() for line in disassembly.splitlines() if MASKED_STORE.search(line)]
    assert not stores, f"{len(stores)} masked stores, the first: {stores[0]}"
