"""Focal loss and distillation KL from their definitions: every backend and dtype against
PyTorch autograd of the definition, a 40-digit mpmath reference and finite differences."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from gradsmith import load
from gradsmith.codegen.cli import main
from gradsmith.derive.losses import definition
from gradsmith.derive.row_loss import RowLossError, fit
from gradsmith.derive.row_loss_proofs import prove

torch = pytest.importorskip("torch")
F = torch.nn.functional

BACKENDS = ("numpy", "c")
DTYPES = ("float32", "float64")
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_focal(z, t, gamma, alpha, ignore_index, reduction, dtype=torch.float64):
    """The focal loss by its definition in torch, differentiated by autograd."""
    logits = torch.tensor(z, dtype=dtype, requires_grad=True)
    target = torch.tensor(t)
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)
    log_p_t = F.log_softmax(logits, -1).gather(1, safe[:, None])[:, 0]
    weights = torch.ones(z.shape[1], dtype=dtype) if alpha is None else torch.tensor(alpha, dtype=dtype)
    rows = torch.where(keep, -weights[safe] * (1 - log_p_t.exp()) ** gamma * log_p_t, 0)
    out = {"mean": rows.sum() / keep.sum(), "sum": rows.sum(), "none": rows}[reduction]
    return out, logits


def torch_kl(z, u, temperature, reduction, dtype=torch.float64):
    logits = torch.tensor(z, dtype=dtype, requires_grad=True)
    teacher = torch.tensor(u, dtype=dtype)
    out = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher / temperature, -1),
                   log_target=True, reduction="sum" if reduction == "none" else reduction)
    if reduction == "none":
        out = (F.kl_div(F.log_softmax(logits / temperature, -1),
                        F.log_softmax(teacher / temperature, -1), log_target=True,
                        reduction="none")).sum(1)
    return out * temperature**2, logits


def torch_result(out, logits, grad_output):
    out.backward(torch.as_tensor(grad_output, dtype=out.dtype) if grad_output is not None
                 else torch.ones_like(out))
    return out.detach().numpy(), logits.grad.numpy()


def error_bound(dtype, torch_low, exact):
    """Float64 to 1e-12; float32 no worse than torch's own float32 error, with a floor."""
    if dtype == "float64":
        return 1e-12 * (1 + np.abs(exact).max())
    return max(4 * np.abs(torch_low - exact).max(), 1e-6 * (1 + np.abs(exact).max()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_matches_torch_autograd(backend, dtype, reduction, weighted):
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((9, 6)) * 3).astype(dtype)
    t = rng.integers(0, 6, 9)
    t[[2, 5]] = -100
    alpha = rng.uniform(0.1, 1.0, 6).astype(dtype) if weighted else None
    grad_output = rng.uniform(0.5, 2.0, 9).astype(dtype) if reduction == "none" else None
    loss, dlogits = load(backend, dtype, loss="focal")(z, t, gamma=1.5, alpha=alpha,
                                                        reduction=reduction,
                                                        grad_output=grad_output)
    exact = torch_result(*torch_focal(z, t, 1.5, alpha, -100, reduction), grad_output)
    low = torch_result(*torch_focal(z, t, 1.5, alpha, -100, reduction, TORCH_DTYPES[dtype]),
                       grad_output)
    assert loss.dtype == dtype and dlogits.dtype == dtype
    for ours, want, theirs in zip((loss, dlogits), exact, low, strict=True):
        assert np.abs(ours - want).max() <= error_bound(dtype, theirs, want)
    assert not dlogits[[2, 5]].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_distill_kl_matches_torch_kl_div(backend, dtype, reduction):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((8, 7)) * 4).astype(dtype)
    u = (rng.standard_normal((8, 7)) * 4).astype(dtype)
    grad_output = rng.uniform(0.5, 2.0, 8).astype(dtype) if reduction == "none" else None
    loss, dlogits = load(backend, dtype, loss="distill_kl")(z, u, temperature=2.5,
                                                             reduction=reduction,
                                                             grad_output=grad_output)
    exact = torch_result(*torch_kl(z, u, 2.5, reduction), grad_output)
    low = torch_result(*torch_kl(z, u, 2.5, reduction, TORCH_DTYPES[dtype]), grad_output)
    for ours, want, theirs in zip((loss, dlogits), exact, low, strict=True):
        assert np.abs(ours - want).max() <= error_bound(dtype, theirs, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["focal", "distill_kl"])
def test_short_rows_in_lanes_match_torch_in_whole_and_partial_segments(name, dtype):
    """75 rows (two whole segments of 32 rows and a part of one) at class counts on both sides
    of the C kernels' limit for their lanes, with ignored rows, class weights and a gradient
    per row, against torch autograd of the definition."""
    from gradsmith.codegen.row_loss import LANE_CLASSES

    found = definition(name)
    limit = LANE_CLASSES[found.kind, dtype]
    rng = np.random.default_rng(limit)
    function = load("c", dtype, loss=name)
    # One class only with class targets: a teacher's one-class row has KL 0, which C's float32
    # misses by an ulp of z / T (gcc fuses the gradient sweep's z * (1 / T) - max, one rounding
    # fewer than the maximum's).
    for classes in sorted({1 if found.kind == "index" else 2, 4, 10, limit, limit + 1}):
        z = (rng.standard_normal((75, classes)) * 3).astype(dtype)
        grad_output = rng.uniform(0.5, 2.0, 75).astype(dtype)
        if found.kind == "teacher":
            u = (rng.standard_normal((75, classes)) * 3).astype(dtype)
            loss, dlogits = function(z, u, temperature=2.5, reduction="none",
                                     grad_output=grad_output)
            exact, low = (torch_result(*torch_kl(z, u, 2.5, "none", d), grad_output)
                          for d in (torch.float64, TORCH_DTYPES[dtype]))
        else:
            t = rng.integers(0, classes, 75)
            t[[0, 31, 40, 74]] = -100
            alpha = rng.uniform(0.1, 1.0, classes).astype(dtype)
            loss, dlogits = function(z, t, gamma=1.5, alpha=alpha, reduction="none",
                                     grad_output=grad_output)
            exact, low = (torch_result(*torch_focal(z, t, 1.5, alpha, -100, "none", d),
                                       grad_output)
                          for d in (torch.float64, TORCH_DTYPES[dtype]))
            assert not dlogits[[0, 31, 40, 74]].any() and not loss[[0, 31, 40, 74]].any()
        for ours, want, theirs in zip((loss, dlogits), exact, low, strict=True):
            assert np.abs(ours - want).max() <= error_bound(dtype, theirs, want), classes


@pytest.mark.parametrize("name", ["focal", "distill_kl"])
def test_the_lanes_give_the_same_bits_with_element_transposes_and_threads(name, tmp_path):
    """Whole segments move through vector squares where the compiler has vector shuffles and
    through element loops with GS_NO_VECTOR_SHUFFLES, on one thread or on OpenMP's team: no
    sum in the lanes crosses rows, so every build gives the same bits, at class counts below,
    at and between multiples of the vector width and at the lanes' limit.  (Past it, rows one
    at a time sum in SIMD lanes, in an order the build fixes.)"""
    import ctypes
    import subprocess

    from gradsmith.codegen.backends.c import build
    from gradsmith.codegen.loading import shipped_kernels
    from gradsmith.codegen.row_loss import LANE_CLASSES, c_path
    from gradsmith.codegen.row_loss_runtime import bind_c, build_c

    found = definition(name)
    source = shipped_kernels() / c_path(name)
    # The shipped build (vector shuffles, OpenMP), and element loops on one thread.
    target = tmp_path / f"{name}.so"
    command = [*build.compiler(), *build.base_flags(build.compiler()), *build.SIMD_FLAGS,
               "-DGS_NO_VECTOR_SHUFFLES", "-o", str(target), str(source), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    libraries = [ctypes.CDLL(str(build_c(name, shipped_kernels()))), ctypes.CDLL(str(target))]
    rng = np.random.default_rng(9)
    options = [2.0] if found.kind == "index" else [1.5]
    for dtype in DTYPES:
        kernels = [bind_c(library, found, dtype) for library in libraries]
        limit = LANE_CLASSES[found.kind, dtype]
        for classes in sorted(c for c in {2, 3, 4, 5, 8, 9, 10, 16, 17, limit} if c <= limit):
            rows = 3 * 32 + 5
            z = (rng.standard_normal((rows, classes)) * 3).astype(dtype)
            second, target = (z * 0.5, None) if found.kind == "teacher" else (None, rng.integers(0, classes, rows))
            scale = rng.uniform(0.5, 2.0, rows).astype(dtype)
            results = [kernel(z, second, target, None, -100, scale, options) for kernel in kernels]
            for loss, grad in results[1:]:
                assert np.array_equal(loss, results[0][0]), (dtype, classes)
                assert np.array_equal(grad, results[0][1]), (dtype, classes)


def _mp_log_softmax(row, scale):
    scaled = [mpmath.mpf(v) * scale for v in row]
    top = max(scaled)
    log_sum = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in scaled))
    return [v - log_sum for v in scaled]


def mp_focal_row(row, target, gamma, alpha_t=1):
    log_p = _mp_log_softmax(row, 1)[target]
    return -alpha_t * (1 - mpmath.exp(log_p)) ** gamma * log_p


def mp_kl_row(row, teacher, temperature):
    log_p = _mp_log_softmax(row, 1 / mpmath.mpf(temperature))
    log_q = _mp_log_softmax(teacher, 1 / mpmath.mpf(temperature))
    return temperature**2 * mpmath.fsum(mpmath.exp(b) * (b - a) for a, b in zip(log_p, log_q))


def mp_gradient(function, row):
    """Central differences of a row function at 40 digits (error far below float64's)."""
    with mpmath.workdps(40):
        step = mpmath.mpf("1e-15")
        grad = []
        for c in range(len(row)):
            up = [mpmath.mpf(float(v)) for v in row]
            down = list(up)
            up[c] += step
            down[c] -= step
            grad.append((function(up) - function(down)) / (2 * step))
        return grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_focal_and_kl_match_the_mpmath_reference(backend):
    rng = np.random.default_rng(11)
    z = rng.standard_normal((3, 5)) * 2
    u = rng.standard_normal((3, 5)) * 2
    t = np.array([0, 4, 2])
    focal = load(backend, "float64", loss="focal")
    kl = load(backend, "float64", loss="distill_kl")
    with mpmath.workdps(40):
        losses, grads = focal(z, t, gamma=2.0, reduction="none")
        for n in range(3):
            assert losses[n] == pytest.approx(float(mp_focal_row(z[n], t[n], 2)), rel=1e-13)
            want = mp_gradient(lambda r, n=n: mp_focal_row(r, t[n], 2), z[n])
            np.testing.assert_allclose(grads[n], [float(g) for g in want], rtol=1e-11, atol=1e-14)
        losses, grads = kl(z, u, temperature=1.5, reduction="none")
        for n in range(3):
            assert losses[n] == pytest.approx(float(mp_kl_row(z[n], u[n], 1.5)), rel=1e-12)
            want = mp_gradient(lambda r, n=n: mp_kl_row(r, u[n], 1.5), z[n])
            np.testing.assert_allclose(grads[n], [float(g) for g in want], rtol=1e-11, atol=1e-14)


def test_finite_differences_of_the_kernels_themselves():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((2, 4))
    t = np.array([1, 3])
    focal = load("c", "float64", loss="focal")
    _, grad = focal(z, t, gamma=0.7, reduction="sum")
    step = 1e-6
    for n, c in [(0, 0), (0, 1), (1, 3)]:
        up, down = z.copy(), z.copy()
        up[n, c] += step
        down[n, c] -= step
        numeric = (focal(up, t, gamma=0.7, reduction="sum")[0]
                   - focal(down, t, gamma=0.7, reduction="sum")[0]) / (2 * step)
        assert grad[n, c] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_focal_is_exact_for_huge_logits_and_near_certain_targets(backend):
    """1 - p_t = 8.2e-9 at logits of 1e4: the naive 1 - p_t rounds to 0 or 1.1e-8 in float64."""
    focal = load(backend, "float64", loss="focal")
    z = np.array([[1e4, 1e4 - 20, 1e4 - 20, 1e4 - 20, 1e4 - 20]])
    loss, grad = focal(z, np.array([0]), gamma=2.0, reduction="sum")
    with mpmath.workdps(40):
        want = mp_focal_row(z[0], 0, 2)
        want_grad = mp_gradient(lambda r: mp_focal_row(r, 0, 2), z[0])
    assert float(loss) == pytest.approx(float(want), rel=1e-9, abs=0)
    np.testing.assert_allclose(grad[0], [float(g) for g in want_grad], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_focal_float32_near_certain_targets_are_no_worse_than_torch(backend):
    z = np.array([[1e4, 1e4 - 9, 1e4 - 9, 1e4 - 9], [3.0, -20.0, -20.0, -20.0]], dtype="float32")
    t = np.array([0, 0])
    loss, grad = load(backend, "float32", loss="focal")(z, t, gamma=2.0, reduction="none")
    exact = torch_result(*torch_focal(z, t, 2.0, None, -100, "none"), None)
    low = torch_result(*torch_focal(z, t, 2.0, None, -100, "none", torch.float32), None)
    assert np.isfinite(grad).all()
    for ours, want, theirs in zip((loss, grad), exact, low, strict=True):
        assert np.abs(ours - want).max() <= max(4 * np.abs(theirs - want).max(), 1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distill_kl_is_exact_for_huge_logits(backend):
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((4, 6)) * 3 + 1e4).astype("float32")
    u = (rng.standard_normal((4, 6)) * 3 - 1e4).astype("float32")
    loss, grad = load(backend, "float32", loss="distill_kl")(z, u, temperature=2.0)
    # Shifting every row leaves the loss unchanged: the small logits give the same answer.
    small_loss, small_grad = load(backend, "float64", loss="distill_kl")(
        z.astype(np.float64) - 1e4, u.astype(np.float64) + 1e4, temperature=2.0)
    assert float(loss) == pytest.approx(float(small_loss), rel=1e-5)
    np.testing.assert_allclose(grad, small_grad, atol=1e-6)


def test_the_teacher_gets_no_gradient_and_the_shapes_must_agree():
    kl = load("numpy", "float64", loss="distill_kl")
    z, u = np.zeros((2, 3)), np.ones((2, 3))
    assert len(kl(z, u)) == 2  # (loss, d loss / d student): nothing for the teacher
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        kl(z, np.ones((2, 4)))


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"gamma": -1.0}, ValueError, "gamma"),
    ({"gamma": float("nan")}, ValueError, "gamma"),
    ({"gamma": "2"}, TypeError, "gamma"),
    ({"beta": 1.0}, TypeError, "no option 'beta'"),
    ({"reduction": "batchmean"}, ValueError, "reduction"),
    ({"alpha": np.ones(4)}, ValueError, "alpha"),
])
def test_focal_bad_options_name_the_argument(options, error, match):
    focal = load("numpy", "float64", loss="focal")
    with pytest.raises(error, match=match):
        focal(np.zeros((2, 3)), np.array([0, 1]), **options)


def test_focal_bad_targets_name_the_row():
    for backend in BACKENDS:
        with pytest.raises(ValueError, match=r"target\[1\] = 3"):
            load(backend, "float64", loss="focal")(np.zeros((2, 3)), np.array([0, 3]))


def test_distill_kl_temperature_must_be_positive():
    kl = load("c", "float64", loss="distill_kl")
    with pytest.raises(ValueError, match="temperature"):
        kl(np.zeros((2, 3)), np.zeros((2, 3)), temperature=0.0)


def test_focal_claims_include_gamma_zero_and_the_closed_form():
    names = [claim.name for claim in prove(definition("focal"), definition)]
    assert "focal: gamma = 0 gives cross-entropy" in names
    assert any("(1 - p_t)^(gamma - 1)" in name for name in names)
    assert "-expm1(log p_t) = 1 - p_t" in names
    assert "log p_t / (1 - p_t) at p_t = 1 is its limit, -1" in names


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_is_finite_where_the_target_takes_all_the_probability(backend, dtype, gamma):
    """Rows whose log p_t is 0 in the dtype (1 - p_t = 0) or close to it: there (1 - p_t)^(gamma
    - 1) alone is infinite for gamma < 1 (or overflows), while the gradient tends to 0.  At
    gamma = 0 focal loss is cross-entropy, gradient and all."""
    logits = np.array([[800.0, 0.0, 0.0], [200.0, 0.0, 0.0], [100.0, 0.0, 0.0], [40.0, 0.0, 1.0],
                       [2.0, 1.0, 0.0]], dtype=dtype)
    target = np.array([0, 0, 0, 0, 0])
    loss, grad = load(backend, dtype, loss="focal")(logits, target, gamma=gamma, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(grad).all(), (loss, grad)
    if gamma == 0.0:
        ce_loss, ce_grad = load("c", dtype)(logits, target, reduction="none")
        tolerance = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(loss, ce_loss, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(grad, ce_grad, rtol=tolerance, atol=tolerance)


def test_the_ratio_that_replaces_the_lowered_power_is_its_limit_at_p_t_one():
    import sympy as sp
    from gradsmith.derive import row_loss as rl
    from gradsmith.derive.check import ProofError
    from gradsmith.derive.row_loss_proofs import _ratio_at_one

    spec = rl.kernel_spec(definition("focal"))
    gamma = definition("focal").option_symbols()["gamma"]
    powers = {power.exp for _, value in spec.row_values for power in value.atoms(sp.Pow)
              if power.base == rl.one_minus_p_target}
    assert powers == {gamma}  # (1 - p_t)^(gamma - 1) is gone: infinite at p_t = 1
    ratio = dict(spec.row_values)[rl.log_p_target_ratio]
    assert _ratio_at_one(ratio).method == "symbolic"
    wrong = sp.Piecewise((0, sp.Eq(rl.log_p_target, 0)), (ratio.args[-1][0], True))
    with pytest.raises(ProofError, match="limit|tends"):
        _ratio_at_one(wrong)


def test_a_definition_outside_the_shape_is_refused_by_name(tmp_path):
    path = "tests/losses/not_a_row_loss.py"
    with pytest.raises(RowLossError, match="logit"):
        fit(definition(path))
    assert main(["generate", "--out", str(tmp_path), "--loss", path, "--backends", "numpy"]) == 2
    assert not any(tmp_path.rglob("*logit_penalty*"))


def test_prove_and_latex_take_a_loss(capsys):
    assert main(["prove", "--loss", "distill_kl"]) == 0
    out = capsys.readouterr().out
    assert "distill_kl: dL/dz_j = T (p_j - q_j)." in out and "fails" not in out
    assert main(["latex", "--loss", "focal", "--format", "md"]) == 0
    assert "expm1" in capsys.readouterr().out
    assert main(["prove", "--loss", "no_such_loss"]) == 2


def test_bench_times_a_loss_beside_torch():
    from gradsmith.codegen.bench import losses

    report = losses.run("distill_kl", ((16, 5),), repeat=1, warmup=0, peers=("torch-eager",))
    (row,) = report["rows"]
    assert set(row["ms"]) == {"numpy", "c", "torch-eager"}
    assert all(ms > 0 for ms in row["ms"].values())
    table = losses.format_report(report)
    assert "machine:" in table and "vs eager" in table and "16x5" in table


def test_a_busy_loss_bench_times_the_kernel_beside_itself_on_one_thread():
    from gradsmith.codegen.bench import losses

    report = losses.run("focal", ((40, 6),), repeat=1, warmup=0, busy=True)
    (row,) = report["rows"]
    assert set(row["ms"]) == {"numpy", "c", "c-1thread"} and not row["skipped"]
    # The one-thread call gives the kernel's own loss: the same rows, the same bits.
    assert row["loss"]["c-1thread"] == row["loss"]["c"]
    table = losses.format_report(report)
    assert "busy:" in table and "vs 1thread" in table and "torch" not in table.split("\n", 2)[2]


def test_a_wrong_closed_form_is_refused():
    import dataclasses

    import sympy as sp
    from gradsmith.derive.check import ProofError

    focal = definition("focal")

    def by_hand(row, gamma):  # the usual slip: the gamma term's sign flipped
        j = sp.Symbol("j", integer=True, nonnegative=True)
        p_t, log_p_t = row.p(row.t), row.log_p(row.t)
        factor = (1 - p_t) ** gamma + gamma * (1 - p_t) ** (gamma - 1) * p_t * log_p_t
        return row.alpha(row.t) * factor * (row.p(j) - sp.KroneckerDelta(j, row.t))

    with pytest.raises(ProofError, match="closed form"):
        prove(dataclasses.replace(focal, closed_form=by_hand), definition)


@pytest.mark.parametrize("argv", [
    ["prove", "--loss", "nope"],
    ["latex", "--loss", "missing.py"],
    ["generate", "--loss", "missing.py", "--check"],
    ["bench", "--loss", "nope"],
    ["bench", "--loss", "focal", "--shapes", "3y4"],
    ["validate", "--loss", "nope"],
    ["prove", "--loss", "tests/losses/not_a_row_loss.py"],
])
def test_bad_loss_arguments_are_one_line_and_exit_two(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and "Traceback" not in captured.err


def test_the_sweeps_run_on_the_proven_fast_exp():
    """The C sweeps call the proven exp (its domain x <= 0 is a claim of every loss) and
    float32 stays within a few ulps of the 40-digit reference."""
    from gradsmith.codegen.loading import shipped_kernels
    from gradsmith.derive.fast_exp import exp_approximation

    for name in ("focal", "distill_kl"):
        claims = {claim.name: claim for claim in prove(definition(name), definition)}
        assert claims["fast exp domain: every exponent of the sweeps is <= 0"].verdict.method == "symbolic"
        source = (shipped_kernels() / "c" / f"gradsmith_{name}.c").read_text()
        assert "gs_exp_f32(log_p)" in source and "expf(log_p)" not in source
    rng = np.random.default_rng(12)
    z = (rng.standard_normal((4, 6)) * 3).astype("float32")
    u = (rng.standard_normal((4, 6)) * 3).astype("float32")
    t = np.array([0, 5, 2, 3])
    ulp = float(np.finfo(np.float32).eps)
    assert float(exp_approximation("float32").claimed_relative_error) <= 2 * ulp
    focal_loss, focal_grad = load("c", "float32", loss="focal")(z, t, gamma=2.0, reduction="none")
    kl_loss, kl_grad = load("c", "float32", loss="distill_kl")(z, u, temperature=1.5,
                                                               reduction="none")
    with mpmath.workdps(40):
        for n in range(4):
            row, teacher = [float(v) for v in z[n]], [float(v) for v in u[n]]
            for loss, grad, function in (
                    (focal_loss, focal_grad, lambda r, n=n: mp_focal_row(r, t[n], 2)),
                    (kl_loss, kl_grad, lambda r, teacher=teacher: mp_kl_row(r, teacher, 1.5))):
                assert loss[n] == pytest.approx(float(function(row)), rel=64 * ulp, abs=ulp)
                want = [float(g) for g in mp_gradient(function, row)]
                np.testing.assert_allclose(grad[n], want, rtol=0,
                                           atol=64 * ulp * (1 + max(map(abs, want))))


def test_the_two_pass_split_is_proven_and_a_wrong_one_refused():
    """The C sweeps count the maximum's elements and sum the rest; leaving the maximum's own 1
    in the sum, or counting a tie at the maximum once, is the slip the proof must catch."""
    import dataclasses

    import sympy as sp
    from gradsmith.derive import row_loss as rl
    from gradsmith.derive.check import ProofError
    from gradsmith.derive.row_loss_proofs import _two_pass

    spec = rl.kernel_spec(definition("focal"))
    assert _two_pass(spec).method == "symbolic"
    for wrong in ({"normalizer_top_excess": rl.top_count},
                  {"normalizer_top_excess": sp.Integer(0)},
                  {"normalizer_rest_term": rl.NORMALIZER_TERM}):
        with pytest.raises(ProofError):
            _two_pass(dataclasses.replace(spec, **wrong))


def test_an_exponent_outside_the_fast_exp_domain_is_refused():
    import dataclasses

    import sympy as sp
    from gradsmith.derive import row_loss as rl
    from gradsmith.derive.check import ProofError
    from gradsmith.derive.row_loss_proofs import _sweep_exponents

    spec = rl.kernel_spec(definition("focal"))
    flipped = dataclasses.replace(spec, normalizer_term=sp.exp(rl.row_max - rl.scaled))
    with pytest.raises(ProofError, match="fast exp's domain"):
        _sweep_exponents(flipped)
    unshifted = dataclasses.replace(spec, element_values=(
        (rl.shifted_p, rl.logit), *spec.element_values[1:]))
    with pytest.raises(ProofError, match="log_p"):
        _sweep_exponents(unshifted)


def test_a_gradient_at_the_target_without_coef_target_is_refused(monkeypatch):
    import dataclasses

    from gradsmith.derive import row_loss as rl
    from gradsmith.derive.check import ProofError

    spec = rl.kernel_spec(definition("focal"))
    assert spec.dlogit_at_target is not None and spec.dlogit_at_target != spec.dlogit
    monkeypatch.setattr(rl, "kernel_spec", lambda found: dataclasses.replace(
        spec, dlogit_at_target=spec.dlogit))
    with pytest.raises(ProofError, match="focal gradient"):
        prove(definition("focal"))
