"""The emitted NumPy modules against the mpmath reference, finite differences and edge cases.

Tolerances: float64 results agree with the 40-digit reference to rtol 1e-12 (atol 1e-13);
float32 to rtol 2e-5 (atol 2e-6), a few units in the last place of float32 after the
row sums.  Central differences (float64, step 1e-6 |z|) agree with the gradient to
rtol 1e-6 (atol 1e-8), their own truncation and rounding error.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from itertools import product

import gradsmith
import numpy as np
import pytest
from gradsmith.codegen.backends.numpy import runtime
from gradsmith.codegen.loading import shipped_kernels

from tests.reference import finite_difference_grad, reference_cross_entropy

DTYPES = ("float32", "float64")
TOLERANCES = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-13}}
VARIANTS = list(product(("index", "probs"), (False, True), (False, True)))
REDUCTIONS = ("mean", "sum", "none")


def make_inputs(dtype, kind, weighted, *, n=6, classes=5, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, classes)) * scale).astype(dtype)
    if kind == "index":
        target = rng.integers(0, classes, n)
        if n > 2:
            target[1] = -100  # one ignored row
    else:
        target = rng.dirichlet(np.ones(classes), n).astype(dtype)
    weight = (rng.random(classes) + 0.5).astype(dtype) if weighted else None
    return logits, target, weight


def options_for(dtype, reduction, softcapped, *, n, seed=1):
    rng = np.random.default_rng(seed)
    grad_output = (rng.random(n) + 0.5).astype(dtype) if reduction == "none" else np.array(0.75, dtype)
    return {
        "reduction": reduction,
        "label_smoothing": 0.1,
        "lse_square_scale": 0.01,
        "softcap": 4.0 if softcapped else None,
        "grad_output": grad_output,
    }


def assert_close(actual, expected, dtype, *, scale=1.0):
    tolerance = TOLERANCES[dtype]
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        expected,
        rtol=tolerance["rtol"],
        atol=tolerance["atol"] * scale,
        equal_nan=True,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,weighted,softcapped", VARIANTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_variant_matches_the_reference(dtype, kind, weighted, softcapped, reduction):
    logits, target, weight = make_inputs(dtype, kind, weighted)
    options = options_for(dtype, reduction, softcapped, n=len(logits))
    loss, dlogits, lse = gradsmith.load("numpy", dtype)(
        logits, target, weight=weight, return_lse=True, **options
    )
    expected = reference_cross_entropy(logits, target, weight=weight, return_lse=True, **options)
    assert loss.dtype == dlogits.dtype == lse.dtype == np.dtype(dtype)
    assert loss.shape == expected[0].shape and dlogits.shape == logits.shape
    for actual, reference in zip((loss, dlogits, lse), expected, strict=True):
        assert_close(actual, reference, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("index", "probs"))
def test_plain_call_matches_the_reference(dtype, kind):
    logits, target, _ = make_inputs(dtype, kind, False, n=9, classes=7, seed=3)
    for reduction in REDUCTIONS:
        loss, dlogits = gradsmith.load("numpy", dtype)(logits, target, reduction=reduction)
        expected_loss, expected_grad = reference_cross_entropy(logits, target, reduction=reduction)
        assert_close(loss, expected_loss, dtype)
        assert_close(dlogits, expected_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,weighted,softcapped", VARIANTS)
@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_gradient_matches_central_differences(dtype, kind, weighted, softcapped, reduction):
    logits, target, weight = make_inputs(dtype, kind, weighted, seed=5)
    options = options_for(dtype, reduction, softcapped, n=len(logits))
    _, dlogits = gradsmith.load("numpy", dtype)(logits, target, weight=weight, **options)
    f64 = gradsmith.load("numpy", "float64")
    upstream = np.asarray(options["grad_output"], dtype=np.float64)
    options64 = {**options, "grad_output": None}
    weight64 = None if weight is None else weight.astype(np.float64)
    target64 = target if kind == "index" else target.astype(np.float64)

    def total(z):
        loss, _ = f64(z, target64, weight=weight64, **options64)
        return float(np.sum(upstream * loss))

    numeric = finite_difference_grad(total, logits.astype(np.float64))
    tolerance = {"rtol": 1e-6, "atol": 1e-8} if dtype == "float64" else TOLERANCES[dtype]
    np.testing.assert_allclose(dlogits, numeric, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    f = gradsmith.load("numpy", dtype)
    logits = np.zeros((0, 4), dtype)
    target = np.zeros(0, np.int64)
    loss, dlogits = f(logits, target)
    assert np.isnan(loss) and loss.shape == () and dlogits.shape == (0, 4)
    loss, _ = f(logits, target, reduction="sum")
    assert loss == 0
    loss, dlogits, lse = f(logits, target, reduction="none", return_lse=True)
    assert loss.shape == lse.shape == (0,) and dlogits.shape == (0, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ("index", "probs"))
def test_one_class(dtype, kind):
    logits = np.array([[2.5], [-1.0], [30.0]], dtype)
    target = np.zeros(3, np.int64) if kind == "index" else np.ones((3, 1), dtype)
    loss, dlogits, lse = gradsmith.load("numpy", dtype)(
        logits, target, reduction="none", return_lse=True, label_smoothing=0.2
    )
    expected = reference_cross_entropy(
        logits, target, reduction="none", return_lse=True, label_smoothing=0.2
    )
    for actual, reference in zip((loss, dlogits, lse), expected, strict=True):
        assert_close(actual, reference, dtype)
    np.testing.assert_array_equal(dlogits, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", (False, True))
def test_all_rows_ignored(dtype, weighted):
    logits, _, weight = make_inputs(dtype, "index", weighted)
    target = np.full(len(logits), 7, np.int64)
    f = gradsmith.load("numpy", dtype)
    loss, dlogits = f(logits, target, weight=weight, ignore_index=7, label_smoothing=0.3)
    assert np.isnan(loss)  # 0 / 0, as PyTorch
    np.testing.assert_array_equal(dlogits, 0)
    loss, dlogits = f(logits, target, weight=weight, ignore_index=7, reduction="none")
    np.testing.assert_array_equal(loss, 0)
    np.testing.assert_array_equal(dlogits, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,weighted,softcapped", VARIANTS)
def test_non_finite_logits_follow_the_arithmetic(dtype, kind, weighted, softcapped):
    """NaN makes its row NaN, and so does +inf unless a softcap maps it to s; a -inf logit is a
    class of probability 0 (exp(-inf) = 0), so its row's gradient stays finite, as in PyTorch;
    a row of -inf alone is NaN, lse too (a softcap maps it to -s); the other rows are exact."""
    logits, target, weight = make_inputs(dtype, kind, weighted, n=8)
    logits[0, 2] = np.nan
    logits[2, 0] = np.inf
    logits[3, 4] = -np.inf
    logits[7, :] = -np.inf
    logits[1, 3] = np.nan  # row 1 is ignored for index targets: stays zero there
    options = {"reduction": "none", "softcap": 2.0 if softcapped else None, "label_smoothing": 0.1}
    loss, dlogits, lse = gradsmith.load("numpy", dtype)(
        logits, target, weight=weight, return_lse=True, **options
    )
    expected = reference_cross_entropy(logits, target, weight=weight, return_lse=True, **options)
    nan_rows = [0] + ([] if kind == "index" else [1]) + ([] if softcapped else [2])
    assert np.isnan(loss[nan_rows]).all() and np.isnan(dlogits[nan_rows]).all()
    assert np.isfinite(dlogits[[3, 4, 5, 6]]).all()
    assert softcapped or (np.isnan(dlogits[7]).all() and np.isnan(lse[7]))
    for actual, reference in zip((loss, dlogits, lse), expected, strict=True):
        assert_close(actual, reference, dtype)
    mean, _ = gradsmith.load("numpy", dtype)(logits, target, weight=weight)
    assert np.isnan(mean)


@pytest.mark.parametrize("dtype,magnitude", (("float32", 1e30), ("float64", 1e300)))
@pytest.mark.parametrize("kind,weighted,softcapped", VARIANTS)
def test_huge_logits_stay_exact(dtype, magnitude, kind, weighted, softcapped):
    logits, target, weight = make_inputs(dtype, kind, weighted, seed=11, scale=1.0)
    logits = (logits.astype(np.float64) * magnitude).astype(dtype)
    logits[4] = np.array([magnitude, magnitude, -magnitude, 0, magnitude / 2], dtype)
    options = {"reduction": "sum", "softcap": 10.0 if softcapped else None}
    loss, dlogits, lse = gradsmith.load("numpy", dtype)(
        logits, target, weight=weight, return_lse=True, **options
    )
    expected = reference_cross_entropy(logits, target, weight=weight, return_lse=True, **options)
    assert np.isfinite(loss) and np.isfinite(dlogits).all() and np.isfinite(lse).all()
    for actual, reference in zip((loss, dlogits, lse), expected, strict=True):
        assert_close(actual, reference, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softcapped", (False, True))
def test_inplace_writes_the_gradient_over_the_logits(dtype, softcapped):
    logits, target, _ = make_inputs(dtype, "index", False, n=40, classes=33)
    softcap = 3.0 if softcapped else None
    f = gradsmith.load("numpy", dtype)
    expected_loss, expected_grad = f(logits.copy(), target, softcap=softcap)
    buffer = logits.copy()
    loss, dlogits = f(buffer, target, softcap=softcap, inplace=True)
    assert dlogits is buffer
    np.testing.assert_array_equal(dlogits, expected_grad)
    np.testing.assert_array_equal(loss, expected_loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_and_threads_agree_with_one(dtype, monkeypatch):
    logits, target, weight = make_inputs(dtype, "index", True, n=301, classes=37)
    module = runtime.module(dtype)
    whole = gradsmith.load("numpy", dtype)(logits, target, weight=weight, reduction="none")
    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 100)
    monkeypatch.setattr(module, "THREAD_ELEMENTS", 1000)
    monkeypatch.setattr(module, "THREADS", 3)
    split = gradsmith.load("numpy", dtype)(logits, target, weight=weight, reduction="none")
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_array_equal(a, b)


def test_strided_logits_are_read_correctly():
    base = np.random.default_rng(2).standard_normal((12, 10)).astype(np.float64)
    target = np.arange(6) % 5
    f = gradsmith.load("numpy", "float64")
    for logits in (base[::2, :5], base[:6, ::2], base[:5, :6].T):
        rows = logits.shape[0]
        loss, dlogits = f(logits, target[:rows] % logits.shape[1])
        expected = reference_cross_entropy(logits, target[:rows] % logits.shape[1])
        assert_close(loss, expected[0], "float64")
        assert_close(dlogits, expected[1], "float64")


def test_no_temporary_of_the_batch_size(monkeypatch):
    """Besides the returned gradient, a call allocates nothing near N x C, only block buffers
    (made small here); the NumPy allocator reports to tracemalloc."""
    monkeypatch.setattr(runtime.module("float32"), "BLOCK_ELEMENTS", 8192)
    logits, target, _ = make_inputs("float32", "index", False, n=512, classes=4096)
    f = gradsmith.load("numpy", "float32")
    f(logits, target)
    tracemalloc.start()
    try:
        f(logits, target, label_smoothing=0.1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.25 * logits.nbytes
    tracemalloc.start()
    try:
        f(logits.copy(), target, inplace=True)  # the copy is made before tracing starts
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 1.25 * logits.nbytes


@pytest.mark.parametrize(
    "change,argument",
    [
        ({"logits": np.zeros((3, 4), np.float64)}, "logits"),
        ({"logits": np.zeros(4, np.float32)}, "logits"),
        ({"target": np.array([0, 1, 9])}, "target[2]"),
        ({"target": np.array([0, 1])}, "target"),
        ({"target": np.zeros(3, np.float32)}, "target"),
        ({"weight": np.ones(3, np.float32)}, "weight"),
        ({"weight": np.ones(4, np.float64)}, "weight"),
        ({"reduction": "avg"}, "reduction"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"lse_square_scale": -1.0}, "lse_square_scale"),
        ({"softcap": 0.0}, "softcap"),
        ({"grad_output": np.ones(3, np.float32)}, "grad_output"),
        ({"ignore_index": 1.5}, "ignore_index"),
        ({"return_lse": 1}, "return_lse"),
    ],
)
def test_bad_arguments_name_the_argument(change, argument):
    arguments = {"logits": np.zeros((3, 4), np.float32), "target": np.array([0, 1, 2])}
    arguments.update(change)
    with pytest.raises((ValueError, TypeError), match=argument.replace("[", r"\[")):
        gradsmith.load("numpy", "float32")(**arguments)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        gradsmith.load("numpy", "float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_emitted_module_imports_on_its_own(dtype):
    """Only NumPy is needed: run it in an isolated interpreter that cannot see the project."""
    path = shipped_kernels() / f"numpy/gradsmith_ce_{dtype.replace('float', 'f')}.py"
    script = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('ce', {str(path)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"z = np.array([[1.0, 2.0, 3.0]], {dtype!r}); t = np.array([2])\n"
        "loss, g = m.cross_entropy(z, t)\n"
        "assert abs(float(loss) - float(np.log(np.exp(z).sum()) - 3.0)) < 1e-6\n"
        "assert not {'sympy', 'jinja2', 'gradsmith'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=path.parent)


def test_generated_folder_can_be_moved(tmp_path):
    source = shipped_kernels() / "numpy"
    (tmp_path / "numpy").mkdir()
    for file in source.glob("*.py"):
        (tmp_path / "numpy" / file.name).write_text(file.read_text())
    module = runtime.module("float64", tmp_path)
    assert module.__file__ == str(tmp_path / "numpy" / "gradsmith_ce_f64.py")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="gradsmith generate --out"):
        gradsmith.load("numpy", "float32", kernels=tmp_path / "empty")
    with pytest.raises(ValueError, match="kernels="):
        gradsmith.load("numpy", "float32", kernels=tmp_path / "missing")
