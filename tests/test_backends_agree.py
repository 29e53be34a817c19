"""Property tests: every available backend agrees with the others, with the mpmath reference,
and (float64) with central finite differences of its own loss.

Tolerances: against the reference, conftest.TOLERANCES for the dtype (float64 rtol 1e-10,
float32 rtol 3e-5); between two backends, twice that (each is within it of the exact value);
gradient against finite differences of the float64 loss, rtol 1e-6 and atol 1e-7 of the
largest gradient entry plus 1e-8 of the loss magnitude (h = 1e-6 max(1, |z|): truncation ~h^2,
rounding ~1e-16 |loss| / h).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import HOST_DTYPES, assert_close, available_backends, call_backend, to_numpy
from gradsmith.codegen.backends.c.context import SHORT_CLASSES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import finite_difference_grad, reference_cross_entropy

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _natural_scale(exact) -> np.ndarray:
    """Inputs here are O(1) (grad_output too), so absolute errors are judged on a scale of at
    least 1: an exact gradient of 3.7e-24 (a saturated softcap) computed as 0 is right."""
    return np.append(np.abs(np.asarray(exact, dtype=np.float64)).ravel(), 1.0)


@st.composite
def cases(draw, max_logit_scale: float = 1e4):
    """Random inputs and options of the callable, small enough for the mpmath reference."""
    n = draw(st.integers(0, 6))
    classes = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([s for s in (0.1, 3.0, 30.0, 1e4) if s <= max_logit_scale]))
    logits = rng.normal(scale=scale, size=(n, classes))
    kind = draw(st.sampled_from(["index", "probs"]))
    # PyTorch refuses ignore_index with probability targets; so does every backend.
    ignore_index = draw(st.sampled_from([-100, 0])) if kind == "index" else -100
    if kind == "index":
        target = rng.integers(0, classes, size=n).astype(np.int64)
        if ignore_index == -100:
            target[rng.random(n) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = -100
    else:
        target = rng.dirichlet(np.full(classes, 0.5), size=n) if n else np.zeros((0, classes))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    weight = None
    if draw(st.booleans()):
        weight = rng.uniform(0.0, 2.0, size=classes)
        weight[rng.random(classes) < 0.2] = 0.0
    if reduction == "none":
        grad_output = rng.normal(size=n) if draw(st.booleans()) else None
    else:
        grad_output = draw(st.sampled_from([None, 0.5, -2.0]))
    options = {
        "weight": weight,
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        "lse_square_scale": draw(st.sampled_from([0.0, 1e-4, 0.05])),
        "softcap": draw(st.sampled_from([None, 1.0, 15.0])),
        "grad_output": grad_output,
        "return_lse": draw(st.booleans()),
    }
    return logits, target, options


@pytest.mark.parametrize("dtype", HOST_DTYPES)
def test_backends_agree_with_each_other_and_the_reference(dtype):
    backends = available_backends(dtype)
    if not backends:
        pytest.skip(f"no backend loads for {dtype}")

    @SETTINGS
    @given(case=cases())
    def check(case):
        logits, target, options = case
        results = {}
        for name, function in backends.items():
            outputs, (seen_logits, seen_target, seen_options) = call_backend(
                function, logits, target, dtype, **options
            )
            expected = reference_cross_entropy(seen_logits, seen_target, **seen_options)
            for label, actual, wanted in zip(("loss", "dlogits", "lse"), outputs, expected):
                assert_close(actual, wanted, dtype, f"{name} {label} vs reference",
                             scale_of=_natural_scale(wanted))
            results[name] = outputs
        for (first, a), (second, b) in itertools.combinations(results.items(), 2):
            for label, x, y, exact in zip(("loss", "dlogits", "lse"), a, b, expected):
                assert_close(x, y, dtype, f"{first} vs {second} {label}", factor=2.0,
                             scale_of=_natural_scale(exact))

    check()


def test_gradients_match_finite_differences():
    backends = available_backends("float64")
    if not backends:
        pytest.skip("no backend loads for float64")

    @settings(SETTINGS, max_examples=25)
    @given(case=cases(max_logit_scale=30.0))
    def check(case):
        logits, target, options = case
        options = {**options, "return_lse": False}
        weights = options["grad_output"]
        for name, function in backends.items():

            def weighted_rows(z, function=function):
                value = to_numpy(function(z, target, **options)[0])
                return value * (1.0 if weights is None else np.asarray(weights))

            rows = weighted_rows(logits)
            if not np.isfinite(rows).all():
                continue  # 0/0 means (every row ignored, zero total weight) have no derivative
            expected = finite_difference_grad(lambda z: np.sum(weighted_rows(z)), logits)
            actual = to_numpy(function(logits, target, **options)[1])
            # Rounding of the loss, divided by the step, bounds what differences can resolve.
            resolution = 1e-8 * float(np.sum(np.abs(rows)))
            scale = float(np.abs(actual).max(initial=0.0))
            np.testing.assert_allclose(
                actual, expected, rtol=1e-6, atol=1e-7 * scale + resolution, err_msg=f"{name} vs FD"
            )

    check()


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("dtype, margin", [("float32", 20.0), ("float64", 45.0)])
@pytest.mark.parametrize("classes", [2, 4, 10, *sorted({c for t in SHORT_CLASSES.values()
                                                          for c in (t, t + 1)}), 300, 1100])
def test_a_confident_row_keeps_its_target_gradient(backend, dtype, margin, classes):
    """p_t - 1 where p_t rounds to 1 in the kernel's type (every other class `margin` below the
    target), on both sides of the C kernels' short-row thresholds (SHORT_CLASSES, per dtype),
    and over three chunks of the long rows (the target's chunk keeps the split's count):
    its relative error stays within 64 units of the last place, most of it the rounding of
    logit - max (p_t - 1 from a rounded p_t would be 0)."""
    f = available_backends(dtype).get(backend)
    if f is None:
        pytest.skip(f"backend {backend} is not usable here")
    rng = np.random.default_rng(21)
    n = 69  # two full segments of 32 rows and a partial one
    logits = rng.standard_normal((n, classes)).astype(dtype)
    target = rng.integers(0, classes, n)
    logits[np.arange(n), target] += margin
    _, dlogits = f(logits, target, reduction="sum")
    exact = logits.astype(np.float64)
    terms = np.exp(exact - exact.max(axis=1, keepdims=True))
    others = np.where(np.arange(classes) == target[:, None], 0.0, terms).sum(axis=1)
    expected = -others / terms.sum(axis=1)
    actual = to_numpy(dlogits)[np.arange(n), target]
    assert np.all(expected < 0) and np.all(actual < 0), actual.max()
    relative = np.abs(actual - expected) / np.abs(expected)
    assert relative.max() <= 64 * np.finfo(dtype).eps / 2, relative.max()

