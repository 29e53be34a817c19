"""Shared fixtures: the backends this machine can run, per-dtype tolerances, seeded inputs.

Backends and their dtypes come from the registry (``gradsmith.codegen.registry``), the
tolerances from ``gradsmith.codegen.validate.tolerance``.  A backend that cannot be used here
(its ``unavailable()`` reason, or ``gradsmith.load`` refusing it) makes its tests skip with the
reason.  Set ``GRADSMITH_REQUIRE_BACKENDS`` to a
comma-separated list (for instance ``numpy,c``) to turn those skips into failures, so that CI
notices a backend that stopped loading.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradsmith.codegen import registry
from gradsmith.codegen.validate.tolerance import TOLERANCES, Tolerance  # noqa: F401 - for tests

sys.path.insert(0, str(Path(__file__).parent))

BACKENDS = registry.names()
HOST_DTYPES = ("float64", "float32")
# 16-bit storage types, tested on the backends that declare them.
LOW_PRECISION_DTYPES = ("float16", "bfloat16")
LOAD_ERRORS = (ValueError, TypeError, ImportError, OSError, RuntimeError, NotImplementedError)


def _required_backends() -> set[str]:
    value = os.environ.get("GRADSMITH_REQUIRE_BACKENDS", "")
    return {name.strip() for name in value.split(",") if name.strip()}


def _prerequisite_missing(backend: str) -> str | None:
    return registry.backend(backend).unavailable()


@functools.cache
def _load(backend: str, dtype: str):
    """The backend's callable, or the reason it cannot be used here (a string)."""
    missing = _prerequisite_missing(backend)
    if missing is not None:
        return missing
    import gradsmith

    try:
        return gradsmith.load(backend, dtype)
    except LOAD_ERRORS as error:
        return f"gradsmith.load({backend!r}, {dtype!r}) failed: {type(error).__name__}: {error}"


def load_backend(backend: str, dtype: str):
    """The callable of ``backend`` for ``dtype``; skips the test (with the reason) when unusable."""
    loaded = _load(backend, dtype)
    if isinstance(loaded, str):
        if backend in _required_backends():
            pytest.fail(f"backend {backend} is required here but unusable: {loaded}")
        pytest.skip(loaded)
    return loaded


def available_backends(dtype: str) -> dict[str, object]:
    """Every backend usable here for ``dtype`` (no skip; for tests that compare backends)."""
    found = {}
    for backend in BACKENDS:
        loaded = _load(backend, dtype)
        if not isinstance(loaded, str):
            found[backend] = loaded
        elif backend in _required_backends():
            pytest.fail(f"backend {backend} is required here but unusable: {loaded}")
    return found


def backend_params(dtypes=HOST_DTYPES, low_precision: bool = False):
    """pytest params over (backend, dtype); GPU backends' carry the ``gpu`` marker.

    With ``low_precision``, a backend also gets the storage dtypes beyond ``HOST_DTYPES`` that
    it declares (float16 and bfloat16 on CUDA).
    """
    params = []
    for backend in registry.backends().values():
        marks = (pytest.mark.gpu,) if backend.gpu else ()
        extra = [d for d in LOW_PRECISION_DTYPES if d in backend.dtypes] if low_precision else []
        names = [d for d in dtypes if d in backend.dtypes] + extra
        for dtype in names:
            params.append(pytest.param(backend.name, dtype, marks=marks,
                                       id=f"{backend.name}-{dtype}"))
    return params


# ---------------------------------------------------------------------------------------------
# Arrays in each dtype, and back.


def numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            pytest.skip("bfloat16 host arrays need ml_dtypes, which is not installed")
        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def stored(values, dtype: str) -> np.ndarray:
    """``values`` rounded to ``dtype`` as the kernel receives them."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.float64).astype(numpy_dtype(dtype)))


def to_numpy(array) -> np.ndarray:
    """A host float64 copy of a NumPy or CuPy array (or scalar)."""
    if hasattr(array, "get"):
        array = array.get()
    return np.asarray(array).astype(np.float64)


def call_backend(function, logits, target, dtype: str, **options):
    """Call a backend with inputs stored in ``dtype``.

    Returns ``(outputs, inputs)``: the outputs as float64 NumPy arrays, and the stored inputs
    (float64 copies of exactly what the kernel saw) for the references.
    """
    logits_stored = stored(logits, dtype)
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.floating):
        target_stored = stored(target, dtype)
        target_seen = target_stored.astype(np.float64)
    else:
        target_stored = np.ascontiguousarray(target, dtype=np.int64)
        target_seen = target_stored
    call_options = dict(options)
    seen_options = dict(options)
    if options.get("weight") is not None:
        call_options["weight"] = stored(options["weight"], dtype)
        seen_options["weight"] = call_options["weight"].astype(np.float64)
    outputs = function(logits_stored, target_stored, **call_options)
    inputs = (logits_stored.astype(np.float64), target_seen, seen_options)
    return tuple(to_numpy(x) for x in outputs), inputs


def assert_close(
    actual, expected, dtype: str, what: str, factor: float = 1.0, scale_of=None
) -> None:
    """Same shape, NaN in the same places, and within the dtype's tolerance elsewhere.

    The absolute tolerance is relative to the largest magnitude of ``scale_of`` (default
    ``expected``): two computed results are compared on the scale of the exact one.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    nan_actual, nan_expected = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_actual, nan_expected), (
        f"{what}: NaN at {np.argwhere(nan_actual).tolist()}, expected at "
        f"{np.argwhere(nan_expected).tolist()}"
    )
    tolerance = TOLERANCES[dtype]
    finite = ~nan_expected
    reference = expected if scale_of is None else np.asarray(scale_of, dtype=np.float64)
    magnitudes = np.abs(reference[np.isfinite(reference)])
    scale = float(magnitudes.max()) if magnitudes.size and magnitudes.max() > 0 else 1.0
    np.testing.assert_allclose(
        actual[finite],
        expected[finite],
        rtol=tolerance.rtol * factor,
        atol=tolerance.atol * factor * scale,
        err_msg=f"{what} ({dtype})",
    )


# ---------------------------------------------------------------------------------------------
# Seeded random inputs.


def random_logits(rng: np.random.Generator, n: int, classes: int, scale: float = 3.0) -> np.ndarray:
    return rng.normal(scale=scale, size=(n, classes))


def random_index_target(
    rng: np.random.Generator,
    n: int,
    classes: int,
    ignore_fraction: float = 0.0,
    ignore_index: int = -100,
) -> np.ndarray:
    target = rng.integers(0, classes, size=n).astype(np.int64)
    target[rng.random(n) < ignore_fraction] = ignore_index
    return target


def random_prob_target(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    return rng.dirichlet(np.full(classes, 0.5), size=n) if n else np.zeros((0, classes))


def random_weight(rng: np.random.Generator, classes: int, zero_fraction: float = 0.0) -> np.ndarray:
    weight = rng.uniform(0.25, 2.0, size=classes)
    weight[rng.random(classes) < zero_fraction] = 0.0
    return weight


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240531)


C_SOURCE = Path(__file__).resolve().parents[1] / "generated" / "c" / "gradsmith_ce.c"
FAST_FUNCTIONS = ("log", "log1p", "tanh")


@pytest.fixture(scope="session")
def fast_function_loops(tmp_path_factory):
    """``run(name, dtype, values)``: the generated kernels' gs_<name>_<f32|f64> over ``values``,
    called in a loop that gcc vectorises (as the kernels do), compiled once from generated/c."""
    from gradsmith.codegen.backends.c import build

    if not C_SOURCE.is_file():
        pytest.skip("generated/c/gradsmith_ce.c is missing")
    folder = tmp_path_factory.mktemp("fast_functions")
    wrapper = folder / "loops.c"
    wrapper.write_text(f'#include "{C_SOURCE}"\n' + "".join(
        f"void {name}_loop_{sfx}(const {real} *x, {real} *out, int64_t n)\n"
        f"{{\n    int64_t i;\n    GS_SIMD_LANES_{sfx.upper()}\n    for (i = 0; i < n; ++i) {{\n"
        f"        out[i] = gs_{name}_{sfx}(x[i]);\n    }}\n}}\n"
        for name in FAST_FUNCTIONS for sfx, real in (("f32", "float"), ("f64", "double"))))
    library = folder / "loops.so"
    command = [*build.compiler(), *build.base_flags(build.compiler()), *build.SIMD_FLAGS, "-Wall", "-Werror",
               "-Wno-unused-function", "-Wdouble-promotion", f"-I{C_SOURCE.parent}", "-o",
               str(library), str(wrapper), "-lm"]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    except OSError as error:
        pytest.skip(f"C compiler cannot be run: {error}")
    assert result.returncode == 0, result.stderr
    compiled = ctypes.CDLL(str(library))

    def run(name: str, dtype: str, values) -> np.ndarray:
        float_type = numpy_dtype(dtype)
        pointer = ctypes.POINTER(ctypes.c_float if dtype == "float32" else ctypes.c_double)
        function = getattr(compiled, f"{name}_loop_{'f32' if dtype == 'float32' else 'f64'}")
        function.argtypes = [pointer, pointer, ctypes.c_int64]
        function.restype = None
        values = np.ascontiguousarray(values, dtype=float_type)
        out = np.empty_like(values)
        function(values.ctypes.data_as(pointer), out.ctypes.data_as(pointer), values.size)
        return out

    return run


def as_mpf(value):
    """A Fraction (a proven bound) as an mpmath number at 40 digits, to compare with
    :func:`worst_relative_error`."""
    import mpmath

    with mpmath.workdps(40):
        return mpmath.mpf(value.numerator) / value.denominator


def worst_relative_error(exact, inputs, outputs):
    """The largest |output / exact(input) - 1| at 40 digits (``exact``: an mpmath function);
    where the exact value is 0 the output must be 0 too."""
    import mpmath

    worst = mpmath.mpf(0)
    with mpmath.workdps(40):
        for got, value in zip(outputs, inputs, strict=True):
            want = exact(mpmath.mpf(float(value)))
            if want == 0:
                assert got == 0, (value, got)
                continue
            worst = max(worst, abs(mpmath.mpf(float(got)) / want - 1))
    return worst
