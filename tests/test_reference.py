"""The mpmath reference against PyTorch, finite differences and exact values.

The reference is what every backend is validated against, so it is validated here on its own:
option for option against ``torch.nn.functional.cross_entropy`` with autograd, its gradient
against central differences of its own loss, and at extreme magnitudes against exact values.
The tests named ``test_torch_*`` pin PyTorch behaviours that are easy to get wrong (or where
gradsmith departs from PyTorch), with the values PyTorch 2.13 gives.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from reference import finite_difference_grad, reference_cross_entropy, torch_reference

try:
    import torch  # noqa: F401
except ImportError:
    HAVE_TORCH = False
else:
    HAVE_TORCH = True

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed (optional)")

# Both sides are exact to float64 rounding of the final values.
RTOL, ATOL = 1e-12, 1e-14


def _close(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def _inputs(kind: str, weight_mode: str, n: int = 6, classes: int = 4, seed: int = 7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.5, size=(n, classes))
    if kind == "index":
        target = rng.integers(0, classes, size=n).astype(np.int64)
        target[[1, 4]] = -100
    else:
        target = rng.dirichlet(np.full(classes, 0.7), size=n)
    weight = {
        "none": None,
        "positive": rng.uniform(0.3, 2.0, size=classes),
        "zeros": np.array([0.0, 1.5, 0.0, 0.7])[:classes],
    }[weight_mode]
    return logits, target, weight


GRID = list(
    itertools.product(
        ("index", "probs"),
        ("none", "mean", "sum"),
        ("none", "positive", "zeros"),
        (0.0, 0.15, 1.0),
        ("plain", "z_loss", "softcap", "both"),
    )
)


@needs_torch
@pytest.mark.parametrize("kind,reduction,weight_mode,smoothing,extra", GRID)
def test_reference_matches_torch(kind, reduction, weight_mode, smoothing, extra):
    logits, target, weight = _inputs(kind, weight_mode)
    options = {
        "weight": weight,
        "reduction": reduction,
        "label_smoothing": smoothing,
        "lse_square_scale": 0.03 if extra in ("z_loss", "both") else 0.0,
        "softcap": 2.0 if extra in ("softcap", "both") else None,
        "grad_output": np.linspace(-1.0, 2.0, len(logits)) if reduction == "none" else 0.75,
        "return_lse": True,
    }
    expected = torch_reference(logits, target, **options)
    actual = reference_cross_entropy(logits, target, **options)
    for name, a, e in zip(("loss", "dlogits", "lse"), actual, expected):
        _close(a, e, f"{name} {kind} {reduction} {weight_mode} eps={smoothing} {extra}")


@pytest.mark.parametrize(
    "kind,options",
    [
        ("index", {}),
        ("index", {"weight": [0.5, 2.0, 1.0, 0.0], "label_smoothing": 0.2}),
        ("index", {"reduction": "none", "grad_output": [1.0, -2.0, 0.5, 3.0, 0.0, 1.5]}),
        ("index", {"lse_square_scale": 0.1, "softcap": 1.5, "reduction": "sum"}),
        ("probs", {"weight": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.3}),
        ("probs", {"lse_square_scale": 0.05, "softcap": 3.0}),
    ],
)
def test_reference_gradient_matches_finite_differences(kind, options):
    logits, target, _ = _inputs(kind, "none")
    grad_output = np.asarray(options.get("grad_output", 1.0))

    def loss(z):
        value = reference_cross_entropy(z, target, digits=25, **options)[0]
        return float(np.sum(value * grad_output)) if value.ndim else float(value * grad_output)

    expected = finite_difference_grad(loss, logits)
    actual = reference_cross_entropy(logits, target, **options)[1]
    np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-9)


def test_reference_gradient_sums_to_zero_per_row_without_z_loss():
    logits, target, weight = _inputs("index", "positive")
    _, grad = reference_cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-16)


@pytest.mark.parametrize(
    "dtype,big", [(np.float64, 1e300), (np.float64, 1e200), (np.float32, 1e30)]
)
def test_reference_is_exact_at_huge_logits(dtype, big):
    logits = np.array([[big, 0.0, -big], [big, 0.0, -big], [big, big, 0.0]], dtype=dtype)
    target = np.array([0, 1, 0])
    loss, grad, lse = reference_cross_entropy(
        logits, target, reduction="none", return_lse=True
    )
    big = float(dtype(big))
    np.testing.assert_array_equal(loss, [0.0, big, np.log(2.0)])
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [-0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(lse, [big, big, big + np.log(2.0)])


@needs_torch
def test_torch_agrees_at_huge_logits():
    logits = np.array([[1e300, 0.0, -1e300], [3e299, 1e300, 0.0]])
    target = np.array([0, 2])
    for reduction in ("none", "mean", "sum"):
        expected = torch_reference(logits, target, reduction=reduction)
        actual = reference_cross_entropy(logits, target, reduction=reduction)
        for a, e in zip(actual, expected):
            _close(a, e, f"huge logits {reduction}")


def test_nan_or_plus_inf_row_is_nan_and_others_exact():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3))
    target = np.array([0, 1, 2, 1])
    for bad in (np.nan, np.inf):
        spoiled = logits.copy()
        spoiled[1, 2] = bad
        loss, grad = reference_cross_entropy(spoiled, target, reduction="none")
        clean_loss, clean_grad = reference_cross_entropy(logits, target, reduction="none")
        assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
        keep = [0, 2, 3]
        np.testing.assert_array_equal(loss[keep], clean_loss[keep])
        np.testing.assert_array_equal(grad[keep], clean_grad[keep])
        mean_loss, mean_grad = reference_cross_entropy(spoiled, target)
        assert np.isnan(mean_loss) and np.isnan(mean_grad[1]).all()
        np.testing.assert_allclose(mean_grad[keep], clean_grad[keep] / 4, rtol=1e-15)


def test_minus_inf_logit_is_a_class_of_probability_zero():
    """exp(-inf) = 0: the row's loss is that of the row without the class, and its gradient
    there is 0; at the target the loss is infinite and the gradient p - 1 stays finite.  A row
    of -inf alone is NaN, as PyTorch's loss and gradient, and so is its lse."""
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5))
    target = np.array([0, 2, 4])
    spoiled = logits.copy()
    spoiled[:, 3] = -np.inf
    without = np.delete(logits, 3, axis=1)
    for options in ({}, {"weight": np.linspace(0.5, 2.0, 5), "lse_square_scale": 0.01}):
        reduced = {**options, "weight": np.delete(options["weight"], 3)} if options else options
        loss, grad, lse = reference_cross_entropy(spoiled, target, reduction="none",
                                                  return_lse=True, **options)
        clean_loss, clean_grad, clean_lse = reference_cross_entropy(
            without, np.array([0, 2, 3]), reduction="none", return_lse=True, **reduced)
        np.testing.assert_allclose(loss, clean_loss, rtol=1e-15)
        np.testing.assert_allclose(lse, clean_lse, rtol=1e-15)
        np.testing.assert_allclose(np.delete(grad, 3, axis=1), clean_grad, rtol=1e-15, atol=1e-300)
        assert (grad[:, 3] == 0).all()
    at_target, grad = reference_cross_entropy(spoiled, np.array([3, 3, 3]), reduction="none")
    assert (at_target == np.inf).all() and np.isfinite(grad).all()
    np.testing.assert_allclose(grad[:, 3], -1.0, rtol=1e-15)
    loss, grad, lse = reference_cross_entropy(np.full((1, 4), -np.inf), np.array([1]),
                                              reduction="none", return_lse=True)
    assert np.isnan(loss).all() and np.isnan(grad).all() and np.isnan(lse).all()


def test_edge_shapes():
    loss, grad = reference_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and grad.shape == (0, 3)
    loss, grad = reference_cross_entropy(
        np.zeros((0, 3)), np.zeros(0, dtype=np.int64), reduction="sum"
    )
    assert loss == 0.0 and grad.shape == (0, 3)
    loss, grad = reference_cross_entropy(np.zeros((0, 3)), np.zeros((0, 3)), reduction="none")
    assert loss.shape == (0,) and grad.shape == (0, 3)
    loss, grad = reference_cross_entropy(np.array([[3.0], [-7.0]]), np.array([0, 0]))
    assert loss == 0.0 and np.array_equal(grad, np.zeros((2, 1)))


def test_all_ignored_mean_is_nan_with_zero_gradient():
    logits = np.array([[0.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    target = np.array([-100, -100])
    for options in ({}, {"label_smoothing": 0.2}, {"lse_square_scale": 0.1}):
        loss, grad = reference_cross_entropy(logits, target, **options)
        assert np.isnan(loss)
        np.testing.assert_array_equal(grad, 0.0)
        loss, grad = reference_cross_entropy(logits, target, reduction="sum", **options)
        assert loss == 0.0
        np.testing.assert_array_equal(grad, 0.0)


def test_reference_rejects_bad_target():
    with pytest.raises(ValueError, match="target.*row 1"):
        reference_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


# ---------------------------------------------------------------------------------------------
# PyTorch behaviours worth knowing (observed with torch 2.13.0, float64).


@needs_torch
def test_torch_all_ignored_mean_is_nan_with_zero_gradient():
    logits = np.array([[0.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    target = np.array([-100, -100])
    for options in ({}, {"label_smoothing": 0.2}, {"lse_square_scale": 0.1}):
        loss, grad = torch_reference(logits, target, **options)
        assert np.isnan(loss)
        np.testing.assert_array_equal(grad, 0.0)


@needs_torch
def test_torch_zero_total_weight_mean_gives_nan_gradient():
    # Every counted row has a target of weight 0: the mean is 0/0, and the gradient of each
    # counted row is NaN (0 * (1/0)), ignored rows stay 0.  The reference does the same.
    logits = np.array([[0.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0.5, 0.0, 1.0]])
    target = np.array([0, 0, -100])
    weight = np.array([0.0, 1.0, 2.0])
    for smoothing in (0.0, 0.1):
        expected = torch_reference(logits, target, weight=weight, label_smoothing=smoothing)
        assert np.isnan(expected[0]) and np.isnan(expected[1][:2]).all()
        np.testing.assert_array_equal(expected[1][2], 0.0)
        actual = reference_cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
        for a, e in zip(actual, expected):
            _close(a, e, f"zero total weight eps={smoothing}")


@needs_torch
def test_torch_minus_inf_logits_like_the_reference():
    logits = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [2.0, -np.inf, -1.0]])
    loss, grad = torch_reference(logits[:1], np.array([0]))
    assert loss == pytest.approx(1.3132616875182228, rel=1e-15)
    np.testing.assert_allclose(grad, [[-0.7310585786300049, 0.0, 0.7310585786300049]])
    for target in (np.array([0, 1, 1]), np.array([1, 0, 2])):
        for options in ({}, {"label_smoothing": 0.1}, {"weight": np.array([0.5, 2.0, 1.5])}):
            for reduction in ("none", "sum", "mean"):
                expected = torch_reference(logits, target, reduction=reduction, **options)
                actual = reference_cross_entropy(logits, target, reduction=reduction, **options)
                for a, e in zip(actual, expected):
                    _close(a, e, f"-inf {target} {options} {reduction}")
    smoothed_loss, _ = torch_reference(logits[:1], np.array([0]), label_smoothing=0.1)
    assert smoothed_loss == np.inf  # the smoothing term holds -(-inf)
    probs = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    expected = torch_reference(logits, probs, reduction="none")
    actual = reference_cross_entropy(logits, probs, reduction="none")
    for a, e in zip(actual, expected):  # 0 * -inf: a NaN loss, a finite gradient
        _close(a, e, "-inf with probabilities")


@needs_torch
def test_torch_plus_inf_and_nan_rows_are_nan_like_the_reference():
    logits = np.array([[0.0, np.inf, 1.0], [1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]])
    target = np.array([1, 0, 2])
    expected = torch_reference(logits, target, reduction="none")
    actual = reference_cross_entropy(logits, target, reduction="none")
    for a, e in zip(actual, expected):
        _close(a, e, "non-finite rows")


@needs_torch
def test_torch_nan_in_an_ignored_row_poisons_its_gradient():
    logits = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]])
    target = np.array([-100, 1])
    loss, grad = torch_reference(logits, target)
    assert loss == pytest.approx(1.4076059644443804, rel=1e-15)
    assert np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()
    ref_loss, ref_grad = reference_cross_entropy(logits, target)
    assert ref_loss == pytest.approx(loss, rel=1e-15)
    np.testing.assert_array_equal(ref_grad[0], 0.0)  # gradsmith: ignored rows give zero
    np.testing.assert_allclose(ref_grad[1], grad[1], rtol=1e-14)


@needs_torch
def test_torch_rejects_ignore_index_with_probability_targets():
    import torch

    logits = np.array([[0.0, 1.0, 1.0]])
    probs = np.array([[0.2, 0.3, 0.5]])
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        torch.nn.functional.cross_entropy(
            torch.tensor(logits), torch.tensor(probs), ignore_index=0
        )
    # gradsmith refuses it too (tests/test_torch_parity.py); the reference simply ignores it.


@needs_torch
def test_torch_label_smoothing_one_and_beyond():
    import torch

    logits = np.array([[0.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    target = np.array([0, 1])
    loss, grad = torch_reference(logits, target, label_smoothing=1.0)
    assert loss == pytest.approx(1.3014670509179824, rel=1e-15)
    # With eps = 1 the loss is the smoothing term alone: the target no longer matters.
    other = torch_reference(logits, np.array([2, 0]), label_smoothing=1.0)
    _close(other[0], loss, "eps=1 target-free")
    _close(reference_cross_entropy(logits, target, label_smoothing=1.0)[1], grad, "eps=1")
    with pytest.raises(RuntimeError, match="label_smoothing must be between 0.0 and 1.0"):
        torch.nn.functional.cross_entropy(
            torch.tensor(logits), torch.tensor(target), label_smoothing=1.5
        )


@needs_torch
def test_torch_empty_batch_and_single_class():
    loss, grad = torch_reference(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert np.isnan(loss) and grad.shape == (0, 3)
    loss, grad = torch_reference(np.zeros((0, 3)), np.zeros((0, 3)))
    assert np.isnan(loss) and grad.shape == (0, 3)
    loss, grad = torch_reference(np.array([[3.0], [4.0]]), np.array([0, 0]))
    assert loss == 0.0 and np.array_equal(grad, np.zeros((2, 1)))
