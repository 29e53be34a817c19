"""Bad input and extreme values through ``gradsmith.load`` for every backend and dtype, and bad
arguments to every ``gradsmith`` command.

Each bad input gives a ``ValueError``/``TypeError`` naming the argument, or an exact result;
never a crash or a misread array.  ``backend_params`` gives CUDA the ``gpu`` marker, and a
backend this machine cannot run skips with the reason.
"""

from __future__ import annotations

import mmap
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_close, backend_params, load_backend

try:
    from reference import reference_cross_entropy
except ImportError:  # pragma: no cover - the reference ships with the tests
    reference_cross_entropy = None

BACKEND_DTYPES = backend_params()
HUGE = {"float32": 1e30, "float64": 1e300}


def _host(array):
    """A NumPy copy of a backend's output (CuPy arrays have .get())."""
    return np.asarray(array.get() if hasattr(array, "get") else array)


def _device(backend: str, array):
    if backend == "cuda":
        import cupy

        return cupy.asarray(array)
    return array


def _same(a, b) -> None:
    """Equal shapes and values, NaN where the other has NaN."""
    a, b = _host(a), _host(b)
    assert a.shape == b.shape
    assert np.array_equal(a, b, equal_nan=True), (a, b)


def _call(backend, dtype, logits, target, **options):
    f = load_backend(backend, dtype)
    logits = _device(backend, logits)
    if target is not None:
        target = _device(backend, target)
    for key in ("weight", "grad_output"):
        if isinstance(options.get(key), np.ndarray):
            options[key] = _device(backend, options[key])
    return f(logits, target, **options)


def _sample(dtype: str, n: int = 4, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)).astype(dtype), rng.integers(0, c, size=n).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Wrong shapes, dtypes and options: an error naming the argument.


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_wrong_shapes_name_the_argument(backend: str, dtype: str) -> None:
    logits, target = _sample(dtype)
    cases = [
        ("logits", logits[0], target),
        ("logits", logits[None], target),
        ("target", logits, target[:3]),
        ("target", logits, target[:, None, None]),
        ("target", logits, np.zeros((4, 4), dtype)),
    ]
    for name, bad_logits, bad_target in cases:
        with pytest.raises(ValueError, match=name):
            _call(backend, dtype, bad_logits, bad_target)
    for weight in (np.ones(4, dtype), np.ones(6, dtype), np.ones((5, 1), dtype)):
        with pytest.raises(ValueError, match="weight"):
            _call(backend, dtype, logits, target, weight=weight)
    for reduction, grad_output in (("none", np.ones(3, dtype)), ("mean", np.ones(4, dtype)), ("none", 1.0)):
        with pytest.raises(ValueError, match="grad_output"):
            _call(backend, dtype, logits, target, reduction=reduction, grad_output=grad_output)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_wrong_dtypes_name_the_argument(backend: str, dtype: str) -> None:
    logits, target = _sample(dtype)
    other = "float64" if dtype == "float32" else "float32"
    with pytest.raises(TypeError, match="logits"):
        _call(backend, dtype, logits.astype(other), target)
    with pytest.raises(TypeError, match="logits"):
        _call(backend, dtype, logits.astype(np.int64), target)
    with pytest.raises(TypeError, match="logits"):
        load_backend(backend, dtype)(logits.tolist(), target)
    with pytest.raises(TypeError, match="target"):
        _call(backend, dtype, logits, target.astype(dtype))
    with pytest.raises(TypeError, match="target"):
        load_backend(backend, dtype)(_device(backend, logits), [0, 1, 2, 3])
    with pytest.raises(TypeError, match="target"):
        _call(backend, dtype, logits, np.full(logits.shape, 0.2, dtype=other))
    with pytest.raises(TypeError, match="weight"):
        _call(backend, dtype, logits, target, weight=np.ones(5, other))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_bad_options_name_the_option(backend: str, dtype: str) -> None:
    logits, target = _sample(dtype)
    bad = [
        (ValueError, "reduction", {"reduction": "avg"}),
        (ValueError, "label_smoothing", {"label_smoothing": 1.5}),
        (ValueError, "label_smoothing", {"label_smoothing": -0.1}),
        (ValueError, "label_smoothing", {"label_smoothing": float("nan")}),
        (TypeError, "label_smoothing", {"label_smoothing": "0.1"}),
        (ValueError, "lse_square_scale", {"lse_square_scale": -1.0}),
        (ValueError, "lse_square_scale", {"lse_square_scale": float("inf")}),
        (ValueError, "softcap", {"softcap": 0.0}),
        (ValueError, "softcap", {"softcap": -3.0}),
        (ValueError, "softcap", {"softcap": float("nan")}),
        (TypeError, "ignore_index", {"ignore_index": 1.5}),
        (TypeError, "ignore_index", {"ignore_index": True}),
        (TypeError, "inplace", {"inplace": "yes"}),
        (TypeError, "return_lse", {"return_lse": 1}),
    ]
    for error, name, options in bad:
        with pytest.raises(error, match=name):
            _call(backend, dtype, logits.copy(), target, **options)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_softcap_outside_the_dtype_range_is_refused_or_exact(backend: str, dtype: str) -> None:
    """A softcap that is finite and positive but not representable in the dtype (1e300 or
    1e-300 in float32) is refused naming softcap, or gives the finite result it stands for."""
    logits, target = _sample(dtype)
    for softcap in (1e300, 1e-300):
        try:
            loss, dlogits = _call(backend, dtype, logits, target, softcap=softcap, reduction="none")
        except ValueError as error:
            assert "softcap" in str(error)
            continue
        assert np.isfinite(_host(loss)).all() and np.isfinite(_host(dlogits)).all(), (softcap, loss)


# ---------------------------------------------------------------------------------------------
# Targets outside [0, C).


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_out_of_range_target_names_the_first_bad_row(backend: str, dtype: str) -> None:
    logits, _ = _sample(dtype, n=6, c=5)
    for bad in (5, -1, 7, 2**62, -(2**63), 2**63 - 1):
        target = np.array([0, 4, -100, bad, 1, 5], dtype=np.int64)
        with pytest.raises(ValueError, match=r"target\[3\]"):
            _call(backend, dtype, logits, target)
    # ignore_index itself may lie outside [0, C); other values outside it are still refused
    target = np.array([0, -1, 2, 3, 4, 1], dtype=np.int64)
    loss, _ = _call(backend, dtype, logits, target, ignore_index=-1, reduction="none")
    assert _host(loss)[1] == 0
    with pytest.raises(ValueError, match=r"target\[1\]"):
        _call(backend, dtype, logits, target)
    with pytest.raises(ValueError, match=r"target\[0\]"):
        _call(backend, dtype, logits, np.array([9, 0, 0, 0, 0, 0], dtype=np.int32), ignore_index=7)


# ---------------------------------------------------------------------------------------------
# Layouts: non-contiguous arrays are copied (or read through their strides), never misread.


def _layouts(logits: np.ndarray):
    n, c = logits.shape
    wide = np.full((n, 2 * c + 3), np.nan, dtype=logits.dtype)
    wide[:, 1 : 2 * c + 1 : 2] = logits
    padded = np.full((n, c + 3), np.nan, dtype=logits.dtype)
    padded[:, :c] = logits
    every_other_row = np.full((2 * n, c), np.nan, dtype=logits.dtype)
    every_other_row[::2] = logits
    flipped = np.ascontiguousarray(logits[::-1])[::-1]
    return {
        "column-strided": wide[:, 1 : 2 * c + 1 : 2],
        "row-padded": padded[:, :c],
        "every-other-row": every_other_row[::2],
        "fortran": np.asfortranarray(logits),
        "negative-row-stride": flipped,
        "transposed-copy": np.ascontiguousarray(logits.T).T,
    }


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_non_contiguous_arrays_give_the_contiguous_result(backend: str, dtype: str, probs: bool) -> None:
    if backend == "cuda":
        pytest.skip("host layouts only; CuPy arrays are tested by the CUDA backend's own tests")
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(5, 7)).astype(dtype)
    if probs:
        target = rng.dirichlet(np.ones(7), size=5).astype(dtype)
    else:
        target = rng.integers(0, 7, size=5).astype(np.int64)
    weight = rng.uniform(0.5, 2.0, size=7).astype(dtype)
    options = {"reduction": "none", "label_smoothing": 0.1, "return_lse": True}
    expected = _call(backend, dtype, logits, target, weight=weight, **options)
    for name, array in _layouts(logits).items():
        got = _call(backend, dtype, array, target, weight=weight, **options)
        for a, b in zip(got, expected):
            _same(a, b)
        assert np.array_equal(array, logits), f"{name}: logits modified"
        if not array.flags.c_contiguous and name != "row-padded" and name != "every-other-row":
            with pytest.raises(ValueError, match="inplace"):
                _call(backend, dtype, array, target, inplace=True)
    for name, array in _layouts(target if probs else logits).items():
        if not probs:
            break
        got = _call(backend, dtype, logits, array, weight=weight, **options)
        for a, b in zip(got, expected):
            _same(a, b)
    wide_weight = np.repeat(weight, 2)[::2]
    strided_target = np.repeat(target, 2, axis=0)[::2] if not probs else target
    got = _call(backend, dtype, logits, strided_target, weight=wide_weight, **options)
    for a, b in zip(got, expected):
        _same(a, b)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_inplace_matches_out_of_place(backend: str, dtype: str) -> None:
    logits, target = _sample(dtype, n=6, c=9, seed=5)
    expected = _call(backend, dtype, logits.copy(), target, reduction="sum", label_smoothing=0.2)
    buffer = _device(backend, logits.copy())
    loss, dlogits = load_backend(backend, dtype)(buffer, _device(backend, target), reduction="sum",
                                                 label_smoothing=0.2, inplace=True)
    _same(loss, expected[0])
    _same(dlogits, expected[1])
    if backend != "numpy":
        _same(buffer, expected[1])  # the gradient went over the logits


# ---------------------------------------------------------------------------------------------
# Edge sizes: N = 0 and C = 1.


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_empty_batch(backend: str, dtype: str, probs: bool) -> None:
    logits = np.zeros((0, 4), dtype)
    target = np.zeros((0, 4), dtype) if probs else np.zeros(0, np.int64)
    expected = {"mean": np.nan, "sum": 0.0}
    weight = np.ones(4, dtype)
    for reduction in ("mean", "sum", "none"):
        for options in ({}, {"weight": weight}, {"grad_output": np.ones(0, dtype) if reduction == "none" else 2.0}):
            loss, dlogits, lse = _call(backend, dtype, logits, target, reduction=reduction,
                                       return_lse=True, **options)
            loss, dlogits, lse = _host(loss), _host(dlogits), _host(lse)
            assert dlogits.shape == (0, 4) and dlogits.dtype == np.dtype(dtype)
            assert lse.shape == (0,)
            if reduction == "none":
                assert loss.shape == (0,)
            else:
                assert loss.shape == ()
                np.testing.assert_equal(float(loss), expected[reduction])


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_one_class(backend: str, dtype: str) -> None:
    logits = np.array([[3.0], [-1e4], [0.0]], dtype=dtype)
    for options in ({}, {"label_smoothing": 0.3}, {"weight": np.array([2.0], dtype)}, {"softcap": 2.0}):
        loss, dlogits = _call(backend, dtype, logits, np.zeros(3, np.int64), reduction="none", **options)
        _same(loss, np.zeros(3, dtype))
        _same(dlogits, np.zeros((3, 1), dtype))
        loss, dlogits = _call(backend, dtype, logits, np.ones((3, 1), dtype), reduction="sum", **options)
        assert float(_host(loss)) == 0.0 and not _host(dlogits).any()
    # z-loss still acts on a single class: lse = z, loss = scale * z**2, gradient 2 * scale * z
    loss, dlogits = _call(backend, dtype, logits[[0, 2]], np.zeros(2, np.int64), reduction="none",
                          lse_square_scale=0.5)
    assert_close(_host(loss), [4.5, 0.0], dtype, "C=1 z-loss")
    assert_close(_host(dlogits), [[3.0], [0.0]], dtype, "C=1 z-loss gradient")


# ---------------------------------------------------------------------------------------------
# Non-finite and huge logits.


def _reference(logits, target, **options):
    if reference_cross_entropy is None:
        pytest.skip("tests/reference.py is not available")
    return reference_cross_entropy(np.asarray(logits, np.float64), target, **options)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_non_finite_logits_follow_the_arithmetic(backend: str, dtype: str, bad: float, reduction: str) -> None:
    """As in PyTorch: NaN, and +inf unless a softcap maps it to s, make their row NaN; a -inf
    logit has probability 0 and leaves its row finite (its loss infinite under label
    smoothing).  The other rows are exact and an ignored row stays 0 whatever it holds."""
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=2.0, size=(5, 6)).astype(dtype)
    target = np.array([1, 2, 3, -100, 0], dtype=np.int64)
    logits[2, 4] = bad
    logits[3, 0] = bad  # an ignored row: zero loss and gradient whatever it holds
    weight = rng.uniform(0.5, 2.0, size=6).astype(dtype)
    for options in ({}, {"weight": weight, "label_smoothing": 0.1, "lse_square_scale": 1e-3}, {"softcap": 4.0}):
        loss, dlogits, lse = (
            _host(x) for x in _call(backend, dtype, logits, target, reduction=reduction, return_lse=True, **options)
        )
        nan_row = np.isnan(bad) or (bad > 0 and "softcap" not in options)
        assert np.isnan(dlogits[2]).all() if nan_row else np.isfinite(dlogits[2]).all()
        assert np.isnan(lse[2]) if nan_row else np.isfinite(lse[2])
        assert (dlogits[3] == 0).all()
        if reduction == "none":
            assert loss[3] == 0
        expected = _reference(logits, target, reduction=reduction, return_lse=True, **options)
        assert_close(dlogits, expected[1], dtype, "dlogits")
        assert_close(lse, expected[2], dtype, "lse")
        assert_close(loss, expected[0], dtype, "loss")


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_huge_logits_give_finite_exact_results(backend: str, dtype: str) -> None:
    h = HUGE[dtype]
    logits = np.array(
        [
            [h, -h, 0.0, 1.0],
            [h, h, h, h],
            [-h, h, -h, 0.0],
            [-h, -h, -h, -h],
            [h, h * 0.5, -h * 0.25, 3.0],
        ],
        dtype=dtype,
    )
    target = np.array([0, 2, 0, 1, 3], dtype=np.int64)
    for options in ({}, {"label_smoothing": 0.1}, {"weight": np.array([1.0, 2.0, 0.5, 1.5], dtype)}, {"softcap": 10.0}):
        for reduction in ("none", "sum", "mean"):
            loss, dlogits, lse = (
                _host(x) for x in _call(backend, dtype, logits, target, reduction=reduction, return_lse=True, **options)
            )
            assert np.isfinite(loss).all() and np.isfinite(dlogits).all() and np.isfinite(lse).all(), options
            expected = _reference(logits, target, reduction=reduction, return_lse=True, **options)
            assert_close(loss, expected[0], dtype, f"loss {options} {reduction}")
            assert_close(dlogits, expected[1], dtype, f"dlogits {options} {reduction}")
            assert_close(lse, expected[2], dtype, f"lse {options} {reduction}")
    probs = np.full((5, 4), 0.25, dtype)
    loss, dlogits = (_host(x) for x in _call(backend, dtype, logits, probs, reduction="none"))
    expected = _reference(logits, probs, reduction="none")
    assert_close(loss, expected[0], dtype, "loss, probability targets")
    assert_close(dlogits, expected[1], dtype, "dlogits, probability targets")


# ---------------------------------------------------------------------------------------------
# Offsets past 2**31 elements through a large row stride, on lazily committed memory.


def _sparse_rows(dtype: str, n_rows: int, n_classes: int, stride: int):
    """A (n_rows, n_classes) view whose rows lie ``stride`` elements apart in an anonymous
    MAP_NORESERVE mapping: only the pages that are touched are committed."""
    itemsize = np.dtype(dtype).itemsize
    length = ((n_rows - 1) * stride + n_classes) * itemsize
    noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20) | noreserve
    try:
        memory = mmap.mmap(-1, length, flags=flags)
    except (OSError, ValueError, OverflowError) as error:
        pytest.skip(f"cannot map {length / 2**30:.1f} GiB of address space lazily here: {error}")
    flat = np.frombuffer(memory, dtype=dtype)
    view = np.lib.stride_tricks.as_strided(flat, shape=(n_rows, n_classes), strides=(stride * itemsize, itemsize))
    return memory, view


@pytest.mark.parametrize("backend,dtype", [p for p in BACKEND_DTYPES if "cuda" not in p.id])
def test_offsets_past_two_to_the_31_elements(backend: str, dtype: str) -> None:
    """Rows 2**31 + 13 and 2 * (2**31 + 13) elements from the first: int64 offsets throughout.

    The mapping spans 17 GiB (float32) or 34 GiB (float64) of address space but commits a few
    pages; the input is read in place through the row stride and the gradient written in place.
    """
    n_classes = 7
    stride = 2**31 + 13
    rng = np.random.default_rng(2)
    values = rng.normal(scale=3.0, size=(3, n_classes)).astype(dtype)
    target = np.array([1, 6, 0], dtype=np.int64)
    expected = _call(backend, dtype, values.copy(), target, reduction="none", label_smoothing=0.1, return_lse=True)
    memory, view = _sparse_rows(dtype, 3, n_classes, stride)
    try:
        view[...] = values
        got = _call(backend, dtype, view, target, reduction="none", label_smoothing=0.1, return_lse=True)
        for a, b in zip(got, expected):
            _same(a, b)
        assert np.array_equal(view, values), "the strided logits were modified"
        if backend == "c":
            loss, _ = _call(backend, dtype, view, target, reduction="none", label_smoothing=0.1, inplace=True)
            _same(loss, expected[0])
            _same(view, expected[1])  # written in place, 2**32 + 26 elements into the mapping
        del view, got
    finally:
        try:
            memory.close()
        except BufferError:  # a NumPy view still exports the buffer; the mapping goes with it
            pass


# ---------------------------------------------------------------------------------------------
# The command line: bad arguments give one line on stderr and exit status 2.

CLI_CASES = [
    ["prove", "--classes", "zero"],
    ["prove", "--classes", "0"],
    ["prove", "--jobs", "0"],
    ["prove", "--jobs", "many"],
    ["prove", "--bogus"],
    ["latex", "--bogus"],
    ["latex", "extra"],
    ["generate", "--backends", "fortran"],
    ["generate", "--backends", ""],
    ["generate", "--out", "/dev/null"],
    ["generate", "--nope"],
    ["demo", "--backends", "tpu"],
    ["demo", "--epochs", "0"],
    ["demo", "--lr", "-1"],
    ["demo", "--dtype", "float16"],
    ["demo", "--batch-size", "x"],
    ["bench", "--shapes", "12"],
    ["bench", "--shapes", "0x10"],
    ["bench", "--dtypes", "int8"],
    ["bench", "--backends", "tpu"],
    ["bench", "--repeat", "0"],
    ["bench", "--warmup", "-1"],
    ["bench", "--threads", "0"],
    ["bench", "--json", "/nonexistent-folder/report.json", "--shapes", "4x4"],
    ["bench", "--repeat", "five"],
    [],
    ["frobnicate"],
]


@pytest.mark.parametrize("arguments", CLI_CASES, ids=lambda a: " ".join(a) or "(none)")
def test_cli_bad_arguments_one_line_exit_2(arguments: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gradsmith", *arguments], check=False, capture_output=True, text=True, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradsmith"), lines


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_out_receives_the_gradient(backend: str, dtype: str) -> None:
    """``out=`` is filled and returned, equal to the call that allocates; a row-padded buffer
    keeps its padding; ``out=logits`` is the in-place call."""
    load_backend(backend, dtype)  # skips where the backend cannot run
    logits, target = _sample(dtype, n=6, c=9, seed=7)
    options = {"reduction": "none", "label_smoothing": 0.1, "return_lse": True}
    expected = _call(backend, dtype, logits, target, **options)
    padded = _device(backend, np.full((6, 12), 5.0, dtype=dtype))
    for out in (_device(backend, np.full((6, 9), np.nan, dtype=dtype)), padded[:, :9]):
        got = _call(backend, dtype, logits, target, out=out, **options)
        assert got[1] is out
        for a, b in zip(got, expected):
            _same(a, b)
    assert np.all(_host(padded)[:, 9:] == 5.0)
    buffer = _device(backend, logits.copy())
    got = load_backend(backend, dtype)(buffer, _device(backend, target), out=buffer, **options)
    _same(buffer, expected[1])
    assert got[1] is buffer
    buffer = _device(backend, logits.copy())  # another view of the same memory: in place too
    load_backend(backend, dtype)(buffer, _device(backend, target), out=buffer[:], **options)
    _same(buffer, expected[1])


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_bad_out_names_out(backend: str, dtype: str) -> None:
    load_backend(backend, dtype)  # skips where the backend cannot run
    logits, target = _sample(dtype)
    other = "float64" if dtype == "float32" else "float32"
    shared = _device(backend, np.zeros((5, 5), dtype=dtype))
    read_only = np.zeros((4, 5), dtype=dtype)
    read_only.flags.writeable = False
    bad = [
        (ValueError, np.zeros((4, 4), dtype=dtype)),
        (TypeError, np.zeros((4, 5), dtype=other)),
        (ValueError, np.zeros((5, 4), dtype=dtype).T),  # classes not contiguous
        (TypeError, [[0.0] * 5] * 4),
    ]
    for error, out in bad:
        with pytest.raises(error, match="out"):
            _call(backend, dtype, logits, target, out=out if isinstance(out, list) else _device(backend, out))
    if backend != "cuda":
        with pytest.raises(ValueError, match="out"):
            _call(backend, dtype, logits, target, out=read_only)
    with pytest.raises(ValueError, match="out"):  # overlaps the logits
        load_backend(backend, dtype)(shared[:4], _device(backend, target), out=shared[1:])
    with pytest.raises(ValueError, match="out"):
        _call(backend, dtype, logits.copy(), target, inplace=True, out=np.zeros((4, 5), dtype=dtype))
