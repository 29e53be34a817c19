"""gradsmith.torch.focal_loss and distill_kl against float64 autograd of their definitions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F
from gradsmith.torch import (
    DistillKLLoss,
    FocalLoss,
    cross_entropy,
    distill_kl,
    focal_loss,
    row_loss,
)
from torch_references import focal_reference, kl_reference  # tests/ is on sys.path


def _compare(ours, ref, z_ours, z_ref, reduction, dtype):
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
    g = torch.linspace(-1.5, 2.0, ref.numel(), dtype=torch.float64).reshape(ref.shape)
    if reduction != "none":
        g = torch.tensor(0.7, dtype=torch.float64)
    ours.backward(g.to(ours.dtype))
    ref.backward(g)
    torch.testing.assert_close(z_ours.grad.double(), z_ref.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_focal_matches_definition(dtype, reduction, gamma, with_alpha):
    gen = torch.Generator().manual_seed(1)
    z = (3 * torch.randn(7, 5, generator=gen, dtype=torch.float64))
    t = torch.randint(0, 5, (7,), generator=gen)
    t[2] = -1
    alpha = torch.rand(5, generator=gen, dtype=torch.float64) if with_alpha else None
    z_ours = z.to(dtype).requires_grad_()
    z_ref = z.to(dtype).double().requires_grad_()
    ours = focal_loss(z_ours, t, gamma=gamma, alpha=None if alpha is None else alpha.to(dtype),
                      ignore_index=-1, reduction=reduction)
    ref = focal_reference(z_ref, t, gamma, alpha, -1, reduction)
    _compare(ours, ref, z_ours, z_ref, reduction, dtype)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_distill_kl_matches_definition(dtype, reduction, temperature):
    gen = torch.Generator().manual_seed(2)
    z = 2 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    u = 2 * torch.randn(6, 9, generator=gen, dtype=torch.float64)
    z_ours = z.to(dtype).requires_grad_()
    z_ref = z.to(dtype).double().requires_grad_()
    teacher = u.to(dtype).clone().requires_grad_()
    ours = distill_kl(z_ours, teacher, temperature=temperature, reduction=reduction)
    ref = kl_reference(z_ref, u.to(dtype).double(), temperature, reduction)
    _compare(ours, ref, z_ours, z_ref, reduction, dtype)
    assert teacher.grad is None


def test_focal_gamma_zero_is_cross_entropy():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(11, 3, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 3, (11,), generator=gen)
    torch.testing.assert_close(focal_loss(z, t, gamma=0.0), cross_entropy(z, t), rtol=1e-12,
                               atol=1e-12)


def test_one_dimensional_input():
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    ref = focal_reference(z[None], torch.tensor([2]), 2.0, None, -100, "none")[0]
    torch.testing.assert_close(focal_loss(z, torch.tensor(2), reduction="none"), ref)


def test_large_logits_stay_finite():
    z = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, 3.0]], dtype=torch.float32,
                     requires_grad=True)
    loss = focal_loss(z, torch.tensor([0, 1]), reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    kl = distill_kl(z, torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 1.0]]), temperature=1.0)
    assert torch.isfinite(kl)


def test_opcheck_and_gradcheck():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 5, -100, 2])
    u = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    op = torch.ops.gradsmith.row_loss.default
    torch.library.opcheck(op, ("focal", z, t, None, -100, "none", [2.0], True))
    torch.library.opcheck(op, ("focal", z, t, None, -100, "mean", [2.0], False))
    torch.library.opcheck(op, ("distill_kl", z, u, None, -100, "batchmean", [2.0], True))
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, t, gamma=0.5, reduction="none"),
                                    (z,))
    assert torch.autograd.gradcheck(lambda x: distill_kl(x, u, temperature=4.0), (z,))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(4, 3).double()
    x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 3, (8,), generator=gen)
    teacher = torch.randn(8, 3, generator=gen, dtype=torch.float64)

    def forward(x):
        z = lin(x)
        return focal_loss(z, t) + distill_kl(z, teacher, temperature=2.0)

    compiled = torch.compile(forward, backend=backend, fullgraph=True)
    loss = compiled(x)
    loss.backward()  # the compiled graph's backward
    grads = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad()
    eager = forward(x)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, [p.grad for p in lin.parameters()]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types_are_refused_on_cpu_as_by_cross_entropy(dtype):
    z = torch.randn(3, 4).to(dtype)
    t = torch.tensor([0, 1, 2])
    for call in (lambda: cross_entropy(z, t), lambda: focal_loss(z, t),
                 lambda: distill_kl(z, z)):
        with pytest.raises(TypeError, match="float32"):
            call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_and_gradient_come_back_in_the_input_dtype(dtype):
    z = torch.randn(3, 4, dtype=dtype, requires_grad=True)
    for loss in (focal_loss(z, torch.tensor([0, 1, 2])), distill_kl(z, torch.randn(3, 4, dtype=dtype))):
        z.grad = None
        loss.backward()
        assert loss.dtype == dtype and z.grad.dtype == dtype


def test_the_kernel_reads_the_tensors_memory_without_a_copy(monkeypatch):
    from gradsmith.codegen.torch_op import row_loss_kernel

    seen = []
    original = row_loss_kernel._entry

    def spy(name, suffix):
        function = original(name, suffix)
        return lambda *args: (seen.append(args[:4]), function(*args))[1]

    monkeypatch.setattr(row_loss_kernel, "_entry", spy)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 3, 1, 2, 0])
    alpha = torch.rand(4, dtype=torch.float64)
    u = torch.randn(5, 4, dtype=torch.float64)
    focal_loss(z, t, alpha=alpha).backward()
    distill_kl(z, u)
    assert seen == [(z.data_ptr(), None, t.data_ptr(), alpha.data_ptr()),
                    (z.data_ptr(), u.data_ptr(), None, None)]


def test_row_loss_by_name_takes_the_definitions_options_and_default_reduction():
    torch.manual_seed(3)
    z = torch.randn(6, 5, dtype=torch.float64) * 3
    t = torch.tensor([0, 4, -100, 2, 1, 3])
    alpha = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(row_loss("focal", z, t, gamma=1.5, alpha=alpha),
                               focal_reference(z, t, 1.5, alpha, -100, "mean"))
    u = torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(row_loss("distill_kl", z, u, temperature=3.0),
                               kl_reference(z, u, 3.0, "batchmean"))
    torch.testing.assert_close(row_loss("focal", z, t, reduction="none"),
                               focal_reference(z, t, 2.0, None, -100, "none"))


@pytest.mark.parametrize("call, match, error", [
    (lambda z: row_loss("poly1", z, z), "loss must be one of", ValueError),
    (lambda z: row_loss("cross_entropy", z, z), "gradsmith.torch.cross_entropy", ValueError),
    (lambda z: row_loss("focal", z, torch.tensor([0, 1]), tau=1.0), "tau", TypeError),
    (lambda z: row_loss("distill_kl", z, z, alpha=torch.ones(3)), "alpha", ValueError),
])
def test_row_loss_by_name_refuses_what_does_not_apply(call, match, error):
    with pytest.raises(error, match=match):
        call(torch.randn(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_takes_pytorch_spatial_shapes(reduction):
    """(N, C, d1, d2) with classes on dim 1, as F.cross_entropy; the reference moves them last."""
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 5, (2, 3, 4), generator=gen)
    t[0, 1, 2] = -100
    alpha = torch.rand(5, generator=gen, dtype=torch.float64)
    z_ours = z.clone().requires_grad_()
    z_ref = z.clone().requires_grad_()
    ours = focal_loss(z_ours, t, gamma=1.5, alpha=alpha, reduction=reduction)
    ref = focal_reference(z_ref.movedim(1, -1).reshape(-1, 5), t.reshape(-1), 1.5, alpha, -100,
                          reduction)
    if reduction == "none":
        ref = ref.reshape(2, 3, 4)
    _compare(ours, ref, z_ours, z_ref, reduction, torch.float64)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
@pytest.mark.parametrize("shape", [(2, 3, 6), (6,), (1, 2, 2, 5)])
def test_distill_kl_takes_any_leading_shape_as_kl_div(shape, reduction):
    """F.kl_div of log_softmax(dim=-1): "batchmean" divides by size(0), not by the rows."""
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    z_ours = z.clone().requires_grad_()
    z_ref = z.clone().requires_grad_()
    ours = distill_kl(z_ours, u, temperature=2.0, reduction=reduction)
    log_p, log_q = F.log_softmax(z_ref / 2, -1), F.log_softmax(u / 2, -1)
    if reduction == "none":
        ref = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1) * 4
    else:
        ref = F.kl_div(log_p, log_q, log_target=True, reduction=reduction) * 4
    _compare(ours, ref, z_ours, z_ref, reduction, torch.float64)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3)])
def test_an_empty_batch_gives_what_pytorch_gives(shape):
    z = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    t = torch.zeros((shape[0], *shape[2:]), dtype=torch.int64)
    for reduction in ("mean", "sum", "none"):
        ours = focal_loss(z, t, reduction=reduction)
        ref = F.cross_entropy(z, t, reduction=reduction)  # gamma = 0 agrees on no rows
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, equal_nan=True)
        ours.sum().backward()
        assert z.grad.shape == z.shape and not z.grad.any()
    student = torch.zeros((0, 2, 4), dtype=torch.float64, requires_grad=True)
    for reduction in ("batchmean", "sum", "mean", "none"):
        ours = distill_kl(student, torch.zeros(0, 2, 4, dtype=torch.float64), reduction=reduction)
        ref = F.kl_div(student, student, log_target=True, reduction=reduction)
        if reduction == "none":
            ref = ref.sum(-1)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref.detach(), equal_nan=True)


@pytest.mark.parametrize("call, match, error", [
    (lambda z, t: focal_loss(z, t, gamma=-1.0), "gamma", ValueError),
    (lambda z, t: focal_loss(z, t, gamma="2"), "gamma", TypeError),
    (lambda z, t: focal_loss(z, t, reduction="batchmean"), "reduction", ValueError),
    (lambda z, t: distill_kl(z, z, temperature=0.0), "temperature", ValueError),
    (lambda z, t: distill_kl(z, z[:, :2]), "teacher_logits", ValueError),
    (lambda z, t: focal_loss(z, torch.tensor([0, 9])), r"target\[1\] = 9 is outside \[0, 3\)",
     ValueError),
    (lambda z, t: focal_loss(z, t.double()), "target", ValueError),
    (lambda z, t: focal_loss(z, t, ignore_index=1.5), "ignore_index", TypeError),
    (lambda z, t: focal_loss(z, z), "class indices", ValueError),
    (lambda z, t: focal_loss(z, t, alpha=torch.ones(3)), "alpha", TypeError),
    (lambda z, t: focal_loss(z, t, alpha=torch.ones(3, dtype=torch.float64,
                                                    requires_grad=True)), "alpha", ValueError),
    (lambda z, t: distill_kl(z, z.float()), "teacher_logits", TypeError),
    (lambda z, t: distill_kl(z[0, 0], z[0, 0]), "student_logits", ValueError),
    (lambda z, t: distill_kl(z, z, reduction="avg"), "reduction", ValueError),
    (lambda z, t: focal_loss(z, t, alpha=torch.ones(2, dtype=torch.float64)), "alpha",
     ValueError),
])
def test_bad_input_names_the_argument(call, match, error):
    z = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(error, match=match):
        call(z, torch.tensor([0, 1]))


def test_modules_equal_the_functions():
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    u = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 1, -100, 2])
    alpha = torch.rand(4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(FocalLoss(0.5, alpha, reduction="sum")(z, t),
                               focal_loss(z, t, 0.5, alpha, reduction="sum"))
    torch.testing.assert_close(DistillKLLoss(2.0)(z, u), distill_kl(z, u, 2.0))


def test_meta_tensors_get_shapes_and_dtypes_from_the_op():
    z = torch.randn(2, 5, 3, device="meta", dtype=torch.float64)
    loss = focal_loss(z, torch.zeros(2, 3, dtype=torch.long, device="meta"), reduction="none")
    assert loss.device.type == "meta" and loss.shape == (2, 3) and loss.dtype == torch.float64
    kl = distill_kl(z, torch.randn(2, 5, 3, device="meta", dtype=torch.float64), reduction="none")
    assert kl.device.type == "meta" and kl.shape == (2, 5)
    with pytest.raises(ValueError, match="target is on cpu"):
        focal_loss(z, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
def test_fake_cuda_tensors_trace_the_op_in_every_cuda_dtype(dtype):
    """No GPU needed: FakeTensorMode makes CUDA tensors the op's fake runs on (without
    autograd, which a CPU-only torch cannot set up for CUDA tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z = torch.empty(4, 7, 3, dtype=dtype, device="cuda")
        t = torch.zeros(4, 3, dtype=torch.long, device="cuda")
        alpha = torch.ones(7, dtype=dtype, device="cuda")
        for reduction, shape in (("none", (4, 3)), ("mean", ()), ("sum", ())):
            loss = focal_loss(z, t, alpha=alpha, reduction=reduction, check_targets=False)
            assert (loss.shape, loss.dtype, loss.device.type) == (shape, dtype, "cuda")
        rows = z.movedim(1, -1).reshape(-1, 7)
        _, dlogits = torch.ops.gradsmith.row_loss("focal", rows, t.reshape(-1), None, -100,
                                                  "mean", [2.0], True)
        assert (dlogits.shape, dlogits.dtype, dlogits.device.type) == ((12, 7), dtype, "cuda")
        u = torch.empty(4, 3, 7, dtype=dtype, device="cuda")
        kl = distill_kl(z.movedim(1, -1), u, temperature=2.0)
        assert (kl.shape, kl.dtype, kl.device.type) == ((), dtype, "cuda")
        with pytest.raises(TypeError, match="alpha must be"):
            focal_loss(z, t, alpha=alpha.float() if dtype != torch.float32 else alpha.double())
        with pytest.raises(ValueError, match="teacher_logits is on cpu"):
            distill_kl(z, torch.empty(4, 7, 3, dtype=dtype))


def test_check_targets_must_be_a_bool():
    with pytest.raises(TypeError, match="check_targets must be a bool"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), check_targets=1)


def test_check_targets_off_still_refuses_a_bad_target_on_cpu():
    """As cross-entropy's CPU kernels: the C kernel checks every target before it writes."""
    with pytest.raises(ValueError, match=r"target\[1\] = 9"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 9]), check_targets=False)


def test_second_derivative_raises_instead_of_being_wrong():
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(focal_loss(z, torch.tensor([0, 1, 2])), z, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        grad.sum().backward()


def test_compiled_spatial_shapes_trace_in_one_graph():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(10)
    z = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (2, 3), generator=gen)
    u = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)

    def forward(z):
        return focal_loss(z, t, reduction="sum") + distill_kl(z.movedim(1, -1), u)

    compiled = torch.compile(forward, backend="aot_eager", fullgraph=True)
    loss = compiled(z)
    loss.backward()
    grad = z.grad.clone()
    z.grad = None
    eager = forward(z)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grad, z.grad)
