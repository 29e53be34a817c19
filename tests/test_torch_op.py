"""gradsmith.torch as a PyTorch op: opcheck, gradcheck, torch.compile, double backward, the
in-place mode's safety, shapes, the raw kernel call's contract, and bad arguments."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional test dependency)")
import gradsmith.torch as gt
import torch.nn.functional as F
from gradsmith.codegen.torch_op import kernel as kernel_module
from gradsmith.codegen.torch_op.op import (
    DOUBLE_BACKWARD,
    cross_entropy_backward_op,
    cross_entropy_op,
)

TARGETS = torch.tensor([1, 2, -100, 3, 4, 0])


def _logits(n=6, c=5, dtype=torch.float64, seed=0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, dtype=dtype, generator=generator).mul(2).requires_grad_(requires_grad)


def _probs(n=6, c=5, dtype=torch.float64):
    return torch.softmax(_logits(n, c, dtype, seed=1, requires_grad=False), 1)


OPCHECK_GRID = list(itertools.product(
    ("index", "probs"), ("none", "mean", "sum"), (False, True), (0.0, 0.2), (0.0, 1e-3),
    (None, 4.0)))


@pytest.mark.parametrize("kind,reduction,weighted,smoothing,zloss,softcap", OPCHECK_GRID)
def test_opcheck_grid(kind, reduction, weighted, smoothing, zloss, softcap):
    logits = _logits(dtype=torch.float32)
    target = TARGETS if kind == "index" else _probs(dtype=torch.float32)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(2)) if weighted else None
    ignore_index = -100
    if kind == "index" and weighted:
        target, ignore_index = torch.where(target == -100, 2, target), 2
    args = (logits, target, weight, ignore_index, reduction, smoothing, zloss, softcap,
            zloss > 0, True)
    # One test of the full battery per target kind keeps the grid fast; schema and fake
    # tensors everywhere.
    full = (reduction, weighted, smoothing, zloss, softcap) == ("none", True, 0.2, 1e-3, 4.0)
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    if full:
        tests += ("test_aot_dispatch_static", "test_aot_dispatch_dynamic")
    torch.library.opcheck(cross_entropy_op, args, test_utils=tests)


@pytest.mark.parametrize("grad_loss", [torch.tensor(0.5), torch.linspace(-1, 2, 6)], ids=("scalar", "rows"))
def test_opcheck_backward_op(grad_loss):
    # Its autograd formula only raises (no second derivative), so the AOT checks do not apply.
    torch.library.opcheck(cross_entropy_backward_op, (torch.randn(6, 5), grad_loss),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("kind", ("index", "probs"))
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
def test_gradcheck_float64_with_lse(kind, reduction):
    target = TARGETS if kind == "index" else _probs()
    weight = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def function(logits):
        return gt.cross_entropy(logits, target, weight, reduction=reduction, label_smoothing=0.1,
                                lse_square_scale=1e-2, softcap=3.0, return_lse=True)

    assert torch.autograd.gradcheck(function, (_logits(),))


@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
def test_non_uniform_grad_output_matches_torch(reduction):
    logits = _logits()
    expected_logits = logits.detach().clone().requires_grad_()
    loss = gt.cross_entropy(logits, TARGETS, reduction=reduction, label_smoothing=0.1)
    expected = F.cross_entropy(expected_logits, TARGETS, reduction=reduction, label_smoothing=0.1)
    upstream = torch.linspace(-2, 3, loss.numel(), dtype=torch.float64).reshape(loss.shape)
    loss.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("classes", [5, 600])
def test_masked_logits_train_as_in_pytorch(classes):
    """A vocabulary padded or masked with -inf: the padded classes get probability 0 and a zero
    gradient, the loss stays finite, as with F.cross_entropy (float32, the LLM case)."""
    logits = _logits(6, classes, dtype=torch.float32).detach()
    logits[:, classes - 2:] = -torch.inf  # padding
    logits[0, 1] = -torch.inf  # a masked class
    logits[5, : classes // 2] = -torch.inf
    target = torch.tensor([0, 2, -100, 1, 2, classes - 3])
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = gt.cross_entropy(mine, target)
    expected = F.cross_entropy(theirs, target)
    loss.backward()
    expected.backward()
    assert torch.isfinite(loss) and torch.isfinite(mine.grad).all()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)
    assert (mine.grad[:, classes - 2:] == 0).all()


def test_lse_is_differentiable_and_a_z_loss_built_from_it_trains():
    logits = _logits()
    expected_logits = logits.detach().clone().requires_grad_()
    loss, lse = gt.cross_entropy(logits, TARGETS, return_lse=True)
    (loss + 1e-2 * lse.square().mean()).backward()
    reference = F.cross_entropy(expected_logits, TARGETS)
    reference_lse = torch.logsumexp(expected_logits, 1)
    (reference + 1e-2 * reference_lse.square().mean()).backward()
    torch.testing.assert_close(lse, reference_lse)
    torch.testing.assert_close(logits.grad, expected_logits.grad, rtol=1e-12, atol=1e-13)


def test_double_backward_raises_a_clear_error():
    logits = _logits()
    (grad,) = torch.autograd.grad(gt.cross_entropy(logits, TARGETS), logits, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        grad.sum().backward()
    assert "torch.nn.functional.cross_entropy" in DOUBLE_BACKWARD


def test_eager_calls_run_the_autograd_function_and_traced_calls_the_op():
    logits = _logits()
    loss = gt.cross_entropy(logits, TARGETS)
    assert type(loss.grad_fn).__name__ == "GradsmithCrossEntropyBackward"
    focal = gt.focal_loss(logits, TARGETS)
    assert type(focal.grad_fn).__name__ == "GradsmithRowLossBackward"
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(lambda z: gt.cross_entropy(z, TARGETS))(logits.detach())
    assert "gradsmith.cross_entropy" in traced.code
    torch.testing.assert_close(traced(logits.detach()), loss.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("loss_function", [gt.cross_entropy, gt.focal_loss],
                         ids=["cross_entropy", "focal_loss"])
def test_calls_with_nothing_to_differentiate_build_no_autograd_function(loss_function, monkeypatch):
    """Under no_grad, in inference mode, or with no input requiring grad, the eager path runs
    the kernel without an autograd Function (half the forward's cost at classifier shapes), with
    the same values as a differentiable call."""
    logits = _logits()
    expected = loss_function(logits, TARGETS, reduction="none").detach()

    def refuse(*args):
        raise AssertionError("an autograd Function was applied")

    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(refuse))
    with torch.no_grad():
        quiet = loss_function(logits, TARGETS, reduction="none")
    with torch.inference_mode():
        inferred = loss_function(logits, TARGETS, reduction="none")
    detached = loss_function(logits.detach(), TARGETS, reduction="none")
    for loss in (quiet, inferred, detached):
        assert loss.grad_fn is None and not loss.requires_grad
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="autograd Function was applied"):
        loss_function(logits, TARGETS)


def _linear(logits, target):
    return gt.linear_cross_entropy(logits, torch.eye(5, dtype=logits.dtype), target)


@pytest.mark.parametrize("loss_function", [gt.cross_entropy, gt.focal_loss, _linear],
                         ids=["cross_entropy", "focal_loss", "linear_cross_entropy"])
def test_a_retained_graph_backs_up_three_times_as_torch_does(loss_function):
    # At grad_output 1 a freed graph's saved gradient is handed back as it is; a kept one's
    # must not be, or autograd takes it over as .grad and later backwards add to it.
    logits = _logits()
    loss = loss_function(logits, TARGETS)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(logits.grad, 3 * first, rtol=0, atol=0)
    expected_logits = logits.detach().clone().requires_grad_()
    if loss_function is not gt.focal_loss:
        F.cross_entropy(expected_logits, TARGETS).backward()
        torch.testing.assert_close(first, expected_logits.grad, rtol=1e-12, atol=1e-13)


def test_a_gradient_from_a_kept_graph_is_the_callers_own():
    logits = _logits()
    loss = gt.cross_entropy(logits, TARGETS)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    expected = grad.clone()
    grad.mul_(3)
    (again,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_the_ops_dlogits_output_never_becomes_grad():
    logits = _logits()
    loss, _, dlogits = cross_entropy_op(logits, TARGETS, None, -100, "mean", 0.0, 0.0, None,
                                        False, True)
    kept = dlogits.detach().clone()
    loss.backward()
    logits.grad.zero_()
    torch.testing.assert_close(dlogits.detach(), kept, rtol=0, atol=0)


def test_compiled_training_step_has_no_graph_break_and_gives_eager_results():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 5)
    hidden = torch.randn(6, 8)

    def step(hidden, target):
        loss, lse = gt.cross_entropy(model(hidden), target, label_smoothing=0.1,
                                     lse_square_scale=1e-4, softcap=30.0, return_lse=True)
        return loss + lse.square().mean()

    eager = step(hidden, TARGETS)
    eager.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(step, fullgraph=True)(hidden, TARGETS)  # fullgraph: no break
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    for got, want in zip([p.grad for p in model.parameters()], eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_scalars_reach_the_kernel_as_python_floats_under_compile(monkeypatch):
    seen = []
    original = kernel_module.fused_cross_entropy

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("label_smoothing", "lse_square_scale", "softcap")})
        return original(*args, **kwargs)

    monkeypatch.setattr("gradsmith.codegen.torch_op.op.fused_cross_entropy", spy)
    logits = _logits(dtype=torch.float32, requires_grad=False) * 20

    def loss(logits):
        return gt.cross_entropy(logits, TARGETS, label_smoothing=0.1, lse_square_scale=1e-4,
                                softcap=30.0)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(logits)
    assert seen and all(type(v) is float for call in seen for v in call.values())
    # The kernel reads them into gs_ce_params (double) and rounds them to its float: the
    # compiled result is the eager result bit for bit.
    assert torch.equal(compiled, loss(logits))
    assert compiled.dtype == torch.float32


def test_inplace_backward_matches_and_writes_over_the_logits():
    hidden = _logits(dtype=torch.float32)
    expected_hidden = hidden.detach().clone().requires_grad_()
    logits = hidden * 2
    pointer = logits.data_ptr()
    loss = gt.cross_entropy(logits, TARGETS, label_smoothing=0.1, inplace_backward=True)
    loss.backward(torch.tensor(1.5))
    F.cross_entropy(expected_hidden * 2, TARGETS, label_smoothing=0.1).backward(torch.tensor(1.5))
    torch.testing.assert_close(hidden.grad, expected_hidden.grad)
    assert logits.data_ptr() == pointer


def test_inplace_backward_refuses_upstream_reuse_of_the_logits():
    hidden = _logits(dtype=torch.float32)
    logits = hidden.exp()  # exp's backward needs its output: the logits
    loss = gt.cross_entropy(logits, TARGETS, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_refuses_a_second_backward_and_leaf_logits():
    logits = _logits(dtype=torch.float32) * 1
    loss = gt.cross_entropy(logits, TARGETS, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        gt.cross_entropy(_logits(dtype=torch.float32), TARGETS, inplace_backward=True)
    with pytest.raises(ValueError, match="return_lse"):
        gt.cross_entropy(_logits() * 1, TARGETS, inplace_backward=True, return_lse=True)


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 5, 3), (2, 5, 1, 3)])
@pytest.mark.parametrize("kind", ("index", "probs"))
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_pytorch_shapes(shape, kind, reduction):
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
    expected_logits = logits.detach().clone().requires_grad_()
    positions = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    if kind == "index":
        target = torch.randint(0, 5, positions, generator=generator)
    else:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64, generator=generator), 1 if len(shape) > 1 else 0)
    loss, lse = gt.cross_entropy(logits, target, reduction=reduction, return_lse=True)
    expected = F.cross_entropy(expected_logits, target, reduction=reduction)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(lse, torch.logsumexp(expected_logits.detach(), 1 if len(shape) > 1 else 0))
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(logits.grad, expected_logits.grad)


def test_module_matches_torch_and_holds_weight_as_buffer():
    weight = torch.rand(5, dtype=torch.float64)
    module = gt.CrossEntropyLoss(weight, ignore_index=3, label_smoothing=0.1)
    assert "weight" in dict(module.named_buffers())
    logits = _logits()
    torch.testing.assert_close(
        module(logits, TARGETS.clamp(min=0)),
        torch.nn.CrossEntropyLoss(weight, ignore_index=3, label_smoothing=0.1)(logits, TARGETS.clamp(min=0)))


def test_fused_cross_entropy_contract():
    logits = _logits(dtype=torch.float32, requires_grad=False)
    grad_output = torch.linspace(0.5, 2, 6)
    loss, dlogits, lse = gt.fused_cross_entropy(logits, TARGETS, reduction="none",
                                                grad_output=grad_output, want_lse=True)
    reference = logits.clone().requires_grad_()
    expected = F.cross_entropy(reference, TARGETS, reduction="none")
    expected.backward(grad_output)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(dlogits, reference.grad)
    torch.testing.assert_close(lse, torch.logsumexp(logits, 1))
    assert gt.fused_cross_entropy(logits, TARGETS)[2] is None
    # In place, and through a row stride without a copy.
    wide = torch.randn(6, 9)
    rows = wide[:, :5]
    expected_loss, expected_grad, _ = gt.fused_cross_entropy(rows.contiguous(), TARGETS)
    pointer = rows.data_ptr()
    loss, out, _ = gt.fused_cross_entropy(rows, TARGETS, dlogits=rows)
    assert out.data_ptr() == pointer and out.stride() == (9, 1)
    assert torch.equal(out, expected_grad) and torch.equal(loss, expected_loss)


def test_fused_cross_entropy_row_stride_is_not_copied(monkeypatch):
    wide = torch.randn(6, 9)
    rows = wide[:, :5]
    seen = []
    original = kernel_module._run_cpu
    monkeypatch.setattr(kernel_module, "_run_cpu",
                        lambda kind, suffix, logits, *rest: (seen.append(logits.data_ptr()),
                                                             original(kind, suffix, logits, *rest)))
    loss, dlogits, _ = gt.fused_cross_entropy(rows, TARGETS)
    assert seen == [rows.data_ptr()]
    torch.testing.assert_close(loss, F.cross_entropy(rows.contiguous(), TARGETS))
    # A new gradient is contiguous whatever the logits' row stride, as the op's fake says.
    assert dlogits.is_contiguous() and dlogits.shape == rows.shape


def test_torch_thread_count_is_honoured(monkeypatch):
    calls = []
    setter = kernel_module.omp_set_num_threads()
    if setter is None:
        pytest.skip("the C library was built without OpenMP")
    monkeypatch.setattr(kernel_module, "omp_set_num_threads", lambda: calls.append)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gt.fused_cross_entropy(_logits(dtype=torch.float32, requires_grad=False), TARGETS)
    finally:
        torch.set_num_threads(previous)
    assert calls == [1]


@pytest.mark.parametrize("call,error,match", [
    (lambda: gt.fused_cross_entropy([[1.0]], TARGETS), TypeError, "logits"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5, dtype=torch.float16), TARGETS), TypeError, "logits"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, reduction="avg"), ValueError, "reduction"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, softcap=-1.0), ValueError, "softcap"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, label_smoothing=2.0), ValueError, "label_smoothing"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS * 3), ValueError, r"target\[1\] = 6"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS[:4]), ValueError, "target"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, weight=torch.ones(4)), ValueError, "weight"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, grad_output=torch.ones(6)), ValueError, "grad_output"),
    (lambda: gt.fused_cross_entropy(torch.zeros(6, 5), TARGETS, dlogits=torch.zeros(6, 4)), ValueError, "dlogits"),
    (lambda: gt.cross_entropy(torch.zeros(6, 5), torch.zeros(6, 5, dtype=torch.long)), TypeError, "probabilities"),
    (lambda: gt.cross_entropy(torch.zeros(6, 5), _probs(dtype=torch.float32).requires_grad_()), ValueError, "detach"),
    (lambda: gt.cross_entropy(torch.zeros(6, 5, 2), TARGETS), ValueError, "target"),
    (lambda: gt.cross_entropy(torch.zeros(6, 5), TARGETS, check_targets=1), TypeError, "check_targets"),
])
def test_bad_arguments_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0, 16, 48])
def test_a_large_fresh_gradient_lies_as_far_into_a_cache_line_as_its_logits(dtype, offset):
    """Past 4 MiB the gradient comes from NumPy, which starts large blocks 16 bytes into a line
    where torch starts its own on one."""
    n_rows, n_classes = 1100, 1000
    size = torch.tensor([], dtype=dtype).element_size()
    block = torch.randn(n_rows * n_classes + 64 // size, dtype=dtype)
    start = (offset - block.data_ptr()) % 64 // size
    logits = block[start:start + n_rows * n_classes].view(n_rows, n_classes)
    assert logits.nbytes >= kernel_module._HUGE_PAGE_BYTES and logits.data_ptr() % 64 == offset
    target = torch.randint(0, n_classes, (n_rows,))
    loss, dlogits, _ = kernel_module.fused_cross_entropy(logits, target)
    assert dlogits.data_ptr() % 64 == offset and dlogits.is_contiguous()
    reference = logits.double().requires_grad_()
    expected = F.cross_entropy(reference, target)
    expected.backward()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=tolerance, atol=0)
    torch.testing.assert_close(dlogits.double(), reference.grad, rtol=0, atol=tolerance / n_rows)
