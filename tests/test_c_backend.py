"""The emitted C kernels: strict compilation, and results against the mpmath reference.

Tolerances (against the exact result on the inputs as stored): float64 rtol 1e-10, atol 1e-12;
float32 rtol 3e-5, atol 3e-6, where atol is relative to the largest magnitude of the quantity
(conftest.Tolerance).  Central differences (float64) agree to rtol 1e-6, atol 1e-8.
"""

from __future__ import annotations

import ctypes
import mmap
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TOLERANCES
from gradsmith.codegen.backends.c import build, context, runtime
from gradsmith.codegen.loading import shipped_kernels
from gradsmith.codegen.native import address
from gradsmith.codegen.printing import PrintedCode
from gradsmith.codegen.row_loss_runtime import build_c
from reference import finite_difference_grad, reference_cross_entropy

STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wdouble-promotion"]
DTYPES = ("float64", "float32")
REDUCTIONS = ("mean", "sum", "none")
GS_OK, GS_ERR_NULL, GS_ERR_SHAPE, GS_ERR_TARGET, GS_ERR_PARAMS = range(5)

if not shutil.which(build.compiler()[0]):
    pytest.skip(f"no C compiler {build.compiler()[0]!r} on PATH", allow_module_level=True)


def _strict_build(folder: Path, openmp: bool, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    flags = STRICT + (["-fopenmp"] if openmp else []) + [f"-D{name}" for name in defines] + ["-fPIC", "-shared"]
    target = folder / ("-".join(("omp" if openmp else "serial",) + defines) + ".so")
    command = [*build.compiler(), *flags, "-o", str(target), str(build.SOURCE_DIR / "gradsmith_ce.c"), "-lm"]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return build.load_library(target)


@pytest.fixture(scope="module", params=["serial", "openmp"])
def library(request, tmp_path_factory) -> ctypes.CDLL:
    return _strict_build(tmp_path_factory.mktemp("c"), request.param == "openmp")


def _assert_close(actual, expected, dtype: str, what: str) -> None:
    tol = TOLERANCES[dtype]
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), f"{what}: NaN pattern differs"
    finite = np.isfinite(expected)
    scale = max(float(np.abs(expected[finite]).max(initial=0.0)), 1e-300) or 1.0
    error = np.abs(actual[finite] - expected[finite])
    bound = tol.rtol * np.abs(expected[finite]) + tol.atol * scale
    assert np.all(error <= bound), f"{what}: max error {error.max(initial=0):.3e}"


def _inputs(rng, dtype, n, classes, probs):
    logits = (rng.standard_normal((n, classes)) * 3).astype(dtype)
    if probs:
        target = rng.uniform(size=(n, classes)).astype(dtype)
        target /= target.sum(axis=1, keepdims=True)
    else:
        target = rng.integers(0, classes, n)
        target[0] = -100
    weight = rng.uniform(0.5, 2.0, classes).astype(dtype)
    return logits, target, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("softcap", [None, 4.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("smoothed", [True, False], ids=["smoothing-zloss", "defaults"])
def test_every_variant_against_reference(library, dtype, probs, weighted, softcap, smoothed):
    """The short rows' tail has a branch of its own at the defaults (no smoothing, no z-loss)."""
    f = runtime.bind(library, dtype)
    rng = np.random.default_rng(7)
    logits, target, weight = _inputs(rng, dtype, 5, 9, probs)
    options = {"weight": weight if weighted else None, "softcap": softcap,
               "label_smoothing": 0.1 if smoothed else 0.0,
               "lse_square_scale": 1e-2 if smoothed else 0.0}
    for reduction in REDUCTIONS:
        grad_output = rng.uniform(0.5, 2, 5).astype(dtype) if reduction == "none" else 0.7
        loss, dlogits, lse = f(logits, target, reduction=reduction, return_lse=True,
                               grad_output=grad_output, **options)
        ref = reference_cross_entropy(logits, target, reduction=reduction, return_lse=True,
                                      grad_output=grad_output, **options)
        for name, actual, expected in zip(("loss", "dlogits", "lse"), (loss, dlogits, lse), ref):
            _assert_close(actual, expected, dtype, f"{reduction} {name}")
        assert dlogits.dtype == dtype and loss.shape == ((5,) if reduction == "none" else ())


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_chunks_with_growing_maximum(dtype):
    """Rows longer than a chunk, whose maximum grows from chunk to chunk (the rescaling path)."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(3)
    classes = 1300
    logits = (rng.standard_normal((2, classes)) + np.linspace(0, 12, classes)).astype(dtype)
    target = np.array([5, classes - 1])
    weight = rng.uniform(0.5, 2, classes).astype(dtype)
    options = {"weight": weight, "label_smoothing": 0.2, "reduction": "sum"}
    loss, dlogits = f(logits, target, **options)
    # Both ends of every chunk, each row's largest logit in every chunk (its largest gradient,
    # where a wrong chunk scale shows most), the targets and a sample: the reference's forward
    # mode costs C per column (30 s a dtype for all 1300).
    starts = range(0, classes, context.CHUNK)
    ends = [j for start in starts for j in (start - 1, start) if j >= 0]
    peaks = [start + int(np.argmax(row[start:start + context.CHUNK])) for row in logits for start in starts]
    columns = np.unique(np.r_[ends, peaks, classes - 1, target, rng.choice(classes, 24, replace=False)])
    ref_loss, ref_grad = reference_cross_entropy(logits, target, digits=20, columns=columns,
                                                 **options)
    _assert_close(loss, ref_loss, dtype, "loss")
    _assert_close(dlogits[:, columns], ref_grad[:, columns], dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
@pytest.mark.parametrize("weighted_softcap", [False, True], ids=["plain", "weighted-softcap"])
def test_short_rows_in_lanes_and_long_rows_agree_with_reference(dtype, probs, weighted_softcap):
    """Rows up to SHORT_CLASSES classes (per dtype) run one row per SIMD lane, longer ones per
    row: both sides of the threshold, a partial last segment, a non-finite row and an ignored
    row."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(13)
    for classes in (context.SHORT_CLASSES[dtype], context.SHORT_CLASSES[dtype] + 1):
        logits, target, weight = _inputs(rng, dtype, context.SEGMENT_ROWS + 3, classes, probs)
        logits[4, classes - 1] = np.nan
        logits[context.SEGMENT_ROWS + 1, 0] = np.inf
        options = {"weight": weight if weighted_softcap else None,
                   "softcap": 6.0 if weighted_softcap else None, "label_smoothing": 0.1,
                   "lse_square_scale": 1e-2}
        grad_output = rng.uniform(0.5, 2, len(logits)).astype(dtype)
        loss, dlogits, lse = f(logits, target, reduction="none", return_lse=True,
                               grad_output=grad_output, **options)
        # Rows are independent with reduction="none": the (slow) reference checks the ignored
        # and the NaN row, and the last rows of the full segment and the partial one; in them
        # the first and last classes, every row's largest logit and target, and a sample (its
        # forward mode costs C per column).
        rows = np.r_[0:6, context.SEGMENT_ROWS - 3:len(logits)]
        peaks = np.nanargmax(logits[rows], axis=1)
        targets = np.zeros(0, np.int64) if probs else target[rows][target[rows] >= 0]
        columns = np.unique(np.r_[0, 1, classes - 2, classes - 1, peaks, targets,
                                  rng.choice(classes, 24, replace=False)])
        ref = reference_cross_entropy(logits[rows], target[rows], reduction="none",
                                      return_lse=True, grad_output=grad_output[rows],
                                      columns=columns, **options)
        for name, actual, expected in zip(("loss", "dlogits", "lse"), (loss, dlogits, lse), ref):
            if name == "dlogits":
                actual, expected = actual[:, columns], expected[:, columns]
            _assert_close(actual[rows], expected, dtype, f"C={classes} {name}")
        buffer = logits.copy()
        inplace = f(buffer, target, reduction="none", grad_output=grad_output, inplace=True, **options)
        assert np.array_equal(inplace[1], dlogits, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_every_short_class_count_transposes_its_segments_exactly(dtype, probs):
    """A full segment of short rows stored back to back is moved to and from its tile by a
    transpose (vector squares, or loops specialised to its class count up to TRANSPOSE_CASES);
    rows with a wider stride are copied one by one.
    For every class count the two must give the same bits; for some, the reference's values."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(21)
    for classes in range(1, context.SHORT_CLASSES[dtype] + 1):
        logits, target, _ = _inputs(rng, dtype, 2 * context.SEGMENT_ROWS + 3, classes, probs)
        loss, dlogits = f(logits, target, reduction="none")
        wide = np.zeros((len(logits), classes + 3), dtype)
        wide[:, :classes] = logits
        strided_loss, strided_dlogits = f(wide[:, :classes], target, reduction="none")
        out = np.full((len(logits), classes + 5), 7, dtype)
        f(logits, target, reduction="none", out=out[:, :classes])
        assert np.array_equal(strided_loss, loss) and np.array_equal(strided_dlogits, dlogits)
        assert np.array_equal(out[:, :classes], dlogits) and (out[:, classes:] == 7).all()
        if classes not in (1, 4, 10, context.SHORT_CLASSES[dtype]):
            continue
        rows = np.r_[0:4, len(logits) - 4:len(logits)]  # in both full segments and the last
        ref_loss, ref_grad = reference_cross_entropy(logits[rows], target[rows], reduction="none")
        _assert_close(loss[rows], ref_loss, dtype, f"C={classes} loss")
        _assert_close(dlogits[rows], ref_grad, dtype, f"C={classes} dlogits")


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_transpose_stages_transpose_a_square(lanes):
    square = np.arange(lanes * lanes).reshape(lanes, lanes)
    vectors = list(square)
    for stage in context.transpose_stages(lanes):
        shuffled = list(vectors)
        for i, k, low, high in stage:
            pair = np.concatenate([vectors[i], vectors[k]])
            shuffled[i], shuffled[k] = pair[list(low)], pair[list(high)]
        vectors = shuffled
    assert np.array_equal(np.array(vectors), square.T)


@pytest.mark.parametrize("lanes", [0, 1, 3, 6])
def test_transpose_stages_need_a_power_of_two(lanes):
    with pytest.raises(ValueError, match="lanes"):
        context.transpose_stages(lanes)
    with pytest.raises(ValueError, match="lanes"):
        context.half_transpose(lanes)
    with pytest.raises(ValueError, match="lanes"):
        context.strip_shuffles(lanes)


def _shuffle_stages(vectors: list, stages) -> list:
    for stage in stages:
        shuffled = list(vectors)
        for i, k, low, high in stage:
            pair = np.concatenate([vectors[i], vectors[k]])
            shuffled[i], shuffled[k] = pair[list(low)], pair[list(high)]
        vectors = shuffled
    return vectors


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_half_transpose_takes_rows_of_half_a_vector_to_a_vector_a_class(lanes):
    """`lanes` rows of `lanes // 2` classes stored back to back come out one vector a class, the
    rows in order; the stages reversed and the inverse permutation give the block back."""
    block = np.arange(lanes * (lanes // 2)).reshape(lanes, lanes // 2)
    permutation, stages = context.half_transpose(lanes)
    vectors = [vector[list(permutation)] for vector in block.reshape(lanes // 2, lanes)]
    vectors = _shuffle_stages(vectors, stages)
    assert np.array_equal(np.array(vectors), block.T)
    back = _shuffle_stages(vectors, stages[::-1])
    inverse = [permutation.index(e) for e in range(lanes)]
    assert np.array_equal(np.array([vector[inverse] for vector in back]).reshape(block.shape), block)


@pytest.mark.parametrize("lanes", [2, 4, 8, 16])
def test_strip_shuffles_take_rows_of_half_a_vector_to_a_vector_a_class(lanes):
    """`lanes` rows of `lanes // 2` classes, rows k and k + lanes // 2 in vector k, come out one
    vector a class (class c in vector order[c]), the rows in order; the same stages on the
    classes in order give the rows back (rows k and k + lanes // 2 in vector order[k])."""
    half = lanes // 2
    strip = np.arange(lanes * half).reshape(lanes, half)
    stages, order = context.strip_shuffles(lanes)
    vectors = _shuffle_stages([np.concatenate([strip[k], strip[k + half]]) for k in range(half)], stages)
    assert np.array_equal(np.array([vectors[order[c]] for c in range(half)]), strip.T)
    back = _shuffle_stages(list(strip.T), stages)
    assert np.array_equal(np.array([np.concatenate([strip[k], strip[k + half]]) for k in range(half)]),
                          np.array([back[order[k]] for k in range(half)]))


def test_vector_and_element_transposes_agree_bitwise(tmp_path):
    """Full segments move through vector squares where the compiler has vector shuffles, and
    through element loops with GS_NO_VECTOR_SHUFFLES: the same bits either way, at class counts
    below, at and between multiples of the vector width, on both sides of the last class count
    with a loop of its own, in place as well."""
    vector = _strict_build(tmp_path, openmp=False)
    element = _strict_build(tmp_path, openmp=False, defines=("GS_NO_VECTOR_SHUFFLES",))
    rng = np.random.default_rng(8)
    for dtype in DTYPES:
        by_vector, by_element = runtime.bind(vector, dtype), runtime.bind(element, dtype)
        cases = context.TRANSPOSE_CASES
        for classes in (2, 3, 4, 5, 7, 8, 9, 10, 12, 16, 17, cases, cases + 1, cases + 7,
                        context.SHORT_CLASSES[dtype]):
            for probs in (False, True):
                logits, target, _ = _inputs(rng, dtype, 3 * context.SEGMENT_ROWS + 5, classes, probs)
                a, b = by_vector(logits, target, reduction="none"), by_element(logits, target, reduction="none")
                assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (dtype, classes, probs)
                buffer = logits.copy()
                in_place = by_vector(buffer, target, reduction="none", inplace=True)
                assert np.array_equal(in_place[1], b[1]), (dtype, classes, probs)


def _printed(*assignments: tuple[str, str]) -> PrintedCode:
    return PrintedCode(intermediates=(), outputs=tuple(assignments), op_count=0)


def test_a_sweep_is_staged_at_its_exp_and_each_sum_goes_with_its_term():
    split = context.staged(_printed(("shifted", "logit - row_max"), ("exp_term", "gs_exp_f32(shifted)"),
                                    ("top_term", "0"), ("rest_term", "exp_term"),
                                    ("shifted_term", "2*shifted")), "gs_exp_f32")
    assert split["argument"] == "shifted" and split["exp_term"] == "exp_term"
    assert [name for name, _ in split["early"].assignments] == ["shifted", "top_term", "shifted_term"]
    assert [name for name, _ in split["late"].assignments] == ["rest_term"]
    assert split["late_names"] == {"exp_term", "rest_term"}


@pytest.mark.parametrize("assignments", [
    # the late loop would read the logit, which the early loop overwrites in place
    (("shifted", "logit - row_max"), ("exp_term", "gs_exp_f32(shifted)"), ("rest_term", "exp_term*logit")),
    # or a value of the early loop
    (("shifted", "logit - row_max"), ("exp_term", "gs_exp_f32(shifted)"), ("rest_term", "exp_term*shifted")),
    # two exps, or an exp of an expression
    (("exp_term", "gs_exp_f32(logit)"), ("rest_term", "gs_exp_f32(exp_term)")),
    (("exp_term", "gs_exp_f32(logit - row_max)"),),
    (("rest_term", "logit"),),
])
def test_sweeps_that_cannot_be_staged_stay_one_loop(assignments):
    assert context.staged(_printed(*assignments), "gs_exp_f32") is None


def test_the_hot_sweeps_are_staged():
    for dtype in DTYPES:
        lanes = {"lanes_sweep", "lanes_sweep_exp"} if context.LANE_STAGED_EXP[dtype] else set()
        for variant in context.dtype_context(dtype)["variants"]:
            assert set(variant["staged"]) == {"first_sweep_unsplit", "first_sweep_exp_unsplit"} | lanes
            if variant["stores"]:
                assert all(variant["staged"].values()), (dtype, variant["name"])


def test_staged_and_single_loops_agree_bitwise(tmp_path, monkeypatch):
    """The long rows' sums, and the lanes' exp loop where it is staged, in two loops split at
    the exp's r give the same bits as one loop: every storing variant, in place too, with a
    maximum that grows from chunk to chunk."""
    from gradsmith.codegen.backends import c as c_backend

    monkeypatch.setattr(context, "staged", lambda group, exp: None)
    single = tmp_path / "single"
    single.mkdir()
    for path, text in c_backend.render().items():
        (single / Path(path).name).write_text(text)
    assert "gs_exp_reduce_f32(shifted" not in (single / "gradsmith_ce.c").read_text()
    staged, unstaged = build.library(), build.library(str(single))
    rng = np.random.default_rng(12)
    for dtype in DTYPES:
        a_call, b_call = runtime.bind(staged, dtype), runtime.bind(unstaged, dtype)
        for classes in (4, 10, 33, 1000, 4099):
            for probs, weighted, smoothing in ((False, False, 0.0), (False, True, 0.1), (True, True, 0.2)):
                logits, target, weight = _inputs(rng, dtype, 2 * context.SEGMENT_ROWS + 5, classes, probs)
                logits += np.linspace(0, 30, classes, dtype=dtype)  # a new maximum in most chunks
                options = {"reduction": "none", "label_smoothing": smoothing,
                           "weight": weight if weighted else None}
                a, b = a_call(logits, target, **options), b_call(logits, target, **options)
                assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), (dtype, classes, probs)
                in_place = a_call(logits.copy(), target, inplace=True, **options)
                assert np.array_equal(in_place[1], b[1]), (dtype, classes, probs)


def test_flags_only_gcc_knows_go_to_gcc_alone(monkeypatch):
    versions = {
        "gcc": "gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.",
        "clang": "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu",
        "cc": "Apple clang version 15.0.0 (clang-1500.0.40.1)\nTarget: arm64-apple-darwin23.0.0",
    }
    monkeypatch.setattr(build, "_compiler_version", lambda cc: versions[cc[0]])
    assert build.base_flags(["gcc"]) == build.BASE_FLAGS
    for name in ("clang", "cc"):
        assert build.base_flags([name]) == tuple(
            flag for flag in build.BASE_FLAGS if flag not in build.GCC_ONLY_FLAGS)


def test_without_openmp_both_builds_fall_back_to_one_thread(tmp_path, monkeypatch):
    """A compiler that refuses -fopenmp (Apple's clang) still builds the cross-entropy and the
    row-loss kernels, on one thread; the cross-entropy's bits are the OpenMP build's."""
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && '
                       '{ echo "error: unsupported option -fopenmp" >&2; exit 1; }; done\n'
                       f'exec {shlex.join(build.compiler())} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("GRADSMITH_CACHE", str(tmp_path / "cache"))
    serial = runtime.bind(build.load_library(build.build()), "float32")
    logits, target, _ = _inputs(np.random.default_rng(6), "float32", 3000, 40, False)
    expected = runtime.load("float32")(logits, target)
    actual = serial(logits, target)
    assert np.array_equal(actual[0], expected[0]) and np.array_equal(actual[1], expected[1])
    focal = ctypes.CDLL(str(build_c("focal", shipped_kernels())))
    assert hasattr(focal, "gs_focal_f32") and hasattr(focal, "gs_focal_f64")


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")
@pytest.mark.parametrize("dtype", DTYPES)
def test_clang_builds_kernels_that_agree_with_reference(monkeypatch, dtype):
    monkeypatch.setenv("CC", "clang")
    f = runtime.bind(build.load_library(build.build()), dtype)
    rng = np.random.default_rng(17)
    for classes in (4, 10, 32, 40):
        logits, target, _ = _inputs(rng, dtype, 2 * context.SEGMENT_ROWS + 3, classes, False)
        loss, dlogits = f(logits, target, reduction="none")
        rows = np.r_[0:4, len(logits) - 4:len(logits)]  # in both full segments and the last
        ref_loss, ref_grad = reference_cross_entropy(logits[rows], target[rows], reduction="none")
        _assert_close(loss[rows], ref_loss, dtype, f"C={classes} loss")
        _assert_close(dlogits[rows], ref_grad, dtype, f"C={classes} dlogits")


@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_central_differences(probs):
    f = runtime.load("float64")
    rng = np.random.default_rng(11)
    logits, target, weight = _inputs(rng, "float64", 3, 6, probs)
    options = {"weight": weight, "label_smoothing": 0.05, "lse_square_scale": 0.01, "softcap": 5.0}
    _, dlogits = f(logits, target, reduction="mean", **options)
    numeric = finite_difference_grad(lambda z: float(f(z, target, **options)[0]), logits)
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows_are_isolated(dtype):
    f = runtime.load(dtype)
    rng = np.random.default_rng(5)
    logits, target, _ = _inputs(rng, dtype, 6, 40, False)
    target[0] = 1
    logits[1, 3], logits[2, 39], logits[3, 0] = np.nan, np.inf, -np.inf
    loss, dlogits = f(logits, target, reduction="none")
    ref_loss, ref_grad = reference_cross_entropy(logits, target, reduction="none")
    _assert_close(loss, ref_loss, dtype, "loss")
    _assert_close(dlogits, ref_grad, dtype, "dlogits")
    assert np.isnan(dlogits[1:3]).all() and np.isfinite(dlogits[[0, 3, 4, 5]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [4, 40, 1500])
@pytest.mark.parametrize("inplace", [False, True])
def test_minus_inf_logits_are_classes_of_probability_zero(dtype, classes, inplace):
    """exp(-inf) = 0: a row's loss, lse and gradient are those of the row without its -inf
    classes, whose gradient is 0; at the target the loss is inf and the gradient there -1.  A
    row of -inf alone is NaN, lse too.  34 rows fill a segment of the short rows' lanes and
    start another; at 1500 classes one row's first chunk (512 classes) is all -inf, and another
    row's first is finite and its second all -inf."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(classes)
    logits = rng.normal(0.0, 3.0, (34, classes)).astype(dtype)
    target = rng.integers(0, classes, 34)
    masks = {3: [1], 4: list(range(classes - 1)), 5: [classes // 2], 6: [0, classes - 1],
             7: list(range(classes // 2, classes - 1))}
    target[4], target[5], target[6] = classes - 1, classes // 2, classes // 2
    for row, columns in masks.items():
        logits[row, columns] = -np.inf
    logits[9, :] = -np.inf
    buffer = logits.copy()
    loss, dlogits, lse = f(buffer, target, reduction="none", return_lse=True, inplace=inplace)
    assert np.isnan(loss[9]) and np.isnan(dlogits[9]).all() and np.isnan(lse[9])
    for row, columns in masks.items():
        kept = np.setdiff1d(np.arange(classes), columns)
        if target[row] in kept:
            alone, grad_alone, lse_alone = f(logits[row:row + 1, kept].copy(),
                                             np.searchsorted(kept, target[row:row + 1]),
                                             reduction="none", return_lse=True)
            _assert_close(loss[row:row + 1], alone, dtype, f"loss, row {row}")
            _assert_close(dlogits[row, kept], grad_alone[0], dtype, f"gradient, row {row}")
        else:  # the target's logit is -inf
            assert loss[row] == np.inf and dlogits[row, target[row]] == -1
            lse_alone = np.log(np.sum(np.exp(logits[row, kept].astype(np.float64))))
            probabilities = np.exp(logits[row, kept].astype(np.float64) - lse_alone)
            _assert_close(dlogits[row, kept], probabilities, dtype, f"gradient, row {row}")
        _assert_close(lse[row:row + 1], np.reshape(lse_alone, 1), dtype, f"lse, row {row}")
        others = np.setdiff1d(columns, target[row:row + 1])
        assert (dlogits[row, others] == 0).all()
    clean = [r for r in range(34) if r not in masks and r != 9]
    expected = f(logits[clean].copy(), target[clean], reduction="none")
    np.testing.assert_array_equal(loss[clean], expected[0])
    np.testing.assert_array_equal(dlogits[clean], expected[1])


@pytest.mark.parametrize("dtype, magnitude", [("float32", 1e35), ("float64", 1e300)])
def test_huge_logits_after_a_chunk_of_minus_inf(dtype, magnitude):
    """A row's first chunk all -inf, then logits so large that the lowest finite value minus
    them overflows: the -inf chunk's zero sums take no rescale (infinity times zero)."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(8)
    logits = (rng.uniform(-1, 1, (2, 1500)) * magnitude).astype(dtype)
    logits[:, 1000] = magnitude
    logits[:, :600] = -np.inf
    target = np.array([1000, 700])
    for options in ({}, {"label_smoothing": 0.1}):
        loss, dlogits = f(logits, target, reduction="none", **options)
        alone, grad_alone = f(logits[:, 600:].copy(), target - 600, reduction="none",
                              label_smoothing=0.0)
        if options:  # the smoothing term holds -(-inf)
            assert (loss == np.inf).all() and np.isfinite(dlogits).all()
        else:
            _assert_close(loss, alone, dtype, "loss")
            _assert_close(dlogits[:, 600:], grad_alone, dtype, "dlogits")
            assert (dlogits[:, :600] == 0).all()


@pytest.mark.parametrize("dtype, magnitude", [("float32", 1e30), ("float64", 1e300)])
def test_huge_logits_are_exact(dtype, magnitude):
    f = runtime.load(dtype)
    rng = np.random.default_rng(9)
    logits = (rng.uniform(-1, 1, (4, 7)) * magnitude).astype(dtype)
    logits[:, 2] = magnitude
    target = np.array([2, 0, 6, 2])
    for options in ({}, {"label_smoothing": 0.1}, {"softcap": 30.0}):
        loss, dlogits, lse = f(logits, target, reduction="none", return_lse=True, **options)
        ref = reference_cross_entropy(logits, target, reduction="none", return_lse=True, **options)
        assert np.isfinite(loss).all() and np.isfinite(dlogits).all()
        for name, actual, expected in zip(("loss", "dlogits", "lse"), (loss, dlogits, lse), ref):
            _assert_close(actual, expected, dtype, f"{options} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_one_class_and_inplace(dtype):
    f = runtime.load(dtype)
    empty = np.zeros((0, 4), dtype=dtype)
    loss, dlogits = f(empty, np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and dlogits.shape == (0, 4)
    assert float(f(empty, np.zeros(0, dtype=np.int64), reduction="sum")[0]) == 0.0
    loss, dlogits = f(np.array([[3.0], [-2.0]], dtype=dtype), np.array([0, 0]))
    assert float(loss) == 0.0 and np.all(dlogits == 0)
    rng = np.random.default_rng(2)
    logits, target, _ = _inputs(rng, dtype, 6, 37, False)
    expected = f(logits, target)
    buffer = logits.copy()
    loss, dlogits = f(buffer, target, inplace=True)
    assert dlogits is buffer and np.array_equal(dlogits, expected[1]) and loss == expected[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_reads_each_target_before_its_chunk_is_written(dtype):
    """Long rows run in chunks, and each row's target logit is read in its chunk before the
    gradient is written over it: targets in the first, a middle and the last chunk, in place
    and not, with every option that reads the target."""
    f = runtime.load(dtype)
    rng = np.random.default_rng(6)
    classes = 3 * context.CHUNK + 7
    logits, _, weight = _inputs(rng, dtype, 6, classes, False)
    target = np.array([0, context.CHUNK - 1, context.CHUNK, 2 * context.CHUNK + 3, classes - 1, 5])
    for options in ({}, {"weight": weight, "label_smoothing": 0.1, "lse_square_scale": 1e-2}):
        expected = f(logits, target, reduction="none", **options)
        buffer = logits.copy()
        loss, dlogits = f(buffer, target, reduction="none", inplace=True, **options)
        assert np.array_equal(loss, expected[0]) and np.array_equal(dlogits, expected[1])
    # The target logits were read at all: -log softmax at the target, in float64 (the mpmath
    # reference takes minutes at this size).
    wide = logits.astype(np.float64)
    top = wide.max(axis=1)
    lse = top + np.log(np.exp(wide - top[:, None]).sum(axis=1))
    np.testing.assert_allclose(f(logits, target, reduction="none")[0],
                               lse - wide[np.arange(len(wide)), target],
                               rtol=1e-5 if dtype == "float32" else 1e-12)


def _placed(values: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``values`` whose data starts ``offset`` bytes into a 64-byte cache line."""
    block = np.empty(values.size + 64 // values.itemsize, dtype=values.dtype)
    start = (offset - address(block)) % 64 // values.itemsize
    placed = block[start:start + values.size].reshape(values.shape)
    placed[...] = values
    return placed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 16, 32, 48])
def test_a_fresh_gradient_lies_as_far_into_a_cache_line_as_its_logits(dtype, offset):
    f = runtime.load(dtype)
    rng = np.random.default_rng(8)
    values, target, _ = _inputs(rng, dtype, 40, 1000, False)
    logits = _placed(values, offset)
    loss, dlogits = f(logits, target)
    assert address(logits) % 64 == offset and address(dlogits) % 64 == offset
    assert dlogits.shape == values.shape and dlogits.flags.c_contiguous and dlogits.flags.writeable
    out = np.empty_like(values)
    expected = f(values, target, out=out)
    assert loss == expected[0] and np.array_equal(dlogits, out)


def test_serial_and_parallel_builds_agree_bitwise(tmp_path):
    serial = runtime.bind(_strict_build(tmp_path, openmp=False), "float32")
    parallel = runtime.bind(_strict_build(tmp_path, openmp=True), "float32")
    rng = np.random.default_rng(4)
    logits, target, _ = _inputs(rng, "float32", 5000, 64, False)
    for reduction in REDUCTIONS:
        a, b = serial(logits, target, reduction=reduction), parallel(logits, target, reduction=reduction)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_row_offsets_past_two_to_the_31():
    """Two rows 2^31 + 16 elements apart, in a lazily committed mapping (touches two pages)."""
    stride = 2**31 + 16
    classes = 16
    size = (stride + classes) * 4
    try:
        mapping = mmap.mmap(-1, size)
    except (OSError, OverflowError, ValueError) as error:
        pytest.skip(f"cannot map {size} bytes of address space: {error}")
    flat = np.frombuffer(mapping, dtype=np.float32)  # the mapping lives as long as the views
    rows = np.lib.stride_tricks.as_strided(flat, shape=(2, classes), strides=(stride * 4, 4))
    rng = np.random.default_rng(1)
    values = rng.standard_normal((2, classes)).astype(np.float32)
    rows[0], rows[1] = values[0], values[1]
    target = np.array([3, 15])
    f = runtime.load("float32")
    loss, dlogits = f(rows, target, reduction="none")
    ref_loss, ref_grad = f(values, target, reduction="none")
    assert np.array_equal(loss, ref_loss) and np.array_equal(dlogits, ref_grad)
    f(rows, target, reduction="none", inplace=True)
    assert np.array_equal(rows, ref_grad)


# --- The C ABI directly: status codes, and nothing written on bad input. ---------------------


def _abi_call(library, **change):
    logits = np.arange(12, dtype=np.float64).reshape(3, 4)
    targets = np.array([0, 3, -100], dtype=np.int64)
    dlogits = np.full((3, 4), 7.0)
    loss = np.full(1, 7.0)
    bad_row = ctypes.c_int64(99)
    params = build.Params(ignore_index=-100, reduction=1, reserved=0, label_smoothing=0.0,
                          lse_square_scale=0.0, softcap=0.0)
    for name in ("reduction", "reserved", "label_smoothing", "lse_square_scale", "softcap"):
        if name in change:
            setattr(params, name, change.pop(name))
    pointer = ctypes.POINTER(ctypes.c_double)
    arguments = {
        "logits": logits.ctypes.data_as(pointer), "logits_stride": 4,
        "targets": targets.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), "weight": None,
        "n_rows": 3, "n_classes": 4, "params": ctypes.byref(params), "grad_output": None,
        "loss": loss.ctypes.data_as(pointer), "dlogits": dlogits.ctypes.data_as(pointer),
        "dlogits_stride": 4, "lse": None, "bad_row": ctypes.byref(bad_row),
    }
    if "targets_values" in change:
        targets[:] = change.pop("targets_values")
    arguments.update(change)
    status = library.gs_ce_index_f64(*arguments.values())
    return status, bad_row.value, dlogits, loss


def test_status_codes(library):
    assert _abi_call(library)[0] == GS_OK
    for name in ("logits", "targets", "params", "loss", "dlogits"):
        status, _, dlogits, _ = _abi_call(library, **{name: None})
        assert status == GS_ERR_NULL and np.all(dlogits == 7.0), name
    for change in ({"n_classes": 0}, {"n_rows": -1}, {"logits_stride": 3}, {"dlogits_stride": 2},
                   {"logits_stride": 2**62}):
        status, _, dlogits, _ = _abi_call(library, **change)
        assert status == GS_ERR_SHAPE and np.all(dlogits == 7.0), change
    for change in ({"reduction": 3}, {"reduction": -1}, {"reserved": 1}, {"label_smoothing": 1.5},
                   {"label_smoothing": float("nan")}, {"lse_square_scale": -1.0},
                   {"lse_square_scale": float("inf")}, {"softcap": -1.0}, {"softcap": float("nan")}):
        status, _, dlogits, _ = _abi_call(library, **change)
        assert status == GS_ERR_PARAMS and np.all(dlogits == 7.0), change
    for values, row in (([0, 4, 9], 1), ([-1, 0, 0], 0), ([0, 0, 2**40], 2)):
        status, bad_row, dlogits, loss = _abi_call(library, targets_values=values)
        assert (status, bad_row) == (GS_ERR_TARGET, row)
        assert np.all(dlogits == 7.0) and loss[0] == 7.0
    assert _abi_call(library, bad_row=None, targets_values=[0, 4, 0])[0] == GS_ERR_TARGET


def test_runtime_errors_name_the_argument():
    f = runtime.load("float32")
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"target\[1\] = 4 is outside \[0, 4\)"):
        f(logits, np.array([0, 4, 1]))
    with pytest.raises(TypeError, match="logits"):
        f(logits.astype(np.float64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="weight"):
        f(logits, np.array([0, 1, 2]), weight=np.ones(3, dtype=np.float32))


def test_address_is_numpys_for_every_layout():
    """The buffer protocol's address where it applies, NumPy's where it refuses (read-only,
    strided, empty): the first element's address either way."""
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    read_only = base.copy()
    read_only.flags.writeable = False
    arrays = {"contiguous": base, "rows from the second": base[1:], "row-padded": base[:, :7],
              "reversed rows": base[::-1], "read-only": read_only, "empty": base[:0],
              "0-d": np.array(2.0), "int64": np.arange(5)}
    for name, array in arrays.items():
        assert address(array) == array.ctypes.data, name
    assert address(None) is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_inputs_give_what_writeable_ones_give(dtype):
    rng = np.random.default_rng(11)
    logits, target, weight = _inputs(rng, dtype, 70, 9, probs=False)
    grad_output = rng.uniform(size=70).astype(dtype)
    f = runtime.load(dtype)
    expected = f(logits, target, weight=weight, reduction="none", grad_output=grad_output)
    frozen = [array.copy() for array in (logits, target, weight, grad_output)]
    for array in frozen:
        array.flags.writeable = False
    got = f(frozen[0], frozen[1], weight=frozen[2], reduction="none", grad_output=frozen[3])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_rows_beyond_the_stored_chunks_take_the_recomputing_path():
    """Rows longer than CHUNK * STORED_CHUNKS classes recompute the exponential in the second
    sweep instead of scaling the stored one; both sides of that boundary are exact."""
    boundary = context.CHUNK * context.STORED_CHUNKS
    function = runtime.load("float32")
    rng = np.random.default_rng(5)
    eps = 0.1
    for classes in (boundary, boundary + 1):
        logits = (3 * rng.standard_normal((2, classes))).astype(np.float32)
        logits[1, classes // 2 + 7] = 40.0  # the row maximum moves late in the row
        target = np.array([7, classes // 2 + 7])
        loss, dlogits = function(logits, target, reduction="none", label_smoothing=eps)
        # Independent float64 evaluation of PyTorch's definition.
        z = logits.astype(np.float64)
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        rows = np.arange(2)
        expected_loss = (1 - eps) * (lse - z[rows, target]) + eps / classes * (classes * lse - z.sum(axis=1))
        expected = np.exp(z - lse[:, None]) - eps / classes
        expected[rows, target] -= 1 - eps
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        np.testing.assert_allclose(dlogits, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("header", ["c/gradsmith_ce.h", "cuda/gradsmith_ce.cuh"])
def test_status_codes_of_the_runtimes_match_the_headers(header):
    import re

    from gradsmith.codegen.native import Status

    text = (build.SOURCE_DIR.parent / header).read_text()
    defined = {name: int(value) for name, value in re.findall(r"#define GS_(OK|ERR_\w+) (\d+)", text)}
    expected = {("OK" if s is Status.OK else f"ERR_{s.name}"): int(s) for s in Status}
    assert defined == expected
