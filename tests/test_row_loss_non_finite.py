"""The row losses' NumPy and C kernels (and the torch op on them) give a counted row holding a
NaN or an infinite logit (or teacher logit) NaN loss and gradient, as cross-entropy's kernels
do, wherever in the row it is; ignored rows stay 0 and the other rows are exact.  The CUDA
kernels' host build runs the same batch in test_cuda_row_losses.py."""

from __future__ import annotations

import pytest
from gradsmith import load
from non_finite_rows import GENERIC, TOLERANCE, batch, check  # tests/ is on sys.path (conftest.py)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name", GENERIC)
def test_non_finite_rows_are_nan_and_the_others_exact(name, backend, dtype):
    b = batch(name)
    second = b.second.astype(dtype) if b.teacher else b.second
    losses, grads = load(backend, dtype, loss=name)(b.logits.astype(dtype), second,
                                                    reduction="none", **b.options)
    check(b, losses, grads, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", GENERIC)
def test_non_finite_rows_in_whole_segments_of_the_c_lanes(name, dtype):
    b = batch(name, copies=6)
    assert len(b.logits) > 64  # two whole segments of 32 rows and a part of one
    second = b.second.astype(dtype) if b.teacher else b.second
    losses, grads = load("c", dtype, loss=name)(b.logits.astype(dtype), second,
                                                reduction="none", **b.options)
    check(b, losses, grads, TOLERANCE[dtype])


@pytest.mark.parametrize("name", GENERIC)
def test_the_torch_op_follows_the_same_policy(name):
    torch = pytest.importorskip("torch")
    import gradsmith.torch as gt

    b = batch(name)
    logits = torch.tensor(b.logits, requires_grad=True)
    if b.teacher:
        loss = gt.distill_kl(logits, torch.tensor(b.second), reduction="none", **b.options)
    else:
        loss = gt.focal_loss(logits, torch.tensor(b.second), reduction="none", **b.options)
    loss.sum().backward()
    check(b, loss.detach().numpy(), logits.grad.numpy(), TOLERANCE["float64"])
