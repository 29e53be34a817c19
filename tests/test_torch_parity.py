"""Every backend against ``torch.nn.functional.cross_entropy`` with autograd, option by option.

PyTorch computes in float64 on exactly the values the backend received (its inputs rounded to
the backend's dtype), so the tolerance is that of the backend's dtype alone (conftest.TOLERANCES:
float64 rtol 1e-10 / atol 1e-12, float32 3e-5 / 3e-6, float16 2e-3 / 1e-3, bfloat16 1.6e-2 /
8e-3, atol relative to the largest expected magnitude).  z-loss and softcapping are compared
with the plain PyTorch expression of their definitions (see ``reference.torch_reference``).
Where gradsmith departs from PyTorch (-inf logits, NaN in ignored rows) the mpmath reference is the yardstick instead; test_reference.py
pins PyTorch's own behaviour there.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from conftest import (
    assert_close,
    backend_params,
    call_backend,
    load_backend,
    random_index_target,
    random_logits,
    random_prob_target,
    random_weight,
)
from reference import torch_reference

pytest.importorskip("torch", reason="PyTorch is not installed (optional test dependency)")

SHAPES = ((1, 1), (1, 5), (6, 1), (0, 4), (9, 5), (16, 33))
BACKEND_DTYPES = backend_params()


def _seeded(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _target(rng, kind: str, n: int, classes: int, ignore_fraction: float = 0.3):
    if kind == "probs":
        return random_prob_target(rng, n, classes)
    return random_index_target(rng, n, classes, ignore_fraction=ignore_fraction)


def _compare(function, dtype, logits, target, what: str, reference=torch_reference, **options):
    outputs, (seen_logits, seen_target, seen_options) = call_backend(
        function, logits, target, dtype, **options
    )
    expected = reference(seen_logits, seen_target, **seen_options)
    assert len(outputs) == len(expected), f"{what}: {len(outputs)} outputs"
    for name, actual, wanted in zip(("loss", "dlogits", "lse"), outputs, expected):
        assert_close(actual, wanted, dtype, f"{name} {what}")
    return outputs


GRID = list(
    itertools.product(
        ("index", "probs"),
        ("none", "mean", "sum"),
        ("none", "positive", "zeros"),
        (0.0, 0.1, 1.0),
    )
)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind,reduction,weight_mode,smoothing", GRID)
def test_options_grid(backend, dtype, kind, reduction, weight_mode, smoothing):
    function = load_backend(backend, dtype)
    rng = _seeded(kind, reduction, weight_mode, smoothing)
    for n, classes in SHAPES:
        weight = {
            "none": None,
            "positive": random_weight(rng, classes),
            "zeros": random_weight(rng, classes, zero_fraction=0.4),
        }[weight_mode]
        grad_output = {"none": rng.normal(size=n), "mean": None, "sum": 1.5}[reduction]
        _compare(
            function,
            dtype,
            random_logits(rng, n, classes),
            _target(rng, kind, n, classes),
            f"{backend} {kind} {reduction} weight={weight_mode} eps={smoothing} N={n} C={classes}",
            weight=weight,
            reduction=reduction,
            label_smoothing=smoothing,
            grad_output=grad_output,
        )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize(
    "kind,reduction,weighted,extra",
    list(
        itertools.product(
            ("index", "probs"), ("none", "mean", "sum"), (False, True), ("z", "cap", "both")
        )
    ),
)
def test_z_loss_and_softcap_against_plain_torch(backend, dtype, kind, reduction, weighted, extra):
    function = load_backend(backend, dtype)
    rng = _seeded(kind, reduction, weighted, extra)
    for n, classes in SHAPES:
        _compare(
            function,
            dtype,
            random_logits(rng, n, classes, scale=6.0),
            _target(rng, kind, n, classes),
            f"{backend} {kind} {reduction} weighted={weighted} {extra} N={n} C={classes}",
            weight=random_weight(rng, classes) if weighted else None,
            reduction=reduction,
            label_smoothing=0.1,
            lse_square_scale=1e-2 if extra in ("z", "both") else 0.0,
            softcap=4.0 if extra in ("cap", "both") else None,
            grad_output=rng.normal(size=n) if reduction == "none" else 0.5,
            return_lse=True,
        )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.2, 0.0), (0.2, 0.05)])
def test_grad_output_with_reduction_none_and_ignore_index(backend, dtype, smoothing, z_loss):
    # Ignored rows must get zero gradient whatever grad_output says for them.
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(11)
    logits = random_logits(rng, 10, 6)
    targets = {
        -100: np.array([-100, 2, 0, -100, 2, 5, 1, -100, 2, 3]),
        2: np.array([1, 2, 0, 4, 2, 5, 1, 3, 2, 3]),
    }
    for ignore_index, target in targets.items():
        grad_output = rng.normal(size=10) * 3
        outputs = _compare(
            function,
            dtype,
            logits,
            target,
            f"{backend} grad_output none ignore_index={ignore_index}",
            weight=random_weight(rng, 6),
            ignore_index=ignore_index,
            reduction="none",
            label_smoothing=smoothing,
            lse_square_scale=z_loss,
            grad_output=grad_output,
        )
        ignored = target == ignore_index
        assert np.array_equal(outputs[0][ignored], np.zeros(ignored.sum()))
        assert not outputs[1][ignored].any()


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.3}, {"lse_square_scale": 0.1}])
def test_every_row_ignored(backend, dtype, reduction, options):
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 4, 3)
    target = np.full(4, -100, dtype=np.int64)
    outputs = _compare(
        function, dtype, logits, target, f"{backend} all ignored {reduction}",
        reduction=reduction, **options,
    )
    if reduction == "mean":
        assert np.isnan(outputs[0])
    else:
        assert not outputs[0].any()
    assert outputs[1].shape == (4, 3) and not outputs[1].any()


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_zero_weights(backend, dtype, kind, reduction):
    # Zero total weight with "mean": 0/0 loss and NaN gradient rows, as PyTorch gives.
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(8)
    logits = random_logits(rng, 5, 4)
    weight = np.array([0.0, 1.0, 0.0, 2.0])
    target = np.array([0, 2, -100, 0, 2]) if kind == "index" else random_prob_target(rng, 5, 4)
    for smoothing in (0.0, 0.2):
        _compare(
            function, dtype, logits, target, f"{backend} {kind} zero weights eps={smoothing}",
            weight=weight, reduction=reduction, label_smoothing=smoothing,
        )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_logits_of_magnitude_1e4(backend, dtype, kind, reduction):
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(9)
    logits = random_logits(rng, 8, 7, scale=1e4)
    logits[0, :3] = logits[0, 3]  # ties at the row maximum
    logits[1] = 1e4  # a constant row
    _compare(
        function, dtype, logits, _target(rng, kind, 8, 7, ignore_fraction=0.2),
        f"{backend} {kind} 1e4 {reduction}",
        weight=random_weight(rng, 7), reduction=reduction, label_smoothing=0.05,
    )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_huge_logits_are_exact(backend, dtype, softcap):
    function = load_backend(backend, dtype)
    big = 1e300 if dtype == "float64" else 1e30
    logits = np.array([[big, 0.0, -big], [big, 0.0, -big], [big, big, 0.0], [-big, -big, -big]])
    target = np.array([0, 1, 0, 2])
    for reduction in ("none", "mean", "sum"):
        outputs = _compare(
            function, dtype, logits, target, f"{backend} huge {reduction} softcap={softcap}",
            reduction=reduction, softcap=softcap, return_lse=True,
        )
        assert np.isfinite(outputs[0]).all() and np.isfinite(outputs[1]).all()


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("classes", [4, 700])
def test_non_finite_rows(backend, dtype, kind, classes):
    """NaN and +inf rows NaN; -inf logits as PyTorch has them: a class of probability 0 (an
    infinite loss at the target or under label smoothing), NaN for a row of -inf alone.  At
    700 classes the C kernel's rows are swept in chunks, the first of one row all -inf."""
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(13)
    logits = random_logits(rng, 6, classes)
    logits[1, 2] = np.nan
    logits[3, 0] = np.inf
    target = _target(rng, kind, 6, classes, ignore_fraction=0.0)
    for reduction in ("none", "mean", "sum"):
        _compare(function, dtype, logits, target, f"{backend} NaN/+inf {kind} {reduction}",
                 reduction=reduction)
    logits[1, 2] = -np.inf
    logits[3, :] = -np.inf
    logits[4, : classes - 3] = -np.inf
    logits[5, classes // 2] = -np.inf
    if kind == "index":
        target[4], target[5] = classes - 1, classes // 2  # the second at its -inf logit
    for options in ({}, {"label_smoothing": 0.1}):
        for reduction in ("none", "mean", "sum"):
            what = f"{backend} -inf {kind} {reduction} {options}"
            _compare(function, dtype, logits, target, what, reduction=reduction, **options)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_probability_targets_reject_ignore_index(backend, dtype):
    """As in PyTorch: ignore_index has no meaning for probability targets and is refused."""
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(17)
    logits, target = random_logits(rng, 6, 4), random_prob_target(rng, 6, 4)
    with pytest.raises(ValueError, match="ignore_index"):
        call_backend(function, logits, target, dtype, ignore_index=1)


@pytest.mark.parametrize("backend,dtype", [p for p in BACKEND_DTYPES if p.values[0] != "numpy"])
def test_inplace_writes_over_the_logits(backend, dtype):
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(19)
    logits = random_logits(rng, 6, 5).astype(dtype)
    target = random_index_target(rng, 6, 5, ignore_fraction=0.3)
    expected = torch_reference(logits.astype(np.float64), target, label_smoothing=0.1)
    buffer = logits.copy()
    _, dlogits = function(buffer, target, label_smoothing=0.1, inplace=True)
    if hasattr(dlogits, "get"):  # CuPy: the result lives on the device
        dlogits = dlogits.get()
    else:
        assert np.shares_memory(dlogits, buffer)
        assert_close(buffer, expected[1], dtype, "inplace buffer")
    assert_close(dlogits, expected[1], dtype, "inplace dlogits")


@pytest.mark.parametrize(
    "backend,dtype", [p for p in backend_params((), low_precision=True)]
)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_low_precision_storage(backend, dtype, kind, reduction):
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(23)
    for n, classes in ((1, 1), (0, 4), (12, 10), (4, 257)):
        _compare(
            function, dtype, random_logits(rng, n, classes, scale=4.0),
            _target(rng, kind, n, classes), f"{backend} {dtype} {kind} {reduction} N={n}",
            weight=random_weight(rng, classes), reduction=reduction, label_smoothing=0.1,
            lse_square_scale=1e-3, softcap=20.0,
        )


# Shapes past one block of every backend's row loop (the NumPy module's 262144-element blocks:
# 263 x 1000 spans two, 66000 x 5 two of 52428 rows; the C kernel's parallel segments).
MULTI_BLOCK_SHAPES = ((263, 1000), (66000, 5))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize(
    "kind,reduction,weighted,options",
    list(itertools.product(("index", "probs"), ("none", "mean", "sum"), (False, True),
                           ("plain", "every"))),
)
def test_multi_block_shapes_every_option(backend, dtype, kind, reduction, weighted, options):
    function = load_backend(backend, dtype)
    rng = _seeded("multi-block", kind, reduction, weighted, options)
    every = options == "every"
    for n, classes in MULTI_BLOCK_SHAPES:
        _compare(
            function, dtype, random_logits(rng, n, classes), _target(rng, kind, n, classes),
            f"{backend} {kind} {reduction} weighted={weighted} {options} N={n} C={classes}",
            weight=random_weight(rng, classes) if weighted else None,
            reduction=reduction,
            label_smoothing=0.1 if every else 0.0,
            lse_square_scale=1e-3 if every else 0.0,
            softcap=20.0 if every else None,
            grad_output=rng.normal(size=n) if reduction == "none" else 1.7,
            return_lse=every,
        )


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
def test_mean_z_loss_does_not_scale_with_the_weights(backend, dtype):
    # The z-term of a mean is lambda times the mean of lse^2 over the counted rows.
    function = load_backend(backend, dtype)
    rng = np.random.default_rng(5)
    logits = random_logits(rng, 40, 7).astype(dtype)
    target = random_index_target(rng, 40, 7, ignore_fraction=0.3)
    weight = random_weight(rng, 7).astype(dtype)
    losses = {}
    for scale in (1, 2):
        for lam in (0.0, 0.5):
            loss, _ = call_backend(function, logits, target, dtype, weight=weight * scale,
                                   lse_square_scale=lam)[0][:2]
            losses[scale, lam] = float(loss)
    kept = target != -100
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    expected = 0.5 * np.mean(lse[kept] ** 2)
    for scale in (1, 2):
        assert losses[scale, 0.5] - losses[scale, 0.0] == pytest.approx(expected, rel=1e-4)
