"""gradsmith.torch on CUDA: every dtype against torch, the launcher library's build, and what
can be checked without a GPU (argument handling before any launch)."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional test dependency)")
import gradsmith.torch as gt
import torch.nn.functional as F
from torch_references import focal_reference, kl_reference  # tests/ is on sys.path

HAS_GPU = torch.cuda.is_available()
# Judged as Cut Cross-Entropy does: against float64, no worse than torch's own error in the
# same dtype (times 2, plus a float32 floor, for the kernels' float32 arithmetic).
CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def assert_no_worse_than_torch(results: dict, dtype: torch.dtype) -> None:
    """results: "gradsmith", "torch" (in ``dtype``) and "float64", each (loss, gradient)."""
    floor = {torch.float64: 1e-12}.get(dtype, 1e-6)
    for part, label in enumerate(("loss", "gradient")):
        exact = results["float64"][part]
        ours = (results["gradsmith"][part] - exact).abs().max().item()
        theirs = (results["torch"][part] - exact).abs().max().item()
        scale = exact.abs().max().item() or 1.0
        assert ours <= 2 * theirs + floor * scale, f"{label}: {ours:.3g} vs torch {theirs:.3g}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_library_builds_for_a_recent_gpu():
    from gradsmith.codegen.backends.cuda import runtime

    assert runtime.build_library("sm_90").is_file()


def test_cuda_dtypes_are_refused_on_cpu_before_any_kernel():
    with pytest.raises(TypeError, match="float16"):
        gt.fused_cross_entropy(torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="bfloat16"):
        gt.cross_entropy(torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.long))


def test_meta_tensors_are_refused():
    with pytest.raises(ValueError, match="cpu or cuda"):
        gt.fused_cross_entropy(torch.zeros(2, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("kind", ("index", "probs"))
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
@pytest.mark.parametrize("shape", ((7, 5), (300, 1000), (17, 40000)))
def test_cuda_op_matches_torch(dtype, kind, reduction, shape):
    generator = torch.Generator().manual_seed(0)
    n, classes = shape
    logits64 = torch.randn(n, classes, dtype=torch.float64, generator=generator) * 3
    weight = torch.rand(classes, dtype=torch.float64, generator=generator) + 0.1
    if kind == "index":
        target = torch.randint(0, classes, (n,), generator=generator)
        target[::5] = -100
    else:
        target = torch.softmax(torch.randn(n, classes, dtype=torch.float64, generator=generator), 1)
    upstream = torch.rand(n, dtype=torch.float64, generator=generator) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    results = {}
    for name, function, use in (("gradsmith", gt.cross_entropy, dtype), ("torch", F.cross_entropy, dtype),
                                ("float64", F.cross_entropy, torch.float64)):
        x = logits64.to(use).cuda().requires_grad_()
        t = target.cuda() if kind == "index" else target.to(use).cuda()
        loss = function(x, t, weight.to(use).cuda(), reduction=reduction, label_smoothing=0.1)
        loss.backward(upstream.to(loss.dtype).cuda())
        results[name] = (loss.detach().double().cpu(), x.grad.double().cpu())
    assert_no_worse_than_torch(results, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
@pytest.mark.parametrize("classes", [5, 600, 40000])
def test_cuda_masked_logits_as_in_pytorch(classes):
    """A padded or masked vocabulary (-inf) on the GPU: probability 0, gradient 0, the loss
    finite, as F.cross_entropy; a row of -inf alone NaN.  Warp rows, block rows and a share of
    a row that holds only -inf."""
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(6, classes, generator=generator).mul(2)
    logits[:, classes - 2:] = -torch.inf
    logits[0, 1] = -torch.inf
    logits[5, : classes // 2] = -torch.inf
    logits[4] = -torch.inf
    target = torch.tensor([0, 2, -100, 1, 2, classes - 3])
    mine = logits.cuda().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = gt.cross_entropy(mine, target.cuda(), reduction="none")
    expected = F.cross_entropy(theirs, target, reduction="none")
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(loss.cpu(), expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(mine.grad.cpu(), theirs.grad, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert torch.isnan(loss[4]).item() and torch.isfinite(loss[[0, 1, 3, 5]]).all().item()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
def test_cuda_bad_target_check_and_its_skip():
    logits = torch.randn(4, 3, device="cuda")
    target = torch.tensor([0, 1, 7, 2], device="cuda")
    with pytest.raises(ValueError, match=r"target\[2\] = 7"):
        gt.cross_entropy(logits, target)
    loss = gt.cross_entropy(logits, target, reduction="none", check_targets=False)
    assert torch.isnan(loss[2]).item() and torch.isfinite(loss[[0, 1, 3]]).all().item()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
def test_cuda_runs_on_the_current_stream_and_in_place():
    logits = torch.randn(64, 1000, device="cuda")
    target = torch.randint(0, 1000, (64,), device="cuda")
    expected = F.cross_entropy(logits, target)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        hidden = logits.clone().requires_grad_()
        loss = gt.cross_entropy(hidden * 1, target, inplace_backward=True)
        loss.backward()
    stream.synchronize()
    torch.testing.assert_close(loss, expected)
    reference = logits.clone().requires_grad_()
    F.cross_entropy(reference, target).backward()
    torch.testing.assert_close(hidden.grad, reference.grad)


# ---- the row losses (focal_loss, distill_kl) on CUDA ------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("loss", ("focal", "distill_kl"))
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
@pytest.mark.parametrize("shape", ((7, 5), (300, 1000), (9, 5003)))
def test_cuda_row_losses_match_their_torch_references(dtype, loss, reduction, shape):
    """Judged as cross-entropy's op: against float64, no worse than the same torch reference
    in the same dtype (times 2, plus a float32 floor for the kernels' float32 arithmetic)."""
    generator = torch.Generator().manual_seed(1)
    n, classes = shape
    logits64 = torch.randn(n, classes, dtype=torch.float64, generator=generator) * 3
    teacher64 = torch.randn(n, classes, dtype=torch.float64, generator=generator) * 3
    target = torch.randint(0, classes, (n,), generator=generator)
    target[::4] = -100
    alpha64 = torch.rand(classes, dtype=torch.float64, generator=generator) + 0.1
    upstream = (torch.rand(n, dtype=torch.float64, generator=generator) if reduction == "none"
                else torch.tensor(0.7, dtype=torch.float64))

    def ours(x, use):
        if loss == "focal":
            return gt.focal_loss(x, target.cuda(), 0.5, alpha64.to(use).cuda(), reduction=reduction)
        return gt.distill_kl(x, teacher64.to(use).cuda(), 2.0, reduction=reduction)

    def theirs(x, use):
        if loss == "focal":
            return focal_reference(x, target.cuda(), 0.5, alpha64.to(use).cuda(), -100, reduction)
        return kl_reference(x, teacher64.to(use).cuda(), 2.0, reduction)

    results = {}
    for name, function, use in (("gradsmith", ours, dtype), ("torch", theirs, dtype),
                                ("float64", theirs, torch.float64)):
        x = logits64.to(use).cuda().requires_grad_()
        value = function(x, use)
        assert value.dtype == use and value.device.type == "cuda"
        value.backward(upstream.to(value.dtype).cuda())
        assert x.grad.dtype == use
        results[name] = (value.detach().double().cpu(), x.grad.double().cpu())
    assert_no_worse_than_torch(results, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
def test_cuda_focal_bad_target_check_and_its_skip(monkeypatch):
    logits = torch.randn(4, 3, device="cuda")
    target = torch.tensor([0, 1, 7, 2], device="cuda")
    with pytest.raises(ValueError, match=r"target\[2\] = 7"):
        gt.focal_loss(logits, target)
    loss = gt.focal_loss(logits, target, reduction="none", check_targets=False)
    assert torch.isnan(loss[2]).item() and torch.isfinite(loss[[0, 1, 3]]).all().item()
    monkeypatch.setenv("GRADSMITH_CHECK_TARGETS", "0")
    assert torch.isnan(gt.focal_loss(logits, target, reduction="sum")).item()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
def test_cuda_row_losses_run_on_the_current_stream_and_match_the_cpu_op():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(64, 1500, dtype=torch.float64, generator=generator)
    teacher = torch.randn(64, 1500, dtype=torch.float64, generator=generator)
    target = torch.randint(0, 1500, (64,), generator=generator)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = logits.cuda().requires_grad_()
        focal = gt.focal_loss(x, target.cuda(), 2.0)
        kl = gt.distill_kl(x, teacher.cuda(), 3.0)
        (focal + kl).backward()
    stream.synchronize()
    y = logits.clone().requires_grad_()
    (gt.focal_loss(y, target, 2.0) + gt.distill_kl(y, teacher, 3.0)).backward()
    torch.testing.assert_close(focal.cpu() + kl.cpu(), (gt.focal_loss(logits, target, 2.0)
                                                       + gt.distill_kl(logits, teacher, 3.0)))
    torch.testing.assert_close(x.grad.cpu(), y.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")
def test_cuda_row_losses_of_an_empty_batch():
    empty = torch.zeros(0, 5, device="cuda")
    assert torch.isnan(gt.focal_loss(empty, torch.zeros(0, dtype=torch.long, device="cuda")))
    assert gt.distill_kl(empty, empty, reduction="sum").item() == 0
