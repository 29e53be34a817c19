"""The CUDA backend: compiles cleanly for every architecture, computes exactly on the host, runs on a GPU.

Without a GPU the arithmetic is still checked: the kernels' ``__host__ __device__`` functions
(printed math, per-thread sweeps, merges, row epilogue) are compiled for the host with nvcc and
driven the way a warp or a block drives them, then compared with the mpmath reference.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cuda_build import (  # tests/ is on sys.path (conftest.py)
    CACHE,
    CUDA_DIR,
    NVCC,
    ROOT,
    cached_build,
    gpu,
    gpu_available,
    needs_nvcc,
    ptxas_report,
    supported_archs,
)
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.backends.cuda import BACKEND, render
from gradsmith.derive.kernel_spec import all_specs

try:
    from tests.reference import reference_cross_entropy
except ImportError:  # run from inside tests/
    from reference import reference_cross_entropy

STORAGES = ("float32", "float64", "bfloat16", "float16")
VARIANTS = [spec.name for spec in all_specs()]


def test_generated_cuda_is_current():
    for path, text in render().items():
        assert (ROOT / "generated" / path).read_text() == text, f"{path} is stale: run gradsmith generate"


@needs_nvcc
def test_kernels_compile_without_warnings_spills_or_local_memory():
    archs, entries, frames, log = ptxas_report("ptxas", CUDA_DIR / "gradsmith_ce.cu")
    assert {arch for _, arch in entries} == set(archs)
    # 8 variants x 4 storages x (warp rows, block rows, denominator, loss) per architecture.
    assert len(entries) == len(frames) == 8 * 4 * 4 * len(archs)
    assert all(frame == ("0", "0", "0") for frame in frames), "stack frame or spills in ptxas output"
    assert "lmem" not in log and "cumulative stack" not in log


@needs_nvcc
def test_sm70_is_built_when_nvcc_supports_it():
    if "sm_70" not in supported_archs():
        pytest.skip("this nvcc cannot target sm_70 (CUDA 13 dropped Volta); sm_80 and sm_90 are checked")
    command = [NVCC, "-Werror", "all-warnings", "-std=c++17", "-O3", "-arch=sm_70", "-cubin",
               str(CUDA_DIR / "gradsmith_ce.cu"), "-o", "ce.cubin"]
    cached_build("sm70", command)


HARNESS = r"""
#include "gradsmith_ce.cuh"
#include <cstdio>
#include <vector>
using namespace gs;

static std::vector<char> blob;
static size_t at = 0;
template <typename X> X take() { X x; memcpy(&x, blob.data() + at, sizeof x); at += sizeof x; return x; }

template <class V, typename T> void run(FILE *out, const int64_t *h, const double *p) {
    typedef typename V::real R;
    const int64_t n = h[2], C = h[3], threads = h[4], warp_rows = h[5], reduction = h[6];
    const int64_t width = warp_rows ? 32 : threads;
    std::vector<pack<T>> buffer((n * C) / pack<T>::size + 2), grad_buffer(buffer.size());
    T *logits = buffer[0].v, *dlogits = grad_buffer[0].v;
    std::vector<pack<T>> prob_buffer(buffer.size());
    T *probs = prob_buffer[0].v;
    std::vector<int64_t> targets(n);
    std::vector<R> weight(C), grad_output(reduction == 0 ? n : 1, R(1));
    for (int64_t i = 0; i < n * C; ++i) logits[i] = storage<T>::store((R)take<double>());
    if (V::index_targets) for (int64_t i = 0; i < n; ++i) targets[i] = take<int64_t>();
    else for (int64_t i = 0; i < n * C; ++i) probs[i] = storage<T>::store((R)take<double>());
    if (V::weighted) for (int64_t j = 0; j < C; ++j) weight[j] = (R)take<double>();
    if (h[8]) for (auto &g : grad_output) g = (R)take<double>();
    const consts<R> k = {(R)p[0], (R)p[1], (R)p[2], (R)C};
    double denominator = 0.0, counted_rows = 0.0, total = 0.0;
    int64_t first_bad = -1;
    for (int64_t row = 0; row < n; ++row) {
        const row_setup<R> st = setup_row<V, T>(logits + row * C, targets.data(), weight.data(), row, C, h[7]);
        double share, counted;
        if (!denominator_share<V>(st, share, counted) && first_bad < 0) first_bad = row;
        denominator += share;
        counted_rows += counted;
    }
    consts<R> row_k = k;
    if (reduction == 1 && denominator != 0.0)
        row_k.lse_square_scale = (R)V::mean_lse_square_scale((double)k.lse_square_scale, denominator, counted_rows);
    std::vector<double> losses(n), lses(n);
    for (int64_t row = 0; row < n; ++row) {
        const T *lp = logits + row * C, *pp = V::index_targets ? nullptr : probs + row * C;
        T *dp = dlogits + row * C;
        const bool vectorized = (((uintptr_t)lp | (uintptr_t)dp | (uintptr_t)pp) & 15u) == 0;
        const row_setup<R> st = setup_row<V, T>(lp, targets.data(), weight.data(), row, C, h[7]);
        const bool sweep = needs_sweep(st, true);
        std::vector<state<R>> s(threads, empty_state<R>());
        for (int64_t t = 0; t < threads; ++t)
            if (sweep) first_sweep<V, T>(s[t], lp, pp, weight.data(), C, t, width, vectorized, k);
        for (int round = 0; round < (warp_rows ? 1 : 2); ++round) {  // warp butterflies, then warp 0
            if (round == 1) {
                std::vector<state<R>> lanes(32, empty_state<R>());
                for (int64_t w = 0; w < threads / 32; ++w) lanes[w] = s[32 * w];
                s = lanes;
            }
            for (int mask = 16; mask > 0; mask >>= 1) {
                std::vector<state<R>> next(s.size());
                for (size_t i = 0; i < s.size(); ++i) next[i] = merge<V>(s[i], s[i ^ mask], k);
                s = next;
            }
        }
        typename V::row r;
        R row_lse;
        const double go = (double)grad_output[reduction == 0 ? row : 0];
        const int mode = finish_row<V>(r, losses[row], row_lse, s[0], st, sweep,
                                       (int)reduction, go, denominator, row_k);
        lses[row] = (double)row_lse;
        for (int64_t t = 0; t < threads; ++t)
            second_sweep<V, T>(dp, lp, pp, weight.data(), C, st.target, mode, r, t, width, vectorized, k);
        total += losses[row];
    }
    if (reduction == 0) for (double &l : losses) l = (double)(R)l;
    else losses.assign(1, (double)(R)(reduction == 1 ? V::loss_mean(total, denominator) : total));
    fwrite(losses.data(), sizeof(double), losses.size(), out);
    for (int64_t i = 0; i < n * C; ++i) { const double g = (double)storage<T>::load(dlogits[i]); fwrite(&g, 8, 1, out); }
    fwrite(lses.data(), sizeof(double), n, out);
    fwrite(&first_bad, 8, 1, out);
}

template <class V32, class V64> void pick(FILE *out, const int64_t *h, const double *p) {
    switch (h[1]) {
        case 0: run<V32, float>(out, h, p); break;
        case 1: run<V64, double>(out, h, p); break;
        case 2: run<V32, __nv_bfloat16>(out, h, p); break;
        default: run<V32, __half>(out, h, p); break;
    }
}

int main(int argc, char **argv) {
    (void)argc;
    FILE *in = fopen(argv[1], "rb");
    int c;
    while ((c = fgetc(in)) != EOF) blob.push_back((char)c);
    fclose(in);
    int64_t h[9];
    for (int i = 0; i < 9; ++i) h[i] = take<int64_t>();
    double p[3];
    for (int i = 0; i < 3; ++i) p[i] = take<double>();
    FILE *out = fopen(argv[2], "wb");
    switch (h[0]) {
%CASES%
    }
    fclose(out);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness() -> Path:
    if NVCC is None:
        pytest.skip("nvcc not found")
    cases = "\n".join(
        f"        case {i}: pick<{name}_f32, {name}_f64>(out, h, p); break;" for i, name in enumerate(VARIANTS)
    )
    source = HARNESS.replace("%CASES%", cases)
    command = [NVCC, "-x", "cu", "-std=c++17", "-O2", "-I", str(CUDA_DIR), "harness.cu", "-o", "harness"]
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = CACHE / f"harness-src-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "harness.cu").write_text(source)
    command[-3] = str(folder / "harness.cu")
    built, _ = cached_build("harness", command, source.encode())
    return built / "harness"


def _round_to(values: np.ndarray, storage: str) -> np.ndarray:
    """Values as the storage dtype holds them (round to nearest even), back in float64."""
    values = np.asarray(values, dtype=np.float64)
    if storage == "float16":
        return values.astype(np.float16).astype(np.float64)
    if storage == "bfloat16":
        bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
        out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
        return np.where(np.isfinite(values), out, values)
    return values.astype(np.float32 if storage == "float32" else np.float64).astype(np.float64)


def _ulp(values: np.ndarray, storage: str) -> np.ndarray:
    """Spacing of the 16-bit storage format at each value."""
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    if storage == "float16":
        return np.spacing(magnitude.astype(np.float16)).astype(np.float64)
    return np.spacing(magnitude.astype(np.float32)).astype(np.float64) * 2.0**16


def _run_harness(harness, name, storage, logits, target, weight, params, threads, warp_rows, reduction,
                 grad_output, ignore_index=-100):
    n, classes = logits.shape
    header = [VARIANTS.index(name), STORAGES.index(storage), n, classes, threads, int(warp_rows),
              ("none", "mean", "sum").index(reduction), ignore_index, int(grad_output is not None)]
    parts = [np.array(header, np.int64), np.array(params, np.float64), logits.astype(np.float64).ravel()]
    parts.append(target.astype(np.int64) if target.ndim == 1 else target.astype(np.float64).ravel())
    if weight is not None:
        parts.append(weight.astype(np.float64))
    if grad_output is not None:
        parts.append(np.atleast_1d(grad_output).astype(np.float64))
    folder = harness.parent
    tag = hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest()[:12]
    (folder / f"in-{tag}").write_bytes(b"".join(p.tobytes() for p in parts))
    subprocess.run([str(harness), str(folder / f"in-{tag}"), str(folder / f"out-{tag}")], check=True)
    out = np.fromfile(folder / f"out-{tag}", dtype=np.float64)
    count = n if reduction == "none" else 1
    loss, grad, lse = out[:count], out[count:count + n * classes], out[count + n * classes:-1]
    return (loss if reduction == "none" else loss[0]), grad.reshape(n, classes), lse, int(out[-1:].view(np.int64)[0])


TOLERANCE = {"float32": 3e-5, "float64": 1e-12, "bfloat16": 3e-5, "float16": 3e-5}


def _case(rng, name, storage, n, classes, reduction):
    probs = name.startswith("probs")
    logits = _round_to(rng.normal(0, 3, (n, classes)), storage)
    if probs:
        target = rng.random((n, classes))
        target = _round_to(target / target.sum(axis=1, keepdims=True), storage)
    else:
        target = rng.integers(0, classes, n)
        target[1] = -100  # an ignored row
    weight = _round_to(rng.uniform(0.5, 2.0, classes), "float32" if storage != "float64" else storage) \
        if "weighted" in name else None
    grad_output = rng.uniform(0.5, 2.0, n if reduction == "none" else ()) if reduction != "mean" else 1.5
    aux = "float64" if storage == "float64" else "float32"
    grad_output = _round_to(grad_output, aux)
    options = {"label_smoothing": 0.1, "lse_square_scale": 1e-3, "softcap": 5.0 if "softcap" in name else None}
    return logits, target, weight, options, grad_output


@needs_nvcc
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(("classes", "threads", "warp_rows"),
                         [(37, 32, True), (64, 32, True), (70, 64, False), (5, 32, True), (1, 64, False)])
def test_host_arithmetic_matches_reference(harness, storage, name, classes, threads, warp_rows):
    rng = np.random.default_rng([VARIANTS.index(name), STORAGES.index(storage), classes])
    reduction = ("none", "mean", "sum")[(classes + VARIANTS.index(name)) % 3]
    logits, target, weight, options, grad_output = _case(rng, name, storage, 4, classes, reduction)
    params = (options["label_smoothing"], options["lse_square_scale"], options["softcap"] or 0.0)
    loss, grad, lse, bad = _run_harness(harness, name, storage, logits, target, weight, params, threads,
                                        warp_rows, reduction, grad_output)
    ref_loss, ref_grad, ref_lse = reference_cross_entropy(
        logits, target, weight=weight, reduction=reduction, grad_output=grad_output, return_lse=True, **options)
    tol = TOLERANCE[storage]
    assert bad == -1
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse, ref_lse, rtol=tol, atol=tol)
    scale = np.abs(ref_grad).max()
    if storage in ("bfloat16", "float16"):
        # The gradient is formed in float and rounded once: within one storage ulp of the exact value.
        assert np.all(np.abs(grad - ref_grad) <= _ulp(ref_grad, storage) + 1e-9 * scale)
    else:
        np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol * scale)


@needs_nvcc
@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_target_gradient_is_formed_in_float(harness, storage):
    """p_t - 1 with p_t near 1: rounding p_t to 16 bits first would lose it entirely."""
    logits = np.zeros((2, 40))
    logits[:, 3] = 12.0
    target = np.array([3, 3])
    _, grad, _, _ = _run_harness(harness, "index", storage, logits, target, None, (0.0, 0.0, 0.0), 32,
                                 True, "sum", None)
    _, ref_grad = reference_cross_entropy(logits, target, reduction="sum")
    assert ref_grad[0, 3] > -1e-3
    np.testing.assert_allclose(grad[:, 3], _round_to(ref_grad[:, 3], storage), rtol=2**-8)


@needs_nvcc
@pytest.mark.parametrize(("storage", "huge"), [("float32", 1e30), ("float64", 1e300)])
def test_huge_and_non_finite_rows(harness, storage, huge):
    """NaN and +inf rows NaN; -inf logits as PyTorch has them (exp(-inf) = 0): finite rows, an
    infinite loss at a -inf target, NaN for a row of -inf alone (lse too)."""
    logits = np.array([[huge, -huge, 0.0, huge / 2], [1.0, np.nan, 0.0, 2.0], [np.inf, 0.0, 1.0, 2.0],
                       [0.5, 0.25, -1.0, 3.0], [-np.inf, 1.0, -np.inf, 2.0], [1.0, -np.inf, 0.0, 2.0],
                       [-np.inf] * 4, [-np.inf, -np.inf, huge, -huge]])
    target = np.array([0, 1, 2, 3, 1, 1, 0, 3])
    for threads, warp_rows, smoothing in ((32, True, 0.0), (64, False, 0.0), (32, True, 0.1)):
        loss, grad, lse, _ = _run_harness(harness, "index", storage, logits, target, None,
                                          (smoothing, 0.0, 0.0), threads, warp_rows, "none", None)
        ref_loss, ref_grad, ref_lse = reference_cross_entropy(
            logits, target, reduction="none", return_lse=True, label_smoothing=smoothing)
        for name, actual, expected in (("loss", loss, ref_loss), ("lse", lse, ref_lse)):
            np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=name)
            np.testing.assert_allclose(actual, expected, rtol=TOLERANCE[storage], err_msg=name)
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(ref_grad))
        np.testing.assert_allclose(grad, ref_grad, rtol=TOLERANCE[storage], atol=1e-7)
        assert np.isnan(grad[[1, 2, 6]]).all() and np.isfinite(grad[[0, 3, 4, 5, 7]]).all()
        assert loss[5] == np.inf and np.isnan(lse[6])


@needs_nvcc
@pytest.mark.parametrize("name", [n for n in VARIANTS if "softcap" not in n])
@pytest.mark.parametrize(("storage", "huge"), [("float32", 1e30), ("float64", 1e300), ("float32", 1e4)])
def test_shifts_are_taken_before_the_log_sum_exp_is_added(harness, name, storage, huge):
    """Tied maxima far from 0: the printed code must form logit - row_max (and log_sum_exp -
    target_shifted) as the spec names them; folding them into lse - target_logit or
    exp(-log_sum_exp + logit - row_max) rounds log 2 away next to |logit| = huge."""
    logits = np.array([[huge, huge, 0.0, -huge], [huge, huge - huge / 2**10, huge, 1.0],
                       [-huge, 3.0, 3.0, 2.0]])
    logits = _round_to(logits, storage)
    if name.startswith("probs"):
        target = _round_to(np.array([[0.5, 0.5, 0, 0], [0.25, 0, 0.75, 0], [0, 0.5, 0.25, 0.25]]), storage)
    else:
        target = np.array([1, 2, 1])
    weight = np.array([0.5, 2.0, 1.0, 1.5]) if "weighted" in name else None
    loss, grad, lse, _ = _run_harness(harness, name, storage, logits, target, weight, (0.0, 0.0, 0.0), 32,
                                      True, "none", None)
    ref_loss, ref_grad, ref_lse = reference_cross_entropy(logits, target, weight=weight, reduction="none",
                                                          return_lse=True)
    tol = TOLERANCE[storage]
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse, ref_lse, rtol=tol)


@needs_nvcc
def test_bad_target_is_reported_without_reading_out_of_bounds(harness):
    logits = np.zeros((4, 8))
    target = np.array([1, 9, -5, 2])
    _, grad, _, bad = _run_harness(harness, "index_weighted", "float32", logits, target, np.ones(8),
                                   (0.0, 0.0, 0.0), 32, True, "mean", None)
    assert bad == 1 and np.isnan(grad[1:3]).all() and np.isfinite(grad[[0, 3]]).all()


# ---- on a GPU --------------------------------------------------------------------------------




@needs_nvcc
@pytest.mark.parametrize("suffix", [SUFFIXES[dtype] for dtype in BACKEND.dtypes])
def test_launchers_refuse_bad_arguments_before_any_launch(suffix):
    """The runtime's library, loaded through its ctypes declarations, answers status codes
    for bad arguments without touching a device (so this runs without a GPU)."""
    import ctypes

    from gradsmith.codegen.backends.cuda.runtime import _library
    from gradsmith.codegen.native import Params

    library = _library("sm_80")
    assert library.gs_ce_cuda_workspace_bytes(1000) >= 1000 * 8
    good = {"ignore_index": -100, "reduction": 1, "reserved": 0, "label_smoothing": 0.0,
            "lse_square_scale": 0.0, "softcap": 0.0}
    fake = ctypes.c_void_p(64)  # never dereferenced: every call below fails its checks first
    index = getattr(library, f"gs_ce_cuda_index_{suffix}")
    probs = getattr(library, f"gs_ce_cuda_probs_{suffix}")

    def call_index(logits, n_rows, n_classes, **params):
        p = Params(**{**good, **params})
        return index(logits, n_classes, fake, None, n_rows, n_classes, ctypes.byref(p), None,
                     fake, fake, n_classes, None, fake, fake, None)

    assert call_index(None, 4, 10) == 1  # GS_ERR_NULL_POINTER
    assert call_index(fake, 4, 0) == 2  # GS_ERR_SHAPE
    assert call_index(fake, -1, 10) == 2
    assert call_index(fake, 4, 10, reserved=1) == 4  # GS_ERR_PARAMS
    assert call_index(fake, 4, 10, label_smoothing=1.5) == 4
    assert call_index(fake, 4, 10, softcap=-1.0) == 4
    p = Params(**{**good, "reduction": 7})
    assert probs(fake, 10, fake, 10, None, 4, 10, ctypes.byref(p), None, fake, fake, 10, None,
                 fake, None) == 4


@needs_nvcc
@pytest.mark.parametrize("suffix", [SUFFIXES["float32"], SUFFIXES["bfloat16"]])
def test_launchers_accept_null_row_arrays_for_an_empty_batch(suffix):
    """N = 0 is valid, and an allocator's empty arrays (CuPy's) have a NULL data pointer: the
    launchers must not refuse them (only loss, for mean and sum, is still needed)."""
    import ctypes

    from gradsmith.codegen.backends.cuda.runtime import _library
    from gradsmith.codegen.native import Params

    library = _library("sm_80")
    fake = ctypes.c_void_p(64)
    index = getattr(library, f"gs_ce_cuda_index_{suffix}")
    probs = getattr(library, f"gs_ce_cuda_probs_{suffix}")

    def params(reduction):
        return ctypes.byref(Params(-100, reduction, 0, 0.0, 0.0, 0.0))

    # Rows, or a mean or sum with nowhere to put it: refused before any launch.
    assert index(None, 10, fake, None, 3, 10, params(0), None, fake, fake, 10, None, None, fake, None) == 1
    assert index(fake, 10, None, None, 3, 10, params(0), None, fake, fake, 10, None, None, fake, None) == 1
    for reduction in (1, 2):
        assert index(None, 10, None, None, 0, 10, params(reduction), None, None, None, 10, None, None,
                     fake, None) == 1
    # No rows and reduction "none": nothing to launch, nothing to refuse (without a device the
    # runtime then reports its missing driver, GS_ERR_CUDA).
    code = probs(None, 10, None, 10, None, 0, 10, params(0), None, None, None, 10, None, fake, None)
    assert code == (0 if gpu_available() else 5)
    if not gpu_available():  # on a device these would launch (and write the fake workspace)
        for reduction in (0, 1, 2):
            loss = fake if reduction else None
            assert index(None, 10, None, None, 0, 10, params(reduction), None, loss, None, 10, None, None,
                         fake, None) == 5


def test_rows_the_kernels_cannot_walk_are_copied():
    """A broadcast (row stride 0) or overlapping view would be read past its end with stride C."""
    from gradsmith.codegen.backends.cuda.runtime import _row_stride, _walkable

    base = np.arange(12, dtype=np.float32)
    broadcast = np.broadcast_to(base[:4], (3, 4))
    overlapping = np.lib.stride_tricks.as_strided(base, shape=(3, 4), strides=(8, 4))
    padded = base.reshape(2, 6)[:, :4]
    for array in (broadcast, overlapping):
        walked = _walkable(np, array)
        assert walked is not array and walked.flags.c_contiguous
        np.testing.assert_array_equal(walked, array)
        assert _row_stride(walked, 4) == 4
    assert _walkable(np, padded) is padded and _row_stride(padded, 4) == 6
    single = np.broadcast_to(base[:4], (1, 4))
    assert _walkable(np, single) is single


def test_clear_error_without_gpu():
    if gpu_available():
        pytest.skip("a GPU is present")
    from gradsmith.codegen import loading

    with pytest.raises(ValueError, match="cuda backend needs CuPy and an NVIDIA GPU"):
        loading.load("cuda", "float32")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("classes", [10, 1000, 5003])
def test_gpu_kernels_match_reference(dtype, name, classes):
    import cupy
    from gradsmith.codegen import loading

    rng = np.random.default_rng(classes)
    reduction = ("none", "mean", "sum")[classes % 3]
    logits, target, weight, options, grad_output = _case(rng, name, dtype, 5, classes, reduction)
    f = loading.load("cuda", dtype)
    aux = np.float64 if dtype == "float64" else np.float32
    as_device = lambda a, t=dtype: None if a is None else cupy.asarray(np.asarray(a).astype(t))
    loss, grad, lse = f(as_device(logits), as_device(target, target.dtype if target.ndim == 1 else dtype),
                        weight=as_device(weight), reduction=reduction,
                        grad_output=as_device(grad_output), return_lse=True, **options)
    ref_loss, ref_grad, ref_lse = reference_cross_entropy(
        logits, target, weight=weight, reduction=reduction, grad_output=grad_output, return_lse=True, **options)
    tol = 1e-3 if dtype == "float16" else TOLERANCE[dtype]
    np.testing.assert_allclose(cupy.asnumpy(loss).astype(aux), ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(cupy.asnumpy(lse), ref_lse, rtol=tol, atol=tol)
    np.testing.assert_allclose(cupy.asnumpy(grad).astype(np.float64), ref_grad, rtol=tol,
                               atol=tol * np.abs(ref_grad).max())


@pytest.mark.gpu
@gpu
def test_gpu_inplace_numpy_bad_target_and_empty_batch():
    from gradsmith.codegen import loading

    f = loading.load("cuda", "float32")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 33)).astype(np.float32)
    target = rng.integers(0, 33, 7)
    ref_loss, ref_grad = reference_cross_entropy(logits, target)
    loss, grad = f(logits.copy(), target)
    np.testing.assert_allclose(loss, ref_loss, rtol=3e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=3e-5, atol=1e-7)
    buffer = logits.copy()
    _, same = f(buffer, target, inplace=True)
    assert same is buffer
    np.testing.assert_allclose(buffer, ref_grad, rtol=3e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"target\[2\] = 40"):
        f(logits, np.array([0, 1, 40, 2, 3, 4, 5]))
    loss, grad = f(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))
    assert np.isnan(loss) and grad.shape == (0, 5)
