"""The generic row losses' CUDA kernels (focal, distill_kl, any registered definition).

Without a GPU: the emitted files are current, compile for sm_80 and sm_90 with every warning an
error and no spills, and their ``__host__ __device__`` row functions, compiled for the host and
driven the way a warp or a block of threads drives them (per-thread sweeps, butterfly merges),
match the 40-digit reference of the definition and the C kernels.  That host harness re-implements
the kernel's row loop, row_all_reduce and bad-row bookkeeping, so it checks the printed device row
functions only: not the launch, __syncthreads or atomicMin, which only the GPU tests run.  On a
GPU: the CuPy loader against the C kernels, and the launcher's bad_row.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import re
import subprocess

import numpy as np
import pytest
import sympy as sp
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
)
from gradsmith import load
from gradsmith.codegen.row_loss import cuda_path, render_loss
from gradsmith.codegen.validate.row_loss import _reference
from gradsmith.derive import row_loss as rl
from gradsmith.derive.check import ProofError
from gradsmith.derive.losses import definition
from gradsmith.derive.row_loss_proofs import _merge
from non_finite_rows import GENERIC, TOLERANCE, batch, check

STORAGES = ("float32", "float64", "bfloat16", "float16")


def _sources(name: str) -> tuple[str, ...]:
    return (cuda_path(name).removeprefix("cuda/"), "gradsmith_ce.cuh")


def test_generated_cuda_is_current():
    for name in GENERIC:
        path = cuda_path(name)
        assert (ROOT / "generated" / path).read_text() == render_loss(name, ("cuda",))[path], (
            f"{path} is stale: run gradsmith generate")


@pytest.mark.parametrize("name", GENERIC)
def test_every_row_struct_field_is_read_by_the_gradient_sweep_or_the_loss(name):
    text = (ROOT / "generated" / cuda_path(name)).read_text()
    written = re.findall(r"^\s*r\.(\w+) = \1;$", text, flags=re.MULTILINE)
    read = {field for line in text.splitlines() if not re.match(r"\s*r\.(\w+) = \1;$", line)
            for field in re.findall(r"\br\.(\w+)", line)}
    assert written and set(written) <= read, sorted(set(written) - read)


def test_the_merge_of_partial_normalizers_is_proven_and_a_wrong_one_refused():
    spec = rl.kernel_spec(definition("focal"))
    assert _merge(spec).method == "symbolic"
    # Leaving out the other part's maximum (its 1) is the slip the proof must catch.
    wrong = rl.sum_exp + rl.other_sum_exp * sp.exp(rl.other_max - rl.row_max)
    with pytest.raises(ProofError):
        _merge(dataclasses.replace(spec, normalizer_merge=wrong))


@needs_nvcc
@pytest.mark.parametrize("name", GENERIC)
def test_kernels_compile_without_warnings_spills_or_local_memory(name):
    source = ROOT / "generated" / cuda_path(name)
    archs, entries, frames, log = ptxas_report(f"ptxas-{name}", source, _sources(name))
    assert {"sm_80", "sm_90"} <= set(archs)
    assert {arch for _, arch in entries} == set(archs)
    # 4 storages x (warp rows, block rows) per architecture.
    assert len(entries) == 4 * 2 * len(archs)
    assert len(frames) >= len(entries)
    assert all(frame == ("0", "0", "0") for frame in frames), "stack frame or spills in ptxas output"
    assert "lmem" not in log and "cumulative stack" not in log


@needs_nvcc
def test_a_loss_from_outside_the_registry_gets_cuda_kernels_that_compile():
    """Poly-1 (tests/losses/poly1.py): its definition alone becomes a CUDA file."""
    ((path, text),) = render_loss(str(ROOT / "tests" / "losses" / "poly1.py"), ("cuda",)).items()
    assert path == cuda_path("poly1")
    folder = CACHE / f"poly1-src-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gradsmith_poly1.cu").write_text(text)
    command = [NVCC, "-Werror", "all-warnings", "-std=c++17", "-O3", "-arch=sm_80", "-I", str(CUDA_DIR),
               "-c", str(folder / "gradsmith_poly1.cu"), "-o", "poly1.o"]
    cached_build("poly1", command, text.encode(), ("gradsmith_ce.cuh",))


# A host stand-in for row_kernel: its own row loop, row_all_reduce (butterflies over lanes, then
# over the warps' lane 0) and first bad row, around the file's setup_row, fill_row, first_sweep,
# row_values, second_sweep and loss.
HARNESS = r"""
%INCLUDES%
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>
using namespace gs;

static std::vector<char> blob;
static size_t at = 0;
template <typename X> X take() { X x; memcpy(&x, blob.data() + at, sizeof x); at += sizeof x; return x; }

// The warp's butterfly over lanes (lower lane's value first), as warp_all_reduce does.
template <class X> void butterfly(std::vector<X> &v) {
    for (int mask = 16; mask > 0; mask >>= 1) {
        std::vector<X> next(v.size());
        for (size_t i = 0; i < v.size(); ++i) {
            next[i] = (i & mask) == 0 ? X::combine(v[i], v[i ^ mask]) : X::combine(v[i ^ mask], v[i]);
        }
        v = next;
    }
}

// row_all_reduce: every warp, then warp 0 over the warps' lane 0.  `agree` turns false if two
// lanes of a warp end with different bits.
template <class X> X reduce(std::vector<X> v, bool warp_rows, bool &agree) {
    butterfly(v);
    for (size_t i = 0; i < v.size() && !std::is_empty<X>::value; ++i)
        agree = agree && memcmp(&v[i], &v[i & ~size_t(31)], sizeof(X)) == 0;
    if (warp_rows) return v[0];
    std::vector<X> lanes(32, X::identity());
    for (size_t w = 0; w < v.size() / 32; ++w) lanes[w] = v[32 * w];
    butterfly(lanes);
    return lanes[0];
}

template <class M, typename T, typename Call> void run(FILE *out, const int64_t *h, const double *options) {
    typedef typename M::real R;
    const int64_t n = h[2], C = h[3], threads = h[4], warp_rows = h[5], teacher = h[9];
    const int64_t step = warp_rows ? 32 : threads;
    std::vector<T> logits(n * C), second(n * C), grad(n * C);
    std::vector<int64_t> target(n);
    std::vector<R> alpha(C), scale(n), loss(n);
    for (auto &x : logits) x = storage<T>::store((R)take<double>());
    if (teacher) for (auto &x : second) x = storage<T>::store((R)take<double>());
    else for (auto &x : target) x = take<int64_t>();
    if (h[7]) for (auto &x : alpha) x = (R)take<double>();
    for (auto &x : scale) x = (R)take<double>();
    const Call c = {logits.data(), second.data(), target.data(), h[7] ? alpha.data() : nullptr, n, C,
                    h[6], scale.data(), loss.data(), grad.data(), nullptr, M::read_options(options)};
    int64_t first_bad = -1;
    bool agree = true;
    for (int64_t row = 0; row < n; ++row) {
        const auto st = setup_row(c, row);
        if (st.mode != 0) {
            for (int64_t t = 0; t < threads; ++t) fill_row(c, row, st.mode, t, step);
            if (st.mode == 2 && first_bad < 0) first_bad = row;
            continue;
        }
        std::vector<typename M::state> states;
        for (int64_t t = 0; t < threads; ++t) states.push_back(first_sweep(c, row, t % step, step));
        const auto s = reduce(states, warp_rows, agree);
        if (!s.finite()) {
            for (int64_t t = 0; t < threads; ++t) fill_row(c, row, 3, t, step);  // row_nonfinite
            continue;
        }
        const auto r = row_values(c, row, st, s);
        std::vector<typename M::sums> sums;
        for (int64_t t = 0; t < threads; ++t) sums.push_back(second_sweep(c, row, st, r, t % step, step));
        loss[row] = M::loss(r, reduce(sums, warp_rows, agree), c.o);
    }
    for (int64_t i = 0; i < n; ++i) { const double x = (double)loss[i]; fwrite(&x, 8, 1, out); }
    for (int64_t i = 0; i < n * C; ++i) { const double g = (double)storage<T>::load(grad[i]); fwrite(&g, 8, 1, out); }
    fwrite(&first_bad, 8, 1, out);
    const int64_t agreed = agree;
    fwrite(&agreed, 8, 1, out);
}

template <class M32, class M64, template <class, typename> class Call>
void pick(FILE *out, const int64_t *h, const double *options) {
    switch (h[1]) {
        case 0: run<M32, float, Call<M32, float>>(out, h, options); break;
        case 1: run<M64, double, Call<M64, double>>(out, h, options); break;
        case 2: run<M32, __nv_bfloat16, Call<M32, __nv_bfloat16>>(out, h, options); break;
        default: run<M32, __half, Call<M32, __half>>(out, h, options); break;
    }
}

int main(int argc, char **argv) {
    (void)argc;
    FILE *in = fopen(argv[1], "rb");
    int ch;
    while ((ch = fgetc(in)) != EOF) blob.push_back((char)ch);
    fclose(in);
    int64_t h[10];
    for (int i = 0; i < 10; ++i) h[i] = take<int64_t>();
    std::vector<double> options(h[8] + 1);
    for (int64_t i = 0; i < h[8]; ++i) options[i] = take<double>();
    FILE *out = fopen(argv[2], "wb");
    switch (h[0]) {
%CASES%
    }
    fclose(out);
    return 0;
}
"""


@pytest.fixture(scope="module")
def harness():
    if NVCC is None:
        pytest.skip("nvcc not found")
    includes = "\n".join(f'#include "{cuda_path(name).removeprefix("cuda/")}"' for name in GENERIC)
    cases = "\n".join(f"        case {i}: pick<gs::{name}::math_f32, gs::{name}::math_f64, gs::{name}::call>"
                      f"(out, h, options.data()); break;" for i, name in enumerate(GENERIC))
    source = HARNESS.replace("%INCLUDES%", includes).replace("%CASES%", cases)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    folder = CACHE / f"row-loss-harness-src-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "harness.cu").write_text(source)
    command = [NVCC, "-x", "cu", "-std=c++17", "-O2", "-Werror", "all-warnings", "-I", str(CUDA_DIR),
               str(folder / "harness.cu"), "-o", "harness"]
    sources = tuple(s for name in GENERIC for s in _sources(name))
    built, _ = cached_build("row-loss-harness", command, source.encode(), sources)
    return built / "harness"


def run_harness(harness, name, storage, logits, second, *, alpha=None, scale=None, options=None,
                threads=32, warp_rows=True, ignore_index=-100):
    """Row losses, gradient, first bad row and whether the lanes agreed, from the host build."""
    found = definition(name)
    n, classes = logits.shape
    values = [float((options or {}).get(o.name, o.default)) for o in found.options]
    teacher = found.kind == "teacher"
    header = [GENERIC.index(name), STORAGES.index(storage), n, classes, threads, int(warp_rows),
              ignore_index, int(alpha is not None), len(values), int(teacher)]
    parts = [np.array(header, np.int64), np.array(values, np.float64), logits.astype(np.float64).ravel(),
             second.astype(np.float64).ravel() if teacher else second.astype(np.int64)]
    if alpha is not None:
        parts.append(np.asarray(alpha, np.float64))
    parts.append(np.ones(n) if scale is None else np.asarray(scale, np.float64))
    data = b"".join(p.tobytes() for p in parts)
    tag = hashlib.sha256(data).hexdigest()[:16]
    folder = harness.parent
    (folder / f"in-{tag}").write_bytes(data)
    subprocess.run([str(harness), str(folder / f"in-{tag}"), str(folder / f"out-{tag}")], check=True)
    out = np.frombuffer((folder / f"out-{tag}").read_bytes(), dtype=np.float64)
    losses, grad = out[:n], out[n:n + n * classes].reshape(n, classes)
    bad, agreed = out[n + n * classes:].view(np.int64)
    return losses, grad, int(bad), bool(agreed)


def _case(rng, name, n, classes, spread=3.0):
    logits = rng.standard_normal((n, classes)) * spread
    if definition(name).kind == "teacher":
        return logits, rng.standard_normal((n, classes)) * spread
    return logits, rng.integers(0, classes, n)


@functools.cache
def _cached_reference(name, logits, second, shape, options):
    """The 40-digit reference of the definition (from bytes, so that it can be cached)."""
    logits = np.frombuffer(logits).reshape(shape)
    teacher = definition(name).kind == "teacher"
    second = np.frombuffer(second, dtype=np.float64 if teacher else np.int64)
    second = second.reshape(shape) if teacher else second
    return _reference(definition(name), logits, second if teacher else None,
                      None if teacher else second, dict(options))


OPTIONS = {"focal": [{"gamma": 2.0}, {"gamma": 0.5}, {"gamma": 0.0}],
           "distill_kl": [{"temperature": 1.0}, {"temperature": 2.5}]}
# (classes, threads, warp_rows): a warp's row, a row shorter than the warp, block rows with
# threads that get no class, and a block of many warps.
LAYOUTS = [(10, 32, True), (37, 32, True), (5, 32, True), (37, 64, False), (29, 512, False)]


@needs_nvcc
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize(("classes", "threads", "warp_rows"), LAYOUTS)
@pytest.mark.parametrize("name", GENERIC)
def test_host_arithmetic_matches_the_40_digit_reference(harness, name, storage, classes, threads, warp_rows):
    # Seeded by the class count alone: layouts of one class count share the slow reference.
    rng = np.random.default_rng(classes)
    logits, second = _case(rng, name, 2, classes)
    # Values both storages hold exactly, so that one reference serves both.
    logits = logits.astype(np.float32).astype(np.float64)
    if definition(name).kind == "teacher":
        second = second.astype(np.float32).astype(np.float64)
    for options in OPTIONS[name]:
        losses, grad, bad, agreed = run_harness(harness, name, storage, logits, second, options=options,
                                                threads=threads, warp_rows=warp_rows)
        want_loss, want_grad = _cached_reference(name, logits.tobytes(), second.tobytes(),
                                                 logits.shape, tuple(options.items()))
        tol = TOLERANCE[storage] * (1 + np.abs(want_grad).max() + np.abs(want_loss).max())
        assert bad == -1 and agreed
        np.testing.assert_allclose(losses, want_loss, rtol=0, atol=tol)
        np.testing.assert_allclose(grad, want_grad, rtol=0, atol=tol)


@needs_nvcc
@pytest.mark.parametrize(("threads", "warp_rows"), [(32, True), (64, False)])
def test_focal_near_certain_target_at_logits_of_1e4(harness, threads, warp_rows):
    """1 - p_t = 8.2e-9: kept by -expm1(log p_t) across the merged normalizers."""
    logits = np.array([[1e4, 1e4 - 20, 1e4 - 20, 1e4 - 20, 1e4 - 20]])
    target = np.array([0])
    losses, grad, _, _ = run_harness(harness, "focal", "float64", logits, target,
                                     options={"gamma": 2.0}, threads=threads, warp_rows=warp_rows)
    want_loss, want_grad = _reference(definition("focal"), logits, None, target, {"gamma": 2.0})
    assert losses[0] == pytest.approx(want_loss[0], rel=1e-9, abs=0)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=0)


@needs_nvcc
def test_distill_kl_at_logits_of_1e4(harness):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((3, 6)) * 3 + 1e4).astype(np.float32).astype(np.float64)
    teacher = (rng.standard_normal((3, 6)) * 3 - 1e4).astype(np.float32).astype(np.float64)
    options = {"temperature": 2.0}
    for storage in ("float32", "float64"):
        losses, grad, _, _ = run_harness(harness, "distill_kl", storage, logits, teacher, options=options)
        want_loss, want_grad = _reference(definition("distill_kl"), logits, teacher, None, options)
        tol = TOLERANCE[storage] * (1 + np.abs(want_grad).max() + np.abs(want_loss).max())
        np.testing.assert_allclose(losses, want_loss, rtol=0, atol=tol)
        np.testing.assert_allclose(grad, want_grad, rtol=0, atol=tol)


def _c_rows(name, dtype, logits, second, alpha=None, scale=None, options=None):
    """The C kernel's per-row losses and gradient (reduction "none", scaled by ``scale``)."""
    f = load("c", dtype, loss=name)
    extra = {} if alpha is None else {"alpha": alpha.astype(dtype)}
    second = second.astype(dtype) if definition(name).kind == "teacher" else second
    return f(logits.astype(dtype), second, reduction="none",
             grad_output=None if scale is None else scale.astype(dtype), **extra, **(options or {}))


@needs_nvcc
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize(("classes", "threads", "warp_rows"), [(1500, 512, False), (1024, 32, True), (300, 64, False)])
@pytest.mark.parametrize("name", GENERIC)
def test_long_rows_match_the_c_kernel(harness, name, storage, classes, threads, warp_rows):
    rng = np.random.default_rng(classes)
    logits, second = _case(rng, name, 3, classes, spread=5.0)
    logits = logits.astype(storage).astype(np.float64)
    alpha = rng.uniform(0.1, 1.0, classes) if definition(name).class_weights else None
    scale = rng.uniform(0.5, 2.0, 3)
    if definition(name).kind == "index":
        second[1] = -100
    options = OPTIONS[name][-1]
    want_loss, want_grad = _c_rows(name, storage, logits, second, alpha, scale, options)
    losses, grad, bad, agreed = run_harness(harness, name, storage, logits, second, alpha=alpha, scale=scale,
                                            options=options, threads=threads, warp_rows=warp_rows)
    tol = 1e-13 if storage == "float64" else 2e-6
    assert bad == -1 and agreed
    np.testing.assert_allclose(losses, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol * np.abs(want_grad).max())
    if definition(name).kind == "index":
        assert losses[1] == 0 and not grad[1].any()


@needs_nvcc
@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", GENERIC)
def test_16_bit_storage_rounds_the_float32_result_once(harness, name, storage):
    """The loss in float32 as the float32 kernel has it; the gradient one rounding from it."""
    rng = np.random.default_rng(4)
    logits, second = _case(rng, name, 3, 50)
    logits16 = _round_to(logits, storage)
    second16 = _round_to(second, storage) if definition(name).kind == "teacher" else second
    losses, grad, _, _ = run_harness(harness, name, storage, logits16, second16)
    want_loss, want_grad = run_harness(harness, name, "float32", logits16, second16)[:2]
    np.testing.assert_array_equal(losses, want_loss)
    spacing = np.spacing(np.abs(want_grad).astype(np.float16 if storage == "float16" else np.float32))
    ulp = spacing.astype(np.float64) * (1 if storage == "float16" else 2.0**16)
    assert (np.abs(grad - want_grad) <= ulp / 2 * (1 + 1e-6) + 1e-30).all()


def _round_to(values, storage):
    """Values as the 16-bit storage holds them (round to nearest even), in float64."""
    if storage == "float16":
        return np.asarray(values).astype(np.float16).astype(np.float64)
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


@needs_nvcc
def test_bad_and_ignored_targets_and_non_finite_rows(harness):
    logits = np.random.default_rng(1).standard_normal((6, 8))
    logits[3, 2] = np.nan
    logits[4, 5] = -np.inf
    logits[5, :] = -np.inf
    target = np.array([1, 9, -100, 2, 0, 0])
    losses, grad, bad, _ = run_harness(harness, "focal", "float32", logits, target)
    assert bad == 1 and np.isnan(grad[1]).all() and np.isnan(losses[1])
    assert losses[2] == 0 and not grad[2].any()
    # A -inf anywhere in a counted row makes it NaN, as in the C kernel and cross-entropy's.
    for row in (3, 4, 5):
        assert np.isnan(losses[row]) and np.isnan(grad[row]).all()
    c_loss, c_grad = _c_rows("focal", "float32", logits[[0]], target[[0]])
    np.testing.assert_allclose(losses[[0]], c_loss, rtol=2e-6)
    np.testing.assert_allclose(grad[[0]], c_grad, rtol=2e-6, atol=1e-7)


@needs_nvcc
@pytest.mark.parametrize("storage", ["float64", "float32"])
@pytest.mark.parametrize(("classes", "threads", "warp_rows"), [(6, 32, True), (40, 32, True), (40, 64, False)])
@pytest.mark.parametrize("name", GENERIC)
def test_a_non_finite_logit_anywhere_makes_its_row_nan(harness, name, storage, classes, threads, warp_rows):
    """-inf, +inf and NaN at the first, a middle and the last class, in the student's logits
    and the teacher's, each in its own row, across a warp's lanes and a block's warps."""
    b = batch(name, classes=classes)
    losses, grad, bad, agreed = run_harness(harness, name, storage, b.logits, b.second,
                                            options=b.options, threads=threads, warp_rows=warp_rows)
    assert bad == -1 and agreed
    check(b, losses, grad, TOLERANCE[storage])


# ---- the launchers through ctypes, and the loader -----------------------------------------------


@pytest.fixture(scope="module")
def launchers():
    if NVCC is None:
        pytest.skip("nvcc not found")
    from gradsmith.codegen.backends.cuda.row_loss_runtime import _launcher

    return lambda name, suffix: _launcher(name, suffix, "sm_80", CUDA_DIR)


@needs_nvcc
@pytest.mark.parametrize("suffix", ["f32", "bf16"])
def test_launchers_refuse_bad_arguments_before_any_launch(launchers, suffix):
    """Status codes as the C kernels', answered without touching a device."""
    fake = ctypes.c_void_p(64)  # never dereferenced: every call below fails its checks first
    focal = launchers("focal", suffix)
    kl = launchers("distill_kl", suffix)

    def options(*values):
        return (ctypes.c_double * len(values))(*values)

    def call(f, logits=fake, second=None, target=fake, n_rows=4, n_classes=10, opts=None, bad_row=fake):
        return f(logits, second, target, None, n_rows, n_classes, opts, -100, fake, fake, fake, bad_row, None)

    assert call(focal, logits=None, opts=options(2.0)) == 1  # GS_ERR_NULL_POINTER
    assert call(focal, target=None, opts=options(2.0)) == 1
    assert call(focal, opts=None) == 1
    assert call(focal, bad_row=None, opts=options(2.0)) == 1
    assert call(kl, second=None, opts=options(1.0)) == 1
    assert call(focal, n_classes=0, opts=options(2.0)) == 2  # GS_ERR_SHAPE
    assert call(focal, n_rows=-1, opts=options(2.0)) == 2
    assert call(focal, n_rows=2**62, n_classes=4, opts=options(2.0)) == 2
    assert call(focal, opts=options(-1.0)) == 4  # GS_ERR_PARAMS
    assert call(focal, opts=options(float("nan"))) == 4
    assert call(focal, opts=options(float("inf"))) == 4
    assert call(kl, second=fake, opts=options(0.0)) == 4
    if not gpu_available():  # valid arguments reach the launch, which has no device here
        assert call(focal, opts=options(2.0)) == 5  # GS_ERR_CUDA


def test_clear_error_without_gpu():
    if gpu_available():
        pytest.skip("a GPU is present")
    for name in GENERIC:
        for storage in STORAGES:  # every storage's dtype name is accepted; the device is missing
            with pytest.raises(ValueError, match="cuda backend needs CuPy and an NVIDIA GPU"):
                load("cuda", storage, loss=name)


@pytest.mark.parametrize(("backend", "dtype", "allowed"), [
    ("cuda", "int8", "'float32', 'float64', 'bfloat16', 'float16'"),
    ("cuda", "bf16", "'float32', 'float64', 'bfloat16', 'float16'"),
    ("c", "bfloat16", "'float32', 'float64')"),
    ("numpy", "float16", "'float32', 'float64')"),
])
def test_the_loaders_name_their_dtypes(backend, dtype, allowed):
    with pytest.raises(ValueError, match=rf"dtype for loss 'focal' on backend '{backend}' must be one of "
                                         rf"\({re.escape(allowed)}"):
        load(backend, dtype, loss="focal")


def _recorded(name, dtype):
    """The shared callable for ``dtype`` around a kernel that records what it is given."""
    from gradsmith.codegen.row_loss_runtime import BACKEND_DTYPES, make_callable

    seen = {}

    def kernel(logits, second, target, alpha, ignore_index, scale, values):
        seen.update(logits=logits, second=second, alpha=alpha, scale=scale)
        return np.arange(1, logits.shape[0] + 1, dtype=scale.dtype), np.zeros_like(logits)

    return make_callable(definition(name), dtype, kernel, BACKEND_DTYPES["cuda"]), seen


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_16_bit_logits_reach_the_kernel_as_given_and_the_rest_in_float32(storage):
    import ml_dtypes  # noqa: F401 -- registers the bfloat16 dtype name with NumPy

    focal, seen = _recorded("focal", storage)
    logits = np.zeros((3, 4), dtype=storage)
    alpha = np.array([0.5, 1, 2, 4], dtype=storage)
    loss, _ = focal(logits, np.array([0, 1, -100]), alpha=alpha, reduction="mean")
    assert seen["logits"].dtype == np.dtype(storage)
    assert seen["alpha"].dtype == np.float32 and seen["alpha"].tolist() == [0.5, 1, 2, 4]
    # The two counted rows share the mean; the ignored row gets no gradient.
    assert seen["scale"].dtype == np.float32 and seen["scale"].tolist() == [0.5, 0.5, 0.0]
    assert loss.dtype == np.float32 and float(loss) == (1 + 2 + 3) / 2
    with pytest.raises(TypeError, match="alpha must be"):
        focal(logits, np.array([0, 1, 2]), alpha=alpha.astype(np.float32))
    with pytest.raises(TypeError, match=rf"logits must be {storage} .*load dtype='float32'"):
        focal(logits.astype(np.float32), np.array([0, 1, 2]))
    kl, seen = _recorded("distill_kl", storage)
    kl(logits, logits, reduction="none", grad_output=np.array([1, 2, 3]))
    assert seen["second"].dtype == np.dtype(storage) and seen["scale"].tolist() == [1, 2, 3]
    with pytest.raises(TypeError, match=rf"teacher_logits must be {storage}"):
        kl(logits, logits.astype(np.float64))


# ---- on a GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("classes", [10, 1000, 5003])
@pytest.mark.parametrize("name", GENERIC)
def test_gpu_kernels_match_the_c_kernels(name, dtype, classes):
    rng = np.random.default_rng(classes)
    logits, second = _case(rng, name, 9, classes)
    logits = logits.astype(dtype)
    found = definition(name)
    if found.kind == "teacher":
        second = second.astype(dtype)
    else:
        second[2] = -100
    alpha = rng.uniform(0.1, 1.0, classes).astype(dtype) if found.class_weights else None
    extra = {} if alpha is None else {"alpha": alpha}
    tol = 1e-12 if dtype == "float64" else 2e-5
    for reduction in [r.name for r in found.reductions]:
        grad_output = rng.uniform(0.5, 2.0, 9).astype(dtype) if reduction == "none" else None
        options = OPTIONS[name][-1]
        got = load("cuda", dtype, loss=name)(logits, second, reduction=reduction, grad_output=grad_output,
                                             **extra, **options)
        want = load("c", dtype, loss=name)(logits, second, reduction=reduction, grad_output=grad_output,
                                           **extra, **options)
        for ours, theirs in zip(got, want, strict=True):
            assert ours.dtype == theirs.dtype
            np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(1.0, np.abs(theirs).max()))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", GENERIC)
def test_gpu_16_bit_loader_matches_the_float32_c_kernel_on_the_rounded_inputs(name, storage):
    import ml_dtypes

    rng = np.random.default_rng(7)
    logits, second = _case(rng, name, 9, 300)
    found = definition(name)
    numpy_storage = ml_dtypes.bfloat16 if storage == "bfloat16" else np.float16
    logits16 = logits.astype(numpy_storage)
    second16 = second.astype(numpy_storage) if found.kind == "teacher" else second
    rounded = second16.astype(np.float32) if found.kind == "teacher" else second
    for reduction in [r.name for r in found.reductions]:
        loss, grad = load("cuda", storage, loss=name)(logits16, second16, reduction=reduction,
                                                      **OPTIONS[name][-1])
        want_loss, want_grad = load("c", "float32", loss=name)(
            logits16.astype(np.float32), rounded, reduction=reduction, **OPTIONS[name][-1])
        assert loss.dtype == np.float32 and grad.dtype == np.dtype(numpy_storage)
        np.testing.assert_allclose(loss, want_loss, rtol=2e-5, atol=2e-6)
        spacing = 2.0**-7 if storage == "bfloat16" else 2.0**-10
        np.testing.assert_allclose(grad.astype(np.float32), want_grad, rtol=spacing, atol=1e-6)


@pytest.mark.gpu
@gpu
def test_gpu_bad_target_and_empty_batch():
    """The loader's bad target is refused by make_callable's host check, before any launch (the
    kernel's *bad_row is not read back); the device's own bad_row is checked below."""
    focal = load("cuda", "float32", loss="focal")
    with pytest.raises(ValueError, match=r"target\[1\] = 3"):
        focal(np.zeros((2, 3), np.float32), np.array([0, 3]))
    loss, grad = focal(np.zeros((0, 5), np.float32), np.zeros(0, np.int64), reduction="sum")
    assert float(loss) == 0 and grad.shape == (0, 5)


@pytest.mark.gpu
@gpu
def test_gpu_kernel_reports_the_first_bad_row_and_fills_it_with_nan():
    """The launcher called directly through CuPy, no host check: the kernel's atomicMin gives
    the first of the bad rows, which are NaN, while ignored rows are 0 and the others finite."""
    import cupy
    from gradsmith.codegen.backends.cuda.row_loss_runtime import _launcher

    arch = f"sm_{cupy.cuda.Device().compute_capability}"
    for classes in (10, 5003):  # warp-owned rows, block-owned rows
        focal = _launcher("focal", "f32", arch, CUDA_DIR)
        n_rows = 40
        logits = cupy.asarray(np.random.default_rng(classes).normal(size=(n_rows, classes)), cupy.float32)
        target = cupy.zeros(n_rows, cupy.int64)
        target[[7, 30]] = classes
        target[25] = -1
        target[3] = -100
        scale = cupy.ones(n_rows, cupy.float32)
        loss = cupy.empty(n_rows, cupy.float32)
        grad = cupy.empty_like(logits)
        bad_row = cupy.full(1, 12345, cupy.int64)
        options = (ctypes.c_double * 1)(2.0)
        status = focal(logits.data.ptr, None, target.data.ptr, None, n_rows, classes, options, -100,
                       scale.data.ptr, loss.data.ptr, grad.data.ptr, bad_row.data.ptr,
                       cupy.cuda.get_current_stream().ptr)
        assert status == 0
        assert int(bad_row.get()[0]) == 7
        loss, grad = loss.get(), grad.get()
        assert np.isnan(loss[[7, 25, 30]]).all() and np.isnan(grad[[7, 25, 30]]).all()
        assert loss[3] == 0 and (grad[3] == 0).all()
        good = np.setdiff1d(np.arange(n_rows), [3, 7, 25, 30])
        assert np.isfinite(loss[good]).all() and np.isfinite(grad[good]).all()
