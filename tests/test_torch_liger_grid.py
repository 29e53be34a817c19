"""A grid shaped like Liger-Kernel's cross-entropy tests, through gradsmith.torch on CPU.

Reference: PyTorch in float64 on the float32 inputs (``reference.torch_reference``: its
F.cross_entropy, with z-loss and softcapping written from their definitions and the mean's
z-term over the counted rows).  Tolerance: float32's, relative to the largest magnitude.
The confident case judges float32 as Cut Cross-Entropy does: gradsmith's error on the true
class is no worse than torch float32's own error against the float64 reference.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional test dependency)")
import gradsmith.torch as gt
from reference import torch_reference

SMALL_SHAPES = ((2 * 2, 8), (9 * 7, 41))
LARGE_SHAPES = ((2 * 128, 32000), (3 * 141, 32000))
IGNORE_INDEXES = (-100, 2, -123, 42)


def _inputs(n, classes, ignore_index, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 4
    target = torch.randint(0, classes, (n,), generator=generator)
    target[torch.rand(n, generator=generator) < 0.25] = ignore_index
    weight = torch.rand(classes, generator=generator) + 0.1
    return logits, target, weight


def _check(n, classes, *, reduction, ignore_index, smoothing, softcap, z_loss, weighted, seed):
    logits, target, weight = _inputs(n, classes, ignore_index, seed)
    weight = weight if weighted else None
    generator = torch.Generator().manual_seed(seed + 1)
    upstream = (torch.rand(n, generator=generator) * 3 - 1) if reduction == "none" else torch.tensor(0.7)
    x = logits.clone().requires_grad_()
    loss = gt.cross_entropy(x, target, weight, ignore_index, reduction, smoothing,
                            lse_square_scale=z_loss, softcap=softcap)
    loss.backward(upstream)
    expected_loss, expected_grad = torch_reference(
        logits.numpy(), target.numpy(), weight=None if weight is None else weight.numpy(),
        ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing,
        lse_square_scale=z_loss, softcap=softcap, grad_output=upstream.numpy())
    what = (f"{n}x{classes} {reduction} ignore={ignore_index} eps={smoothing} cap={softcap} "
            f"z={z_loss} weighted={weighted}")
    for actual, wanted, name in ((loss, expected_loss, "loss"), (x.grad, expected_grad, "grad")):
        actual = actual.detach().double().numpy()
        scale = max(float(np.max(np.abs(wanted), initial=0.0)), 1e-30)
        np.testing.assert_allclose(actual, wanted, rtol=3e-5, atol=3e-6 * scale,
                                   err_msg=f"{name} {what}")


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("ignore_index", IGNORE_INDEXES)
def test_small_grid(shape, reduction, ignore_index):
    grid = itertools.product((0.1, 0.2), (None, 30.0, 40.0), (0.0, 1e-4, 1e-5), (False, True))
    for seed, (smoothing, softcap, z_loss, weighted) in enumerate(grid):
        _check(*shape, reduction=reduction, ignore_index=ignore_index, smoothing=smoothing,
               softcap=softcap, z_loss=z_loss, weighted=weighted, seed=seed)


# Two large cases only (their float64 reference dominates the time); the small grid covers
# every combination.
@pytest.mark.parametrize("shape,reduction,ignore_index,smoothing,softcap,z_loss,weighted", [
    (LARGE_SHAPES[0], "mean", -100, 0.1, 30.0, 1e-4, True),
    (LARGE_SHAPES[1], "none", 42, 0.2, None, 0.0, True),
])
def test_large_shapes(shape, reduction, ignore_index, smoothing, softcap, z_loss, weighted):
    _check(*shape, reduction=reduction, ignore_index=ignore_index, smoothing=smoothing,
           softcap=softcap, z_loss=z_loss, weighted=weighted, seed=7)


# The true-class gradient is coef_prob expm1(log p_t) + coef_rest: relative error of a few ulps
# of p_t - 1 itself, where torch's p_t - 1 is off by about an ulp of 1.
@pytest.mark.parametrize("shape", (SMALL_SHAPES[0], SMALL_SHAPES[1], LARGE_SHAPES[0]),
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_confident_true_class_no_worse_than_torch_float32(shape):
    n, classes = shape
    logits, target, _ = _inputs(n, classes, -100, 11)
    target = target.clamp(min=0)
    rows = torch.arange(n)
    logits[rows, target] = logits.max(1).values + 10
    grads = {}
    for name, function, dtype in (("gradsmith", gt.cross_entropy, torch.float32),
                                  ("torch", torch.nn.functional.cross_entropy, torch.float32),
                                  ("float64", torch.nn.functional.cross_entropy, torch.float64)):
        x = logits.detach().clone().to(dtype).requires_grad_()
        function(x, target).backward()
        grads[name] = x.grad[rows, target].double()
    ours = (grads["gradsmith"] - grads["float64"]).abs().max()
    theirs = (grads["torch"] - grads["float64"]).abs().max()
    print(f"{n}x{classes}: ours {ours:.3g} torch {theirs:.3g}")
    assert ours <= theirs, f"gradsmith's true-class error {ours:.3g} > torch float32's {theirs:.3g}"
