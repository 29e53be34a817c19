"""The emitted C kernels under AddressSanitizer + UBSan, valgrind memcheck and the fuzz target.

Every run is bounded in time: the fuzz driver runs for ``GRADSMITH_FUZZ_SECONDS`` (default 20)
from the seed ``GRADSMITH_FUZZ_SEED``; set them for longer runs on demand.  A failing fuzz run
leaves the input that failed in the test's temporary folder (replay it with the driver, which
takes files as arguments).  Tools the machine lacks (the sanitizers, valgrind, clang's libFuzzer)
make their test skip with the reason.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gradsmith.codegen.backends.c import build

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "generated" / "c"
FUZZ_DIR = ROOT / "tests" / "fuzz"
FUZZ_SOURCES = (FUZZ_DIR / "fuzz_ce.c", FUZZ_DIR / "driver.c", C_DIR / "gradsmith_ce.c")
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all")
DEBUG = ("-std=c99", "-g", "-O1", "-fno-omit-frame-pointer")
FUZZ_SECONDS = float(os.environ.get("GRADSMITH_FUZZ_SECONDS", "20"))
FUZZ_SEED = int(os.environ.get("GRADSMITH_FUZZ_SEED", "20240531"))
# Leaks are valgrind's part (LeakSanitizer needs ptrace, which some containers refuse).
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}

pytestmark = pytest.mark.skipif(
    not (C_DIR / "gradsmith_ce.c").is_file(), reason="generated/c/gradsmith_ce.c is missing"
)


def _compile(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*build.compiler(), *arguments], cwd=cwd, check=False, capture_output=True, text=True, timeout=300
    )


@functools.cache
def _sanitizers_missing(folder: str) -> str | None:
    """Why ``cc -fsanitize=address,undefined`` cannot build and run a program here, or None."""
    probe = Path(folder) / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    try:
        result = _compile([*SANITIZE, str(probe), "-o", str(probe.with_suffix(""))], probe.parent)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"C compiler cannot be run: {error}"
    if result.returncode != 0:
        return f"the C compiler lacks {' '.join(SANITIZE)}: {result.stderr.strip()[:200]}"
    run = subprocess.run([str(probe.with_suffix(""))], check=False, capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        return f"sanitized programs do not run here: {run.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sanitizers")


@pytest.fixture(scope="module")
def sanitized_kernels(work: Path) -> tuple[Path, tuple[str, ...]]:
    """gradsmith_ce.c compiled once under the sanitizers (the slow part, about 20 s), as a
    position-independent object that the drivers and the shared library all link, with the
    link flags it needs."""
    missing = _sanitizers_missing(str(work))
    if missing:
        pytest.skip(missing)
    objects = work / "gradsmith_ce_asan.o"
    common = [*DEBUG, *SANITIZE, "-fPIC", "-c", str(C_DIR / "gradsmith_ce.c"), "-o", str(objects)]
    result = _compile(["-fopenmp", *common], work)
    if result.returncode == 0:
        return objects, ("-fopenmp",)
    result = _compile(common, work)
    assert result.returncode == 0, result.stderr
    return objects, ()


def _link_driver(kernels: tuple[Path, tuple[str, ...]], binary: Path, *extra: str) -> None:
    objects, flags = kernels
    result = _compile([*DEBUG, *SANITIZE, *flags, f"-I{C_DIR}", str(FUZZ_DIR / "fuzz_ce.c"),
                       str(FUZZ_DIR / "driver.c"), *extra, str(objects), "-lm", "-o", str(binary)],
                      binary.parent)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def sanitized_driver(sanitized_kernels, work: Path) -> Path:
    binary = work / "fuzz_ce_asan"
    _link_driver(sanitized_kernels, binary)
    return binary


def _run_driver(command: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None):
    environment = {**os.environ, **(env or {}), "GS_FUZZ_ARTIFACTS": str(cwd)}
    result = subprocess.run(command, cwd=cwd, check=False, capture_output=True, text=True, timeout=timeout, env=environment)
    saved = sorted(cwd.glob("fuzz-crash-*.bin"))
    assert result.returncode == 0, (
        f"{' '.join(command)} failed (exit {result.returncode}); inputs saved: {saved}\n"
        f"{result.stdout[-2000:]}\n{result.stderr[:4000]}\n...\n{result.stderr[-1000:]}"
    )
    return result


def test_fuzz_target_under_sanitizers(sanitized_driver: Path, work: Path) -> None:
    """Random inputs for FUZZ_SECONDS: no sanitizer report, no violated invariant."""
    result = _run_driver(
        [str(sanitized_driver), "-seconds", str(FUZZ_SECONDS), "-seed", str(FUZZ_SEED)],
        work,
        timeout=FUZZ_SECONDS + 120,
        env=SANITIZER_ENV,
    )
    summary = result.stdout.strip().splitlines()[-1]
    print(summary)
    runs = int(summary.split()[1])
    assert "no crash" in summary and runs >= 100, summary


def test_fuzz_corpus_replays_cleanly(sanitized_driver: Path, work: Path) -> None:
    """Inputs that once found a fault (tests/fuzz/corpus) replay without a report."""
    inputs = sorted((FUZZ_DIR / "corpus").glob("*.bin"))
    if not inputs:
        pytest.skip("tests/fuzz/corpus holds no inputs")
    result = _run_driver([str(sanitized_driver), *map(str, inputs)], work, timeout=120, env=SANITIZER_ENV)
    assert result.stdout.count("replayed") == len(inputs)


def test_fuzz_driver_catches_a_planted_overrun(sanitized_kernels, work: Path) -> None:
    """Negative test: a kernel that writes one element past dlogits is reported."""
    planted_dir = work / "planted"
    planted_dir.mkdir(exist_ok=True)
    # The linker sends the driver's calls of gs_ce_index_f64 to this wrapper, which calls the
    # kernel and then writes one element past the last row.
    wrapper = planted_dir / "planted.c"
    wrapper.write_text(textwrap.dedent("""\
        #include "gradsmith_ce.h"
        int __real_gs_ce_index_f64(const double *logits, int64_t logits_stride,
            const int64_t *targets, const double *weight, int64_t n_rows, int64_t n_classes,
            const gs_ce_params *params, const double *grad_output, double *loss, double *dlogits,
            int64_t dlogits_stride, double *lse, int64_t *bad_row);
        int __wrap_gs_ce_index_f64(const double *logits, int64_t logits_stride,
            const int64_t *targets, const double *weight, int64_t n_rows, int64_t n_classes,
            const gs_ce_params *params, const double *grad_output, double *loss, double *dlogits,
            int64_t dlogits_stride, double *lse, int64_t *bad_row)
        {
            const int status = __real_gs_ce_index_f64(logits, logits_stride, targets, weight,
                n_rows, n_classes, params, grad_output, loss, dlogits, dlogits_stride, lse, bad_row);
            if (status == GS_OK && n_rows > 0) {
                dlogits[(n_rows - 1) * dlogits_stride + n_classes] = 0.0;
            }
            return status;
        }
        """))
    binary = planted_dir / "fuzz_planted"
    _link_driver(sanitized_kernels, binary, str(wrapper), "-Wl,--wrap=gs_ce_index_f64")
    run = subprocess.run(
        [str(binary), "-seconds", "20", "-seed", "1"], cwd=planted_dir, check=False, capture_output=True, text=True,
        timeout=140, env={**os.environ, **SANITIZER_ENV, "GS_FUZZ_ARTIFACTS": str(planted_dir)},
    )
    assert run.returncode != 0, "the planted overrun went unnoticed"
    assert "heap-buffer-overflow" in run.stderr or "invariant violated" in run.stderr, run.stderr[-2000:]
    assert list(planted_dir.glob("fuzz-crash-*.bin")), "the failing input was not saved"


# ---------------------------------------------------------------------------------------------
# The kernels as a sanitized shared library behind the Python callable.

VALIDATION_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from gradsmith.codegen.backends.c import build, runtime
    from reference import reference_cross_entropy

    library = build.load_library(Path(sys.argv[1]))
    build.library = lambda *args, **kwargs: library
    rng = np.random.default_rng(int(sys.argv[2]))
    cases = int(sys.argv[3])
    TOLERANCE = {"float64": (1e-10, 1e-12), "float32": (3e-5, 3e-6)}

    def check(actual, expected, dtype, what):
        actual = np.asarray(actual, dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
        assert np.array_equal(np.isnan(actual), np.isnan(expected)), (what, actual, expected)
        keep = ~np.isnan(expected)
        scale = max(float(np.abs(expected[keep]).max(initial=0.0)), 1.0)
        rtol, atol = TOLERANCE[dtype]
        np.testing.assert_allclose(actual[keep], expected[keep], rtol=rtol, atol=atol * scale, err_msg=what)

    checked = 0
    for case in range(cases):
        dtype = ("float32", "float64")[case % 2]
        f = runtime.load(dtype)
        n = int(rng.choice([0, 1, 2, 3, 5, 8]))
        c = int(rng.choice([1, 2, 3, 7, 16, 17, 24]))
        pad = int(rng.integers(0, 3))
        wide = rng.normal(scale=3.0, size=(n, c + pad))
        if n and rng.random() < 0.2:
            wide[rng.integers(n), rng.integers(c)] = rng.choice([np.nan, np.inf, -np.inf])
        if n and rng.random() < 0.2:
            wide[rng.integers(n)] *= 1e30 if dtype == "float32" else 1e300
        logits = wide.astype(dtype)[:, :c]  # rows strided when pad > 0
        probs = rng.random() < 0.3
        options = {
            "reduction": str(rng.choice(["none", "mean", "sum"])),
            "label_smoothing": float(rng.choice([0.0, 0.1])),
            "lse_square_scale": float(rng.choice([0.0, 0.0, 1e-3])),
            "softcap": rng.choice([None, None, 5.0]),
            "return_lse": True,
        }
        if options["softcap"] is not None:
            options["softcap"] = float(options["softcap"])
        if np.abs(logits[np.isfinite(logits)]).max(initial=0.0) > 1e20:
            options["lse_square_scale"] = 0.0  # lse**2 overflows: not a finite case
        if rng.random() < 0.4:
            options["weight"] = rng.uniform(0.25, 2.0, size=c).astype(dtype)
        if rng.random() < 0.4:
            shape = (n,) if options["reduction"] == "none" else ()
            options["grad_output"] = rng.uniform(-2.0, 2.0, size=shape).astype(dtype)
        if probs:
            target = rng.dirichlet(np.ones(c), size=n).astype(dtype) if n else np.zeros((0, c), dtype)
        else:
            target = rng.integers(0, c, size=n).astype(np.int64)
            target[rng.random(n) < 0.25] = -100
        reference_options = {key: value for key, value in options.items()}
        inplace = rng.random() < 0.2 and pad == 0
        given = logits.copy() if inplace else logits
        loss, dlogits, lse = f(given, target, inplace=inplace, **options)
        expected = reference_cross_entropy(logits.astype(np.float64), target, **reference_options)
        check(loss, expected[0], dtype, f"loss of case {case}")
        check(dlogits, expected[1], dtype, f"dlogits of case {case}")
        rows = np.isfinite(logits).all(axis=1)
        check(lse[rows], expected[2][rows], dtype, f"lse of case {case}")
        checked += 1

    # Out-of-range targets and wrong options are refused by the C entry point's status codes.
    f = runtime.load("float64")
    for bad in (-1, 3, 2**62, -(2**63)):
        try:
            f(np.zeros((2, 3)), np.array([0, bad]))
        except ValueError as error:
            assert "target[1]" in str(error), error
        else:
            raise AssertionError(f"target {bad} was accepted")
    # Above the parallel threshold, with OpenMP when the library has it.
    big = rng.normal(size=(300, 200))
    target = rng.integers(0, 200, size=300)
    loss, dlogits = f(big, target)
    expected = reference_cross_entropy(big[:4], target[:4], reduction="none")
    row_loss, row_grad = f(big[:4], target[:4], reduction="none")
    check(row_loss, expected[0], "float64", "parallel rows")
    print(f"validated {checked} cases")
    """
)


@pytest.fixture(scope="module")
def sanitized_library(sanitized_kernels, work: Path) -> Path:
    objects, flags = sanitized_kernels
    library = work / "libgradsmith_ce_asan.so"
    result = _compile([*SANITIZE, *flags, "-shared", str(objects), "-lm", "-o", str(library)], work)
    assert result.returncode == 0, result.stderr
    return library


def _asan_runtime() -> str | None:
    try:
        result = subprocess.run(
            [*build.compiler(), "-print-file-name=libasan.so"], check=False, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = result.stdout.strip()
    return path if result.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def test_validation_against_sanitized_library(sanitized_library: Path, work: Path) -> None:
    """The Python callable over an ASan+UBSan build of the kernels matches the mpmath reference."""
    runtime_path = _asan_runtime()
    if runtime_path is None:
        pytest.skip("the compiler does not name its libasan.so (needed in LD_PRELOAD for Python)")
    script = work / "validate_sanitized.py"
    script.write_text(VALIDATION_SCRIPT)
    environment = {
        **os.environ,
        **SANITIZER_ENV,
        "LD_PRELOAD": runtime_path,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "2",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(sanitized_library), str(FUZZ_SEED), "120"],
        cwd=work, check=False, capture_output=True, text=True, timeout=600, env=environment,
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[:4000]}\n...\n{result.stderr[-1000:]}"
    assert "validated 120 cases" in result.stdout
    assert "ERROR: AddressSanitizer" not in result.stderr and "runtime error" not in result.stderr


# ---------------------------------------------------------------------------------------------
# valgrind memcheck over the fuzz driver built without sanitizers.


def test_valgrind_memcheck_is_clean(work: Path) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind is not installed")
    binary = work / "fuzz_ce_plain"
    # No -march=native: valgrind does not decode every vector extension (AVX-512).
    result = _compile(["-std=c99", "-g", "-O2", f"-I{C_DIR}", *map(str, FUZZ_SOURCES), "-lm", "-o", str(binary)], work)
    assert result.returncode == 0, result.stderr
    # --partial-loads-ok=no: a 4-byte read from a 1-byte block is reported, not half-excused.
    memcheck = [
        valgrind, "--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
        "--partial-loads-ok=no", "--track-origins=yes", "-q", str(binary),
    ]
    run = _run_driver(
        [*memcheck, "-runs", "20000", "-seconds", "30", "-seed", str(FUZZ_SEED)],
        work, timeout=300,
    )
    assert "no crash" in run.stdout
    corpus = sorted((FUZZ_DIR / "corpus").glob("*.bin"))
    if corpus:
        _run_driver([*memcheck, *map(str, corpus)], work, timeout=300)


# ---------------------------------------------------------------------------------------------
# libFuzzer, where clang has it (coverage-guided; the same target).


def test_libfuzzer_run_when_clang_is_available(work: Path) -> None:
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed (libFuzzer needs it; the gcc driver above covers the target)")
    binary = work / "fuzz_ce_libfuzzer"
    result = subprocess.run(
        [clang, "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all", f"-I{C_DIR}",
         str(FUZZ_DIR / "fuzz_ce.c"), str(C_DIR / "gradsmith_ce.c"), "-lm", "-o", str(binary)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        pytest.skip(f"clang cannot build with -fsanitize=fuzzer: {result.stderr.strip()[:200]}")
    seconds = max(5, int(FUZZ_SECONDS // 2))
    _run_driver(
        [str(binary), f"-max_total_time={seconds}", "-max_len=4096", f"-seed={FUZZ_SEED}",
         f"-artifact_prefix={work}/fuzz-crash-"],
        work, timeout=seconds + 120, env=SANITIZER_ENV,
    )
